"""A decoder-only transformer built from a `ModelSpec`, splittable into pipeline chunks.

Pre-norm blocks (GPT-2, Radford et al. 2019): x + attention(norm(x)), then x + mlp(norm(x)).
Attention is causal, with grouped-query heads (GQA, Ainslie et al. 2023; MQA when one key/value
head, Shazeer 2019), rotary positions when the spec says rope (RoFormer, Su et al. 2021),
optional per-head RMSNorm on queries and keys (Qwen3), and torch's fused
`scaled_dot_product_attention`. RMSNorm, RoPE and SwiGLU are one autograd node each
(`runtime.fused`), saving what Megatron-LM's fused kernels save. The MLP is GeLU (Vaswani et
al. 2017 with Hendrycks & Gimpel 2016) or SwiGLU (Shazeer 2020). MoE layers (Shazeer et al. 2017; GShard, Lepikhin et al. 2020)
route each token to its top-k experts by a softmax over the k largest router logits (Mixtral,
Megatron-Core's default), with optional shared experts (DeepSeekMoE) and, when the spec sets a
capacity factor, capacity dropping: capacity = ceil(factor·tokens·k/E) over the tokens of one
forward call, i.e. one rank's micro-batch, as Megatron-Core drops per rank. No auxiliary
load-balancing loss is added.

Layout of activations: (batch, sequence, hidden), batch first. A chunk's `forward(x, positions)`
takes token ids (batch, seq) when it has the embedding, else hidden states; `positions` are the
absolute positions (batch, seq) of the tokens this rank holds (context parallelism gives each
rank two pieces of the sequence, `runtime.parallel.context.local_positions`). A chunk with the
head returns logits; `chunk.loss(logits, labels)` is the mean cross-entropy over its tokens.
Under sequence parallelism the hidden states a chunk takes and returns hold this rank's 1/tp
of the (context-parallel local) sequence: (batch, seq/tp, hidden); logits are
(batch, seq, vocab/tp) under tensor parallelism.

Deterministic init: each parameter is drawn from its own generator seeded by (seed, its
name in the full model), so a chunk holding layers 4..7 has exactly the weights layers 4..7
have in the full model, whatever else is built. Weights ~ N(0, 0.02), the output projections
of attention and MLP ~ N(0, 0.02/sqrt(2·layers)) (GPT-2; Megatron-LM's scaled init), biases 0,
norm weights 1. With tied embeddings the head uses the embedding matrix (the same Parameter
when one chunk has both; with pipeline parallelism the last stage's copy starts equal and the
pipeline must all-reduce both copies' gradients over `ParallelGroups.embedding`).

The parallel layers change these modules in place (`runtime.parallel.apply.parallelize`): they
shard weights, set the `op` of the `Boundary` modules that open and close tensor-parallel
regions, swap the core attention and the MoE dispatcher. Without them this is the
single-process reference model. Dropout is not applied (runs are compared against a
single-process reference, so they must be deterministic); MLA attention is not built.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from fnmatch import fnmatchcase

import torch
import torch.nn.functional as F
from torch import nn

from parasim.runtime.fused import rms_norm, rope, rope_tables, swiglu
from parasim.simulator.errors import SpecError
from parasim.simulator.model import ModelSpec

NORM_EPS = 1e-5
INIT_STD = 0.02  # GPT-2 / Megatron-LM init_method_std


class Boundary(nn.Module):
    """Where a tensor-parallel region opens or closes: identity until a style sets `op`."""

    def __init__(self) -> None:
        super().__init__()
        self.op: Callable[[torch.Tensor], torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.op is None else self.op(x)


class Linear(nn.Module):
    """y = x Wᵀ + b, with the two hooks tensor parallelism needs.

    `bias_scale`: a row-parallel layer's ranks each add b/tp before the sum over tp.
    `rows`: the rows of a replicated weight this rank uses (key/value heads when tp > heads).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.bias_scale = 1.0
        self.rows: slice | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        if self.rows is not None:
            weight = weight[self.rows]
            bias = bias[self.rows] if bias is not None else None
        if bias is not None and self.bias_scale != 1.0:
            bias = bias * self.bias_scale
        return F.linear(x, weight, bias)


