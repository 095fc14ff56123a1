"""Exact parameter counts: whole model, active per token (MoE), and per pipeline rank.

Layer structure follows the reference implementations: Megatron-LM's GPT (`megatron/core/
transformer/`), Hugging Face `modeling_llama.py`, `modeling_mixtral.py`, `modeling_qwen2_moe.py`,
`modeling_deepseek_v3.py`. Counts are of trainable parameters (no rotary tables, no buffers).
"""

from __future__ import annotations

from functools import lru_cache

from dataclasses import dataclass
from typing import NamedTuple

from parasim.simulator.layout import Recompute
from parasim.simulator.model import ModelSpec


def norm_params(model: ModelSpec, width: int | None = None) -> int:
    """One norm: a scale vector, plus a bias vector for LayerNorm."""
    width = width or model.hidden_size
    return width * (2 if model.norm == "layernorm" else 1)


def attention_params(model: ModelSpec) -> int:
    """Query/key/value/output projections (+ biases, qk-norms, MLA's low-rank parts)."""
    h, a = model.hidden_size, model.num_attention_heads
    if model.mla is not None:
        m = model.mla
        qk = m.qk_nope_head_dim + m.qk_rope_head_dim
        if m.q_lora_rank:  # W_DQ, its RMSNorm, W_UQ (DeepSeek-V2 eq. 12-13)
            query = h * m.q_lora_rank + m.q_lora_rank + m.q_lora_rank * a * qk
        else:
            query = h * a * qk
        # W_DKV and shared rotary key W_KR, the latent's RMSNorm, W_UK and W_UV (eq. 9-11, 14)
        key_value = (h * (m.kv_lora_rank + m.qk_rope_head_dim) + m.kv_lora_rank
                     + m.kv_lora_rank * a * (m.qk_nope_head_dim + m.v_head_dim))
        return query + key_value + a * m.v_head_dim * h
    q_width = a * model.qk_head_dim
    kv_width = model.kv_heads * model.qk_head_dim
    weights = h * (q_width + 2 * kv_width) + q_width * h
    biases = 0
    if model.qkv_bias or model.linear_bias:
        biases += q_width + 2 * kv_width
    if model.linear_bias:
        biases += h
    qk_norms = 2 * model.qk_head_dim if model.qk_norm else 0
    return weights + biases + qk_norms


def mlp_params(model: ModelSpec, ffn: int) -> int:
    """A dense MLP of inner width `ffn`: SwiGLU has gate, up and down; GeLU has up and down."""
    h = model.hidden_size
    if model.activation == "swiglu":
        return 3 * h * ffn + ((2 * ffn + h) if model.linear_bias else 0)
    return 2 * h * ffn + ((ffn + h) if model.linear_bias else 0)


@dataclass(frozen=True)
class MoEParams:
    """One MoE layer's feed-forward part."""

    router: int  # h x E gate (+ DeepSeek-V3's per-expert score bias)
    expert: int  # one routed expert
    shared: int  # all shared experts together, with their gate

    def total(self, num_experts: int) -> int:
        return self.router + num_experts * self.expert + self.shared


def moe_params(model: ModelSpec) -> MoEParams:
    h = model.hidden_size
    router = h * model.num_experts + (model.num_experts if model.mla is not None else 0)
    shared = model.num_shared_experts * mlp_params(model, model.shared_ffn_hidden_size)
    if model.shared_expert_gate and model.num_shared_experts:
        shared += h
    return MoEParams(router=router, expert=mlp_params(model, model.moe_ffn_hidden_size),
                     shared=shared)


def block_params(model: ModelSpec, moe: bool, *, active: bool = False) -> tuple[int, int]:
    """(non-expert, routed-expert) parameters of one block, dense or MoE; `active` counts only
    the experts one token passes through."""
    dense = attention_params(model) + 2 * norm_params(model)
    if not moe:
        return dense + mlp_params(model, model.ffn_hidden_size), 0
    experts = moe_params(model)
    routed = model.experts_per_token if active else model.num_experts
    return dense + experts.router + experts.shared, routed * experts.expert


def block_kinds(model: ModelSpec, start: int, stop: int) -> tuple[int, int]:
    """(dense blocks, MoE blocks) among blocks start..stop-1."""
    first_moe = model.first_dense_layers if model.is_moe else model.num_layers
    dense = max(0, min(stop, first_moe) - start)
    return dense, (stop - start) - dense


class BlockGroup(NamedTuple):
    """`count` consecutive blocks alike: dense or MoE, under one recompute mode."""

    count: int
    moe: bool
    recompute: Recompute


@lru_cache(maxsize=65536)  # the planner asks the same stages of thousands of layouts
def block_groups(model: ModelSpec, start: int, stop: int, recompute: Recompute,
                 full_until: int | None = None) -> tuple[BlockGroup, ...]:
    """Blocks start..stop-1 in groups: those before `full_until` recomputed in full (Megatron-
    LM's block method recomputes the first N blocks of a stage), the others under `recompute`."""
    cut = start if full_until is None else min(max(full_until, start), stop)
    groups = []
    for lo, hi, mode in ((start, cut, "full"), (cut, stop, recompute)):
        for count, moe in zip(block_kinds(model, lo, hi), (False, True)):
            if count:
                groups.append(BlockGroup(count, moe, mode))
    return tuple(groups)


