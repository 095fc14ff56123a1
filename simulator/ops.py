"""The operations of one transformer block, LM head and embedding, as one rank runs them.

An `Op` carries its forward matmul FLOPs and the bytes it moves through device memory; the
FLOP counts (`simulator.flops`) and the time model (`simulator.cost.compute`) both read these
lists, so what is counted is what is timed. Shapes are per rank: tensor parallelism splits
heads and the MLP width, sequence parallelism splits the token dimension of norms and
elementwise ops, context parallelism splits the query tokens.

FLOP conventions (Narayanan et al. 2021, "Efficient Large-Scale Language Model Training on GPU
Clusters Using Megatron-LM", §5.1 and Appendix): a (m x k)·(k x n) GEMM is 2mkn FLOPs; the
attention score and value products are counted over the full s x s square (no causal halving),
so model FLOPs match Megatron-LM's and PaLM's MFU; the backward pass is twice the forward.
Elementwise work (norms, activations, softmax, residual adds) is not counted as FLOPs but is
timed by its memory traffic.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Literal

from parasim.simulator.model import ModelSpec

OpKind = Literal["gemm", "attention", "memory"]


@dataclass(frozen=True)
class Op:
    """One operation of the forward pass on one rank; `count` identical instances."""

    name: str  # e.g. "qkv", "core_attention", "fc1"
    kind: OpKind  # gemm | attention (fused) | memory (elementwise)
    flop: float  # forward FLOPs of all `count` instances
    bytes: float  # forward bytes read + written of all instances
    shape: tuple[int, ...] = ()  # gemm: (m, n, k) of one instance;
    #                              attention: (batch, heads, s_q, s_kv, qk head dim, v head dim);
    #                              embedding: (table rows on this rank, hidden)
    count: int = 1  # identical instances in one launch (batched or grouped GEMM)
    core_attention: bool = False  # part of softmax(Q·K^T)·V: what selective recompute repeats
    kernel: str = ""  # memory ops: which elementwise kernel (a measured profile's key)
    elements: float = 0.0  # memory ops: elements the kernel processes (its output size)
    fp8: bool = False  # gemm: runs in FP8 when the job trains in fp8 (a block's linear layers)


@dataclass(frozen=True)
class Shard:
    """How one rank sees a micro-batch."""

    micro_batch: int  # sequences b
    seq_length: int  # full sequence s (keys and values of attention span all of it)
    tp: int = 1  # tensor-parallel degree
    cp: int = 1  # context-parallel degree: this rank's queries are s / cp
    sequence_parallel: bool = False  # norms and elementwise ops see tokens / tp
    bytes_per_value: int = 2  # activations' precision
    flash_attention: bool = True  # fused attention: no s x s matrix in memory
    linear_input_bytes: int | None = None  # the saved input of a block's linear layer (1:
    # FP8 training); None: bytes_per_value
    moe_act_input_bytes: int | None = None  # the MoE experts' saved SwiGLU input (1: cached
    # in FP8, DeepSeek-V3); None: bytes_per_value

    def __post_init__(self) -> None:
        if self.linear_input_bytes is None:
            object.__setattr__(self, "linear_input_bytes", self.bytes_per_value)
        if self.moe_act_input_bytes is None:
            object.__setattr__(self, "moe_act_input_bytes", self.bytes_per_value)

    @property
    def tokens(self) -> int:
        """Tokens whose queries this rank computes: b·s/cp."""
        return self.micro_batch * self.seq_length // self.cp

    @property
    def elementwise_tokens(self) -> float:
        return self.tokens / self.tp if self.sequence_parallel else self.tokens


def gemm(name: str, m: float, n: float, k: float, bpv: int, count: int = 1,
         core_attention: bool = False, fp8: bool = True) -> Op:
    """`count` GEMMs of (m x k)·(k x n): 2mnk FLOPs each; reads both inputs, writes the output.
    `fp8`: a linear layer of a block, which FP8 training runs in FP8 (Transformer Engine's
    `te.Linear` and grouped GEMMs in Megatron-Core); the router, the LM head and unfused
    attention products stay in 16 bits (NVIDIA Transformer Engine user guide, "Using FP8 with
    Transformer Engine": FP8 covers the linear layers; Megatron-Core builds its output layer
    and router outside TE's FP8 autocast)."""
    return Op(name, "gemm", 2.0 * m * n * k * count, float((m * k + k * n + m * n) * bpv * count),
              (int(m), int(n), int(k)), count, core_attention, fp8=fp8 and not core_attention)


def memory(name: str, kernel: str, elements: float, traffic: int, bpv: int,
           core_attention: bool = False) -> Op:
    """An elementwise kernel over `elements` values that reads and writes `traffic` values per
    element (a norm reads x and writes y: 2; a residual add: 3)."""
    return Op(name, "memory", 0.0, float(elements * traffic * bpv), core_attention=core_attention,
              kernel=kernel, elements=float(elements))


def _heads(model: ModelSpec, tp: int) -> tuple[int, int]:
    """(query heads, key/value heads) on one rank; kv heads are replicated when tp > kv."""
    return model.num_attention_heads // tp, max(1, model.kv_heads // tp)


def attention_ops(model: ModelSpec, shard: Shard) -> list[Op]:
    """Norm, projections (GQA or MLA), core attention, output projection, residual add."""
    h, bpv, t = model.hidden_size, shard.bytes_per_value, shard.tokens
    heads, kv_heads = _heads(model, shard.tp)
    dqk, dv = model.qk_head_dim, model.v_head_dim
    ops = [memory("norm1", model.norm, shard.elementwise_tokens * h, 2, bpv)]
    if model.mla is None:
        ops.append(gemm("qkv", t, heads * dqk + kv_heads * (dqk + dv), h, bpv))
    else:
        m = model.mla
        if m.q_lora_rank:
            ops.append(gemm("q_down", t, m.q_lora_rank, h, bpv))
            ops.append(gemm("q_up", t, heads * dqk, m.q_lora_rank, bpv))
        else:
            ops.append(gemm("q", t, heads * dqk, h, bpv))
        ops.append(gemm("kv_down", t, m.kv_lora_rank + m.qk_rope_head_dim, h, bpv))
        ops.append(gemm("kv_up", t, heads * (m.qk_nope_head_dim + dv), m.kv_lora_rank, bpv))
        kv_heads = heads  # MLA materialises per-head keys and values in training
    ops += _rope(model, shard, heads, kv_heads)
    ops += _core_attention(shard, heads, kv_heads, dqk, dv)
    ops.append(gemm("attention_out", t, h, heads * dv, bpv))
    ops.append(memory("residual1", "add", shard.elementwise_tokens * h, 3, bpv))
    return ops


def _rope(model: ModelSpec, shard: Shard, heads: int, kv_heads: int) -> list[Op]:
    """Rotary embedding of the queries and keys (Su et al. 2021): one fused kernel that reads
    and writes each rotated value (Megatron-Core's `fused_apply_rotary_pos_emb`). MLA rotates
    only each query head's rope part and the one shared rope key (DeepSeek-V2 §2.1.3)."""
    if model.position_embedding != "rope":
        return []
    if model.mla is None:
        width = (heads + kv_heads) * model.qk_head_dim
    else:
        width = (heads + 1) * model.mla.qk_rope_head_dim
    return [memory("rope", "rope", shard.tokens * width, 2, shard.bytes_per_value)]


def _core_attention(shard: Shard, heads: int, kv_heads: int, dqk: int, dv: int) -> list[Op]:
    """softmax(Q·K^T)·V: 2·b·s_q·s·heads·(dqk + dv) FLOPs over the full s x s square.

    Fused (FlashAttention): one kernel that reads Q, K, V and writes the output; causal
    kernels skip the masked half (the time model's `causal_work_fraction`). Unfused (Megatron's
    baddbmm, fused softmax, bmm): two batched GEMMs over the whole square and a softmax that
    reads and writes the s x s scores."""
    b, s_q, s, bpv = shard.micro_batch, shard.seq_length // shard.cp, shard.seq_length, \
        shard.bytes_per_value
    if not shard.flash_attention:
        pairs = b * heads
        return [gemm("attention_scores", s_q, s, dqk, bpv, pairs, core_attention=True),
                memory("softmax", "softmax", pairs * s_q * s, 2, bpv, core_attention=True),
                gemm("attention_values", s_q, dv, s, bpv, pairs, core_attention=True)]
    flop = 2.0 * b * s_q * s * heads * (dqk + dv)
    moved = b * (s_q * heads * (dqk + dv) + s * kv_heads * (dqk + dv)) * bpv
    return [Op("core_attention", "attention", flop, float(moved), (b, heads, s_q, s, dqk, dv),
               core_attention=True)]


def mlp_ops(model: ModelSpec, shard: Shard, ffn: int, tokens: float | None = None,
            name: str = "", count: int = 1) -> list[Op]:
    """fc1 (gate and up for SwiGLU), activation, fc2 on `tokens` tokens (default: all)."""
    h, bpv = model.hidden_size, shard.bytes_per_value
    t = shard.tokens if tokens is None else tokens
    width = ffn // shard.tp
    gated = model.activation == "swiglu"
    return [
        gemm(f"{name}fc1", t, width * (2 if gated else 1), h, bpv, count),
        memory(f"{name}activation", model.activation, t * width * count, 3 if gated else 2, bpv),
        gemm(f"{name}fc2", t, h, width, bpv, count),
    ]


def ffn_ops(model: ModelSpec, shard: Shard, moe: bool, ep: int = 1) -> list[Op]:
    """The block's second half: norm, dense MLP or router + experts, residual add.

    MoE: each rank computes, for its num_experts/ep local experts, the tokens routed to them;
    with balanced routing that is tokens·k slots per rank (padded to the capacity factor when
    one is set), as a grouped GEMM of num_experts/ep experts."""
    h, bpv = model.hidden_size, shard.bytes_per_value
    ops = [memory("norm2", model.norm, shard.elementwise_tokens * h, 2, bpv)]
    if not moe:
        ops += mlp_ops(model, shard, model.ffn_hidden_size)
    else:
        local = model.num_experts // ep
        slots = shard.tokens * model.experts_per_token * (model.capacity_factor or 1.0)
        ops.append(gemm("router", shard.tokens, model.num_experts, h, bpv, fp8=False))
        ops.append(memory("permute", "copy", 2 * slots * h, 2, bpv))  # dispatch and combine
        ops += mlp_ops(model, shard, model.moe_ffn_hidden_size, slots / local, "expert_", local)
        if model.num_shared_experts:
            ops += mlp_ops(model, shard, model.shared_ffn_hidden_size * model.num_shared_experts,
                           name="shared_")
    ops.append(memory("residual2", "add", shard.elementwise_tokens * h, 3, bpv))
    return ops


@lru_cache(maxsize=4096)
def block_ops(model: ModelSpec, shard: Shard, moe: bool, ep: int = 1) -> tuple[Op, ...]:
    """All forward ops of one transformer block on one rank."""
    return tuple(attention_ops(model, shard) + ffn_ops(model, shard, moe, ep))


@lru_cache(maxsize=1024)
def head_ops(model: ModelSpec, shard: Shard) -> tuple[Op, ...]:
    """Final norm, LM head (vocabulary-parallel over tp) and cross-entropy (fp32 logits)."""
    h, bpv, t = model.hidden_size, shard.bytes_per_value, shard.tokens
    vocab = -(-model.vocab_size // shard.tp)
    return (
        memory("final_norm", model.norm, shard.elementwise_tokens * h, 2, bpv),
        gemm("lm_head", t, vocab, h, bpv, fp8=False),
        memory("cross_entropy", "cross_entropy", t * vocab, 3, 4),
    )


@lru_cache(maxsize=1024)
def embedding_ops(model: ModelSpec, shard: Shard) -> tuple[Op, ...]:
    """Token (and learned position) lookup: memory only. Its shape is this rank's table (rows
    of the vocabulary-parallel split, hidden): the backward writes the table's dense gradient,
    whatever the number of tokens (`simulator.profile.ProfileDB.op_time`)."""
    rows = -(-model.vocab_size // shard.tp)
    lookup = memory("embedding", "embedding", shard.tokens * model.hidden_size, 2,
                    shard.bytes_per_value)
    return (replace(lookup, shape=(rows, model.hidden_size)),)


def forward_flop(ops: tuple[Op, ...] | list[Op]) -> float:
    return sum(op.flop for op in ops)


def core_attention_ops(ops: tuple[Op, ...] | list[Op]) -> list[Op]:
    """The ops of softmax(Q·K^T)·V: what selective recompute repeats and ring attention hides
    its communication behind."""
    return [op for op in ops if op.core_attention]