class Norm(nn.Module):
    """RMSNorm (Zhang & Sennrich 2019) or LayerNorm (Ba et al. 2016) over the last dim."""

    def __init__(self, kind: str, size: int) -> None:
        super().__init__()
        self.kind = kind
        self.weight = nn.Parameter(torch.empty(size))
        self.bias = nn.Parameter(torch.empty(size)) if kind == "layernorm" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "rmsnorm":
            return rms_norm(x, self.weight, NORM_EPS)
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, NORM_EPS)


def rotary(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE of x (batch, heads, seq, d) at `positions` (batch, seq)."""
    return rope(x, *_rope_tables(positions, x.shape[-1], x.dtype))


# The tables of the last positions tensor: every attention of a forward (and its recompute)
# rotates by the same positions, so they are computed once per micro-batch, not per layer.
# The entry holds the tensor itself, so identity (and its version) cannot be confused.
_last_rope: list = [None]  # (positions, (width, dtype, version), (cos, sin))


def _rope_tables(positions: torch.Tensor, width: int,
                 dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    key = (width, dtype, positions._version)
    last = _last_rope[0]
    if last is None or last[0] is not positions or last[1] != key:
        last = _last_rope[0] = (positions, key, rope_tables(positions, width, dtype))
    return last[2]


class CoreAttention(nn.Module):
    """softmax(q kᵀ/√d + causal mask) v over (batch, heads, seq, d), by torch's SDPA."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                              enable_gqa=q.shape[1] != k.shape[1])


class Attention(nn.Module):
    """Causal self-attention with q/k/v/out projections; head counts follow the local weights
    (tensor parallelism shards them by heads)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        h, d = spec.hidden_size, spec.qk_head_dim
        qkv_bias = spec.linear_bias or spec.qkv_bias
        self.head_dim, self.rope = d, spec.position_embedding == "rope"
        self.q = Linear(h, spec.num_attention_heads * d, qkv_bias)
        self.k = Linear(h, spec.kv_heads * d, qkv_bias)
        self.v = Linear(h, spec.kv_heads * d, qkv_bias)
        self.q_norm = Norm("rmsnorm", d) if spec.qk_norm else None
        self.k_norm = Norm("rmsnorm", d) if spec.qk_norm else None
        self.core: nn.Module = CoreAttention()
        self.out = Linear(spec.num_attention_heads * d, h, spec.linear_bias)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        q = self._heads(self.q(x), self.q_norm, positions)
        k = self._heads(self.k(x), self.k_norm, positions)
        v = self._heads(self.v(x), None, None)
        o = self.core(q, k, v)
        return self.out(o.transpose(1, 2).flatten(2))

    def _heads(self, y: torch.Tensor, norm: Norm | None,
               positions: torch.Tensor | None) -> torch.Tensor:
        """(batch, seq, n·d) -> (batch, n, seq, d), normed and rotated as configured."""
        y = y.unflatten(-1, (-1, self.head_dim)).transpose(1, 2)
        if norm is not None:
            y = norm(y)
        if positions is not None and self.rope:
            y = rotary(y, positions)
        return y


def activate(up: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
    """SwiGLU silu(gate)·up when there is a gate, else GeLU(up)."""
    return F.gelu(up) if gate is None else swiglu(gate, up)


class MLP(nn.Module):
    """down(act(up(x)[, gate(x)])): the dense feed-forward layer (and the shared experts)."""

    def __init__(self, hidden: int, ffn: int, gated: bool, bias: bool) -> None:
        super().__init__()
        self.up = Linear(hidden, ffn, bias)
        self.gate = Linear(hidden, ffn, bias) if gated else None
        self.down = Linear(ffn, hidden, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(activate(self.up(x), self.gate(x) if self.gate is not None else None))


class Experts(nn.Module):
    """E expert MLPs with stacked weights (E, ffn, hidden): expert parallelism slices dim 0,
    tensor parallelism the ffn dim. `forward` takes tokens sorted by expert and the count of
    each local expert."""

    def __init__(self, count: int, hidden: int, ffn: int, gated: bool, bias: bool) -> None:
        super().__init__()
        self.up = nn.Parameter(torch.empty(count, ffn, hidden))
        self.gate = nn.Parameter(torch.empty(count, ffn, hidden)) if gated else None
        self.down = nn.Parameter(torch.empty(count, hidden, ffn))
        self.up_bias = nn.Parameter(torch.empty(count, ffn)) if bias else None
        self.gate_bias = nn.Parameter(torch.empty(count, ffn)) if bias and gated else None
        self.down_bias = nn.Parameter(torch.empty(count, hidden)) if bias else None
        self.bias_scale = 1.0  # as Linear.bias_scale, for the row-parallel down projection

    def forward(self, x: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
        assert len(counts) == self.up.shape[0] and sum(counts) == x.shape[0], counts
        return torch.cat([self._expert(e, part) for e, part in
                          enumerate(torch.split(x, list(counts)))])

    def _expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        def bias(p: nn.Parameter | None) -> torch.Tensor | None:
            return None if p is None else p[e]
        up = F.linear(x, self.up[e], bias(self.up_bias))
        gate = F.linear(x, self.gate[e], bias(self.gate_bias)) if self.gate is not None else None
        down_bias = bias(self.down_bias)
        if down_bias is not None and self.bias_scale != 1.0:
            down_bias = down_bias * self.bias_scale
        return F.linear(activate(up, gate), self.down[e], down_bias)


class LocalDispatcher:
    """Every expert on this rank: the sorted tokens go straight to the experts."""

    def run(self, experts: Experts, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        return experts(x, counts.tolist())


def route(logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights, experts), each (tokens, k): softmax over the k largest logits (Mixtral)."""
    top, experts = logits.topk(top_k, dim=-1)
    return torch.softmax(top, dim=-1), experts


def capacity_keep(experts: torch.Tensor, num_experts: int, capacity: int) -> torch.Tensor:
    """Which of the flat (token-major) assignments fit: each expert keeps its first `capacity`
    assignments in token order and drops the rest (GShard, Lepikhin et al. 2020)."""
    order = torch.argsort(experts, stable=True)
    counts = torch.bincount(experts, minlength=num_experts)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(experts.numel(), device=experts.device) - starts[experts[order]]
    keep = torch.empty_like(experts, dtype=torch.bool)
    keep[order] = slot < capacity
    return keep


class MoE(nn.Module):
    """Routed experts (+ shared experts): out = Σ_topk w_e·expert_e(x) [+ shared(x)]."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        h, gated, bias = spec.hidden_size, spec.activation == "swiglu", spec.linear_bias
        self.num_experts, self.top_k = spec.num_experts, spec.experts_per_token
        self.capacity_factor = spec.capacity_factor
        self.router = Linear(h, spec.num_experts, False)
        self.experts = Experts(spec.num_experts, h, spec.moe_ffn_hidden_size, gated, bias)
        shared = spec.num_shared_experts * spec.shared_ffn_hidden_size
        self.shared = MLP(h, shared, gated, bias) if shared else None
        self.shared_gate = Linear(h, 1, False) if shared and spec.shared_expert_gate else None
        self.dispatcher = LocalDispatcher()  # expert parallelism swaps in the all-to-all one

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(0, -2)
        tokens, weights, counts = self._assign(flat)
        routed = self.dispatcher.run(self.experts, flat[tokens], counts)
        # Combine by scatter_add, as Megatron-Core's unpermute does: its backward keeps only
        # the index, where index_add's keeps the whole weighted source (slots x hidden).
        rows = tokens[:, None].expand(-1, flat.shape[-1])
        out = torch.zeros_like(flat).scatter_add(0, rows, routed * weights[:, None])
        if self.shared is not None:
            shared = self.shared(flat)
            if self.shared_gate is not None:
                shared = shared * torch.sigmoid(self.shared_gate(flat))
            out = out + shared
        return out.view_as(x)

    def _assign(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Kept assignments sorted by expert: (token index, weight, count per expert)."""
        weights, experts = route(self.router(flat).float(), self.top_k)
        weights, experts = weights.flatten().to(flat.dtype), experts.flatten()
        tokens = torch.arange(flat.shape[0], device=flat.device).repeat_interleave(self.top_k)
        if self.capacity_factor is not None:
            capacity = math.ceil(self.capacity_factor * flat.shape[0] * self.top_k
                                 / self.num_experts)
            keep = capacity_keep(experts, self.num_experts, capacity)
            tokens, weights, experts = tokens[keep], weights[keep], experts[keep]
        order = torch.argsort(experts, stable=True)
        counts = torch.bincount(experts, minlength=self.num_experts)
        return tokens[order], weights[order], counts


class Block(nn.Module):
    """Pre-norm transformer block; `checkpoint`, when set, reruns the block in the backward."""

    def __init__(self, spec: ModelSpec, index: int) -> None:
        super().__init__()
        self.attn_norm = Norm(spec.norm, spec.hidden_size)
        self.attn_in, self.attn, self.attn_out = Boundary(), Attention(spec), Boundary()
        self.mlp_norm = Norm(spec.norm, spec.hidden_size)
        mlp = MoE(spec) if spec.is_moe_layer(index) else MLP(
            spec.hidden_size, spec.ffn_hidden_size, spec.activation == "swiglu", spec.linear_bias)
        self.mlp_in, self.mlp, self.mlp_out = Boundary(), mlp, Boundary()
        self.checkpoint: Callable[..., torch.Tensor] | None = None  # set by recompute

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        if self.checkpoint is not None:
            return self.checkpoint(self._forward, x, positions)
        return self._forward(x, positions)

    def _forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        x = x + self.attn_out(self.attn(self.attn_in(self.attn_norm(x)), positions))
        return x + self.mlp_out(self.mlp(self.mlp_in(self.mlp_norm(x))))


class VocabEmbedding(nn.Module):
    """Token ids -> rows of the (vocab, hidden) table; rows [vocab_start, vocab_start + rows)
    when vocabulary-parallel (ids outside give zeros, summed over the tp ranks after)."""

    def __init__(self, vocab: int, hidden: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab, hidden))
        self.vocab_start = 0

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.weight.shape[0]
        local = ids - self.vocab_start
        outside = (local < 0) | (local >= rows)
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        return out.masked_fill(outside[..., None], 0.0)