def _blocks_total(model: ModelSpec, start: int, stop: int, *, active: bool = False) -> tuple[int, int]:
    """(non-expert, routed-expert) parameters of blocks start..stop-1."""
    n_dense, n_moe = block_kinds(model, start, stop)
    dense = n_dense * sum(block_params(model, False))
    moe_dense, moe_expert = block_params(model, True, active=active) if n_moe else (0, 0)
    return dense + n_moe * moe_dense, n_moe * moe_expert


def replicated_block_params(model: ModelSpec, moe: bool) -> int:
    """Parameters of one block that tensor parallelism does not split: the norm vectors and
    qk-norms, and the biases of the row-parallel layers (attention output; fc2 of a dense MLP),
    which are added after the all-reduce (Megatron-LM `RowParallelLinear`)."""
    qk_norms = 2 * model.qk_head_dim if model.qk_norm else 0
    row_biases = model.hidden_size * (1 if moe else 2) if model.linear_bias else 0
    return 2 * norm_params(model) + qk_norms + row_biases


def embedding_params(model: ModelSpec) -> int:
    """Token embedding (+ learned positions)."""
    positions = model.max_position_embeddings if model.position_embedding == "learned" else 0
    return (model.vocab_size + positions) * model.hidden_size


def head_params(model: ModelSpec) -> int:
    """Final norm and, when untied, the LM head (an h x V matrix without bias)."""
    lm_head = 0 if model.tied_embeddings else model.vocab_size * model.hidden_size
    return norm_params(model) + lm_head


def total_params(model: ModelSpec) -> int:
    """Every trainable parameter (a tied embedding counted once)."""
    return embedding_params(model) + sum(_blocks_total(model, 0, model.num_layers)) \
        + head_params(model)


def active_params(model: ModelSpec) -> int:
    """Parameters one token passes through: routed experts counted experts_per_token times.
    Equals total_params for dense models."""
    return embedding_params(model) \
        + sum(_blocks_total(model, 0, model.num_layers, active=True)) + head_params(model)


@dataclass(frozen=True)
class StageParams:
    """Parameters held by one pipeline rank, before tensor/expert sharding."""

    dense: int  # attention, norms, dense MLPs, routers, shared experts, embedding, head
    expert: int  # routed experts (split over ep, then tp)
    embedding: int  # part of `dense`: token (+ position) embedding, vocabulary-parallel
    lm_head: int  # part of `dense`: the output matrix, vocabulary-parallel
    replicated: int  # part of `dense` every tp rank holds whole: norms, row-parallel biases,
    #                  learned positions (Megatron-LM shards only weight matrices and the vocab)

    @property
    def total(self) -> int:
        return self.dense + self.expert

    def dense_per_rank(self, tp: int) -> float:
        """Non-expert parameters on one tensor-parallel rank."""
        return (self.dense - self.replicated) / tp + self.replicated

    def expert_per_rank(self, tp: int, ep: int) -> float:
        """Routed-expert parameters on one rank: experts split over ep, each over tp."""
        return self.expert / (tp * ep)


def stage_params(model: ModelSpec, stage_layers: tuple[int, ...], pp: int, rank: int) -> StageParams:
    """What pipeline rank `rank` holds: its virtual stages rank, rank+pp, ... (interleaved), the
    embedding with virtual stage 0 and the final norm and LM head with the last one. With tied
    embeddings and pp > 1 the last stage keeps its own copy of the embedding matrix as its LM
    head, synchronised by an all-reduce (Megatron-LM, `setup_embeddings_and_output_layer`)."""
    starts = [sum(stage_layers[:i]) for i in range(len(stage_layers))]
    dense = expert = replicated = 0
    for chunk in range(rank, len(stage_layers), pp):
        d, e = _blocks_total(model, starts[chunk], starts[chunk] + stage_layers[chunk])
        dense, expert = dense + d, expert + e
        n_dense, n_moe = block_kinds(model, starts[chunk], starts[chunk] + stage_layers[chunk])
        replicated += n_dense * replicated_block_params(model, False) \
            + n_moe * replicated_block_params(model, True)
    embedding = embedding_params(model) if rank == 0 else 0
    if embedding:  # the learned position table is not vocabulary-parallel
        replicated += embedding - model.vocab_size * model.hidden_size
    lm_head = 0
    if rank == pp - 1:
        lm_head = model.vocab_size * model.hidden_size
        if model.tied_embeddings and pp == 1:
            lm_head = 0
        replicated += norm_params(model)
        dense += norm_params(model)
    dense += embedding + lm_head
    return StageParams(dense=dense, expert=expert, embedding=embedding, lm_head=lm_head,
                       replicated=replicated)
