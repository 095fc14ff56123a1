"""ModelSpec: the architecture of a decoder-only transformer, dense or mixture-of-experts.

Field names follow DESIGN.md's job file. Everything a count needs is here; nothing about how
the model is trained or split (that is `TrainingSpec` and `Layout`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

from parasim.simulator.checks import divisors, require_bool, require_choice, require_count, \
    require_number
from parasim.simulator.errors import SpecError

Activation = Literal["gelu", "swiglu"]
Norm = Literal["layernorm", "rmsnorm"]
PositionEmbedding = Literal["rope", "learned"]

ACTIVATIONS = ("gelu", "swiglu")
NORMS = ("layernorm", "rmsnorm")
POSITION_EMBEDDINGS = ("rope", "learned")
MAX_EXPERTS = 2**20  # routed experts per layer: the router's load is sampled per expert


@dataclass(frozen=True, kw_only=True)
class MLASpec:
    """Multi-head latent attention (DeepSeek-V2/V3, arXiv:2405.04434 §2.1).

    Queries and keys/values go through low-rank projections; each head's query/key has a
    non-rotary part and a rotary part, the rotary key is shared by all heads.
    """

    q_lora_rank: int  # rank of the query down-projection; 0 = full-rank query projection
    kv_lora_rank: int  # rank of the joint key/value down-projection
    qk_nope_head_dim: int  # per-head query/key width without rotary embedding
    qk_rope_head_dim: int  # per-head query/key width with rotary embedding (key part shared)
    v_head_dim: int  # per-head value width

    def __post_init__(self) -> None:
        require_count("model.mla.q_lora_rank", self.q_lora_rank, minimum=0)
        for name in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
            require_count(f"model.mla.{name}", getattr(self, name))


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """A decoder-only transformer. MHA, GQA and MQA differ only in `num_kv_heads`."""

    name: str  # catalog name or a label for reports
    num_layers: int  # transformer blocks
    hidden_size: int  # model width h
    num_attention_heads: int  # query heads a
    ffn_hidden_size: int  # dense MLP inner width f
    vocab_size: int  # V, unpadded
    num_kv_heads: int | None = None  # key/value heads; None = num_attention_heads (MHA)
    head_dim: int | None = None  # per-head width; None = hidden_size / num_attention_heads
    activation: Activation = "swiglu"  # gelu: two matrices; swiglu: gated, three matrices
    norm: Norm = "rmsnorm"  # layernorm has a bias vector, rmsnorm does not
    position_embedding: PositionEmbedding = "rope"  # learned adds a max_position x h table
    max_position_embeddings: int = 0  # rows of the learned position table (learned only)
    tied_embeddings: bool = False  # LM head shares the input embedding matrix
    linear_bias: bool = False  # every linear layer has a bias (GPT-2/3, GPT-NeoX)
    qkv_bias: bool = False  # only the query/key/value projections have a bias (Qwen2)
    qk_norm: bool = False  # per-head RMSNorm on queries and keys (Qwen3)
    dropout: bool = False  # dropout layers present (their masks are activations)
    mla: MLASpec | None = None  # multi-head latent attention instead of GQA projections
    num_experts: int = 0  # routed experts per MoE layer; 0 = dense model
    experts_per_token: int = 0  # top-k routed experts per token
    moe_ffn_hidden_size: int = 0  # inner width of one routed expert
    num_shared_experts: int = 0  # experts every token passes through
    shared_expert_ffn_hidden_size: int = 0  # inner width of one shared expert; 0 = moe width
    shared_expert_gate: bool = False  # a sigmoid gate (h -> 1) on the shared experts (Qwen2-MoE)
    first_dense_layers: int = 0  # leading layers with a dense MLP instead of experts
    capacity_factor: float | None = None  # expert capacity / fair share; None = dropless
    router_skew: float = 0.0  # Zipf exponent of expert popularity; 0 = perfectly balanced

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise SpecError("model.name", self.name, "must be a non-empty string", "a label")
        require_count("model.num_layers", self.num_layers)
        require_count("model.hidden_size", self.hidden_size)
        require_count("model.num_attention_heads", self.num_attention_heads)
        require_count("model.ffn_hidden_size", self.ffn_hidden_size)
        require_count("model.vocab_size", self.vocab_size)
        if self.num_kv_heads is not None:
            require_count("model.num_kv_heads", self.num_kv_heads)
            if self.num_attention_heads % self.num_kv_heads:
                raise SpecError(
                    "model.num_kv_heads", self.num_kv_heads,
                    f"must divide num_attention_heads={self.num_attention_heads}",
                    ", ".join(map(str, divisors(self.num_attention_heads))),
                )
        if self.head_dim is not None:
            require_count("model.head_dim", self.head_dim)
        elif self.mla is None and self.hidden_size % self.num_attention_heads:
            raise SpecError(
                "model.hidden_size", self.hidden_size,
                f"is not divisible by num_attention_heads={self.num_attention_heads}",
                "set model.head_dim explicitly",
            )
        require_choice("model.activation", self.activation, ACTIVATIONS)
        require_choice("model.norm", self.norm, NORMS)
        require_choice("model.position_embedding", self.position_embedding, POSITION_EMBEDDINGS)
        if self.position_embedding == "learned":
            require_count("model.max_position_embeddings", self.max_position_embeddings)
        for name in ("tied_embeddings", "linear_bias", "qkv_bias", "qk_norm", "dropout",
                     "shared_expert_gate"):
            require_bool(f"model.{name}", getattr(self, name))
        self._check_moe()

    def _check_moe(self) -> None:
        require_count("model.num_experts", self.num_experts, minimum=0, maximum=MAX_EXPERTS)
        require_count("model.num_shared_experts", self.num_shared_experts, minimum=0)
        require_count("model.first_dense_layers", self.first_dense_layers, minimum=0)
        if not self.is_moe:
            return
        require_count("model.experts_per_token", self.experts_per_token)
        if self.experts_per_token > self.num_experts:
            raise SpecError(
                "model.experts_per_token", self.experts_per_token,
                f"exceeds num_experts={self.num_experts}", f"1..{self.num_experts}",
            )
        require_count("model.moe_ffn_hidden_size", self.moe_ffn_hidden_size)
        require_count("model.shared_expert_ffn_hidden_size", self.shared_expert_ffn_hidden_size, 0)
        if self.first_dense_layers >= self.num_layers:
            raise SpecError(
                "model.first_dense_layers", self.first_dense_layers,
                f"leaves no MoE layer among num_layers={self.num_layers}",
                f"0..{self.num_layers - 1}",
            )
        if self.capacity_factor is not None:
            require_number("model.capacity_factor", self.capacity_factor, 0, 100, above=True,
                           valid="expert capacity over the fair share, > 0 and <= 100 (leave "
                           "it out: dropless)")
        require_number("model.router_skew", self.router_skew, 0, 3,
                       valid="the Zipf exponent of expert popularity, 0 (balanced) to 3")

    # Derived sizes -------------------------------------------------------------------------

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_attention_heads

    @property
    def qk_head_dim(self) -> int:
        """Per-head width of queries and keys."""
        if self.mla is not None:
            return self.mla.qk_nope_head_dim + self.mla.qk_rope_head_dim
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def v_head_dim(self) -> int:
        """Per-head width of values (and of the attention output before its projection)."""
        if self.mla is not None:
            return self.mla.v_head_dim
        return self.qk_head_dim

    @property
    def num_moe_layers(self) -> int:
        return self.num_layers - self.first_dense_layers if self.is_moe else 0

    @property
    def shared_ffn_hidden_size(self) -> int:
        """Inner width of one shared expert."""
        return self.shared_expert_ffn_hidden_size or self.moe_ffn_hidden_size

    def is_moe_layer(self, index: int) -> bool:
        """Whether block `index` (0-based) has experts instead of a dense MLP."""
        return self.is_moe and index >= self.first_dense_layers


MODEL_FIELDS = tuple(f.name for f in fields(ModelSpec))
MLA_FIELDS = tuple(f.name for f in fields(MLASpec))