class PositionTable(nn.Module):
    """Learned absolute positions (GPT-2). `sequence_shard` (rank, size), set by sequence
    parallelism: this rank's hidden states hold only that part of the sequence."""

    def __init__(self, rows: int, hidden: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(rows, hidden))
        self.sequence_shard: tuple[int, int] | None = None

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        if self.sequence_shard is not None:
            rank, size = self.sequence_shard
            positions = positions.chunk(size, dim=1)[rank]
        return F.embedding(positions, self.weight)


class Embedding(nn.Module):
    """Token embedding (+ learned positions); `out` closes the vocabulary-parallel region."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.tokens = VocabEmbedding(spec.vocab_size, spec.hidden_size)
        self.out = Boundary()
        learned = spec.position_embedding == "learned"
        self.positions = PositionTable(spec.max_position_embeddings, spec.hidden_size) \
            if learned else None

    def forward(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        x = self.out(self.tokens(ids))
        return x if self.positions is None else x + self.positions(positions)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over every position, computed in fp32."""
    return F.cross_entropy(logits.flatten(0, -2).float(), labels.flatten())


class Head(nn.Module):
    """LM head: logits = gather(x) Wᵀ; `loss_fn` is swapped for the vocabulary-parallel one."""

    def __init__(self, spec: ModelSpec, tied: nn.Parameter | None) -> None:
        super().__init__()
        self.gather = Boundary()
        self.weight = tied if tied is not None else nn.Parameter(
            torch.empty(spec.vocab_size, spec.hidden_size))
        self.loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = cross_entropy

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.gather(x), self.weight)


