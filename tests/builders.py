"""Small spec builders shared by the tests (no catalog needed)."""

from __future__ import annotations

from parasim.simulator.model import ModelSpec


def gpt(layers: int, hidden: int, heads: int, vocab: int = 51200, **kw) -> ModelSpec:
    """A Megatron-LM GPT: MHA, GeLU MLP of 4h, LayerNorm, learned positions, dropout."""
    return ModelSpec(name=f"gpt-{layers}x{hidden}", num_layers=layers, hidden_size=hidden,
                     num_attention_heads=heads, ffn_hidden_size=4 * hidden, vocab_size=vocab,
                     activation="gelu", norm="layernorm", position_embedding="learned",
                     max_position_embeddings=2048, tied_embeddings=True, linear_bias=True,
                     dropout=True, **kw)