class Chunk(nn.Module):
    """Consecutive blocks [layers.start, layers.stop) of the model, with the embedding before
    them and/or the final norm and head after them. The whole model is one chunk."""

    def __init__(self, spec: ModelSpec, layers: range, has_embedding: bool,
                 has_head: bool) -> None:
        super().__init__()
        self.spec, self.layers = spec, layers
        self.embed = Embedding(spec) if has_embedding else None
        self.blocks = nn.ModuleDict({str(i): Block(spec, i) for i in layers})
        self.final_norm = Norm(spec.norm, spec.hidden_size) if has_head else None
        tied = self.embed.tokens.weight if has_embedding and spec.tied_embeddings else None
        self.head = Head(spec, tied) if has_head else None

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        if self.embed is not None:
            x = self.embed(x, positions)
        for block in self.blocks.values():
            x = block(x, positions)
        if self.head is not None:
            x = self.head(self.final_norm(x))
        return x

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        assert self.head is not None, "only the chunk with the head has a loss"
        return self.head.loss_fn(logits, labels)


# Deterministic initialisation --------------------------------------------------------------

INIT_RULES = (  # parameter-name pattern -> kind, first match wins
    ("*norm.weight", "ones"),
    ("*.bias", "zeros"),
    ("*_bias", "zeros"),
    ("*.attn.out.weight", "scaled"),
    ("*.down.weight", "scaled"),
    ("*.experts.down", "scaled"),
    ("*", "normal"),
)


def init_name(chunk: Chunk, name: str) -> str:
    """The name whose seed a parameter is drawn from: a tied head's is the embedding's."""
    if name == "head.weight" and chunk.spec.tied_embeddings:
        return "embed.tokens.weight"
    return name


def _parameter_seed(seed: int, name: str) -> int:
    return (seed * 0x9E3779B1 + zlib.crc32(name.encode())) % (2 ** 63)


@torch.no_grad()
def initialize(chunk: Chunk, seed: int) -> None:
    """Fill every parameter from (seed, its full-model name) by INIT_RULES."""
    scaled_std = INIT_STD / math.sqrt(2 * chunk.spec.num_layers)
    for name, param in chunk.named_parameters():
        kind = next(k for pattern, k in INIT_RULES if fnmatchcase(name, pattern))
        if kind == "ones":
            param.fill_(1.0)
        elif kind == "zeros":
            param.zero_()
        else:
            generator = torch.Generator().manual_seed(_parameter_seed(seed, init_name(chunk, name)))
            std = scaled_std if kind == "scaled" else INIT_STD
            values = torch.randn(param.shape, generator=generator, dtype=torch.float32) * std
            param.copy_(values)


def check_buildable(spec: ModelSpec) -> None:
    """What the runtime cannot build: SpecError naming the field."""
    if spec.mla is not None:
        raise SpecError("model.mla", "set", "the runtime does not build MLA attention",
                        "a model without mla (MHA, GQA or MQA)")
    if spec.position_embedding == "rope" and spec.qk_head_dim % 2:
        raise SpecError("model.head_dim", spec.qk_head_dim, "rotary embeddings need an even "
                        "head width", "an even head_dim")


def build_chunk(spec: ModelSpec, *, layers: range, has_embedding: bool, has_head: bool,
                seed: int = 0, dtype: torch.dtype = torch.float32) -> Chunk:
    """Blocks `layers` (global indices, stop exclusive) of the model, initialised from `seed`
    exactly as the same blocks of `build_model(spec, seed)`."""
    check_buildable(spec)
    assert 0 <= layers.start <= layers.stop <= spec.num_layers and layers.step == 1, layers
    chunk = Chunk(spec, layers, has_embedding, has_head)
    initialize(chunk, seed)
    return chunk.to(dtype)


def build_model(spec: ModelSpec, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> Chunk:
    """The whole model: one chunk with the embedding, every block and the head."""
    return build_chunk(spec, layers=range(spec.num_layers), has_embedding=True, has_head=True,
                       seed=seed, dtype=dtype)
