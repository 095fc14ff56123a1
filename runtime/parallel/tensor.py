"""Tensor parallelism (Shoeybi et al. 2019, Megatron-LM) and sequence parallelism (Korthikanti
et al. 2022, "Reducing Activation Recomputation in Large Transformer Models").

Megatron's pattern: a tensor-parallel region opens with the conjugate operator f (identity
forward, all-reduce of the gradient backward), holds column-parallel layers (output features
split over tp), whatever is local per head or per feature (core attention, activation), and
row-parallel layers (input features split; each rank's output is a partial sum), and closes
with g (all-reduce forward, identity backward) — Shoeybi et al. §3, Fig. 3. Sequence
parallelism replaces f by an all-gather along the sequence (reduce-scatter backward) and g by a
reduce-scatter (all-gather backward), so that the norms and residuals between regions run on
1/tp of the sequence (Korthikanti et al. §4.2.2, Fig. 5).

The embedding and LM head are vocabulary-parallel (Megatron-LM §3): each rank holds
vocab/tp rows; the cross-entropy is computed without gathering the logits (max, sum of
exponentials and target logit all-reduced over tp).

The sharding plan is data: TP_PLAN maps module-name patterns to a style, and `apply_plan`
applies it. Styles act on the full (single-process) weights in place, so the sharded model
starts from exactly the reference weights. A parameter replicated inside a region (router,
q/k norms, row-parallel biases, key/value heads shared by ranks when tp > kv heads) gets only
this rank's share of the gradient: `apply_plan` returns those names and the data-parallel
gradient sync sums them over tp (as Megatron all-reduces layernorm gradients under SP).
Row-parallel biases are added as b/tp on every rank, so the sum over tp adds b once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import partial
from typing import Literal

import torch
import torch.distributed as dist
from torch import nn
from torch.autograd import Function

from parasim.runtime.model import Boundary, Chunk, Experts, Head, Linear, PositionTable, VocabEmbedding
from parasim.runtime.parallel.groups import Axis
from parasim.simulator.errors import SpecError

Style = Literal["colwise", "rowwise", "kv", "vocab", "partial", "sequence", "experts",
                "region_in", "region_out"]

TP_PLAN: tuple[tuple[str, Style], ...] = (  # module name pattern -> style; first match wins
    ("embed.tokens", "vocab"),
    ("embed.out", "region_out"),
    ("embed.positions", "sequence"),
    ("blocks.*.attn_in", "region_in"),
    ("blocks.*.mlp_in", "region_in"),
    ("blocks.*.attn_out", "region_out"),
    ("blocks.*.mlp_out", "region_out"),
    ("blocks.*.attn.q_norm", "partial"),
    ("blocks.*.attn.k_norm", "partial"),
    ("blocks.*.attn_norm", "sequence"),
    ("blocks.*.mlp_norm", "sequence"),
    ("blocks.*.attn.q", "colwise"),
    ("blocks.*.attn.k", "kv"),
    ("blocks.*.attn.v", "kv"),
    ("blocks.*.attn.out", "rowwise"),
    ("blocks.*.up", "colwise"),
    ("blocks.*.gate", "colwise"),
    ("blocks.*.down", "rowwise"),
    ("blocks.*.router", "partial"),
    ("blocks.*.shared_gate", "partial"),
    ("blocks.*.experts", "experts"),
    ("final_norm", "sequence"),
    ("head.gather", "region_in"),
    ("head", "vocab"),
)


@dataclass(frozen=True, kw_only=True)
class TensorParallel:
    """What the styles need: the tp axis, whether sequence parallel, the head geometry."""

    axis: Axis
    sequence_parallel: bool
    head_dim: int
    kv_heads: int
    vocab_size: int


# Conjugate collectives (autograd functions) -------------------------------------------------


class _CopyToRegion(Function):
    """f: identity forward, all-reduce of the gradient backward (Shoeybi et al. §3)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, axis: Axis) -> torch.Tensor:
        ctx.axis = axis
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return ctx.axis.all_reduce(grad), None


class _ReduceFromRegion(Function):
    """g: all-reduce forward, identity backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, axis: Axis) -> torch.Tensor:
        return axis.all_reduce(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class _GatherSequence(Function):
    """SP's f: all-gather along the sequence (dim 1) forward, reduce-scatter backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, axis: Axis) -> torch.Tensor:
        ctx.axis = axis
        return axis.all_gather(x, dim=1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return ctx.axis.reduce_scatter(grad, dim=1), None


class _ReduceScatterSequence(Function):
    """SP's g: reduce-scatter along the sequence forward, all-gather backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, axis: Axis) -> torch.Tensor:
        ctx.axis = axis
        return axis.reduce_scatter(x, dim=1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return ctx.axis.all_gather(grad, dim=1), None


def copy_to_region(x: torch.Tensor, axis: Axis) -> torch.Tensor:
    return _CopyToRegion.apply(x, axis)


def reduce_from_region(x: torch.Tensor, axis: Axis) -> torch.Tensor:
    return _ReduceFromRegion.apply(x, axis)


def gather_sequence(x: torch.Tensor, axis: Axis) -> torch.Tensor:
    return _GatherSequence.apply(x, axis)


def reduce_scatter_sequence(x: torch.Tensor, axis: Axis) -> torch.Tensor:
    return _ReduceScatterSequence.apply(x, axis)


# Vocabulary-parallel cross-entropy ----------------------------------------------------------


class _VocabParallelCrossEntropy(Function):
    """Per-token loss from logits split over tp by vocabulary rows (Megatron-LM
    `vocab_parallel_cross_entropy`): log Σ exp(z - max) - (z_target - max), with the max, the
    sum and the target logit all-reduced over tp. Gradient: softmax - one-hot, locally."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, axis: Axis,
                vocab_start: int) -> torch.Tensor:
        peak = axis.all_reduce(logits.max(dim=-1).values, op=dist.ReduceOp.MAX)
        shifted = logits - peak[:, None]
        local = labels - vocab_start
        inside = (local >= 0) & (local < logits.shape[-1])
        index = local.clamp(0, logits.shape[-1] - 1)
        target = shifted.gather(1, index[:, None]).squeeze(1).masked_fill(~inside, 0.0)
        target = axis.all_reduce(target)
        exp = shifted.exp()
        total = axis.all_reduce(exp.sum(dim=-1))
        ctx.save_for_backward(exp / total[:, None], index, inside)
        return total.log() - target

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        softmax, index, inside = ctx.saved_tensors
        grad_logits = softmax.clone()
        rows = torch.arange(index.numel(), device=index.device)
        grad_logits[rows, index] -= inside.to(softmax.dtype)
        return grad_logits * grad[:, None], None, None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, *, axis: Axis,
                                 vocab_start: int) -> torch.Tensor:
    """Mean cross-entropy of (batch, seq, vocab/tp) logits against full-vocabulary labels."""
    flat = logits.flatten(0, -2).float()
    return _VocabParallelCrossEntropy.apply(flat, labels.flatten(), axis, vocab_start).mean()


# Styles -------------------------------------------------------------------------------------


def _shard(param: nn.Parameter, dim: int, axis: Axis) -> nn.Parameter:
    """This rank's contiguous 1/size of `param` along `dim`, as a new Parameter."""
    assert param.shape[dim] % axis.size == 0, (param.shape, dim, axis.size)
    piece = param.detach().chunk(axis.size, dim=dim)[axis.rank].clone()
    return nn.Parameter(piece, requires_grad=param.requires_grad)


def _colwise(module: Linear, tp: TensorParallel) -> set[str]:
    module.weight = _shard(module.weight, 0, tp.axis)
    if module.bias is not None:
        module.bias = _shard(module.bias, 0, tp.axis)
    return set()


def _rowwise(module: Linear, tp: TensorParallel) -> set[str]:
    module.weight = _shard(module.weight, 1, tp.axis)
    if module.bias is None:
        return set()
    module.bias_scale = 1.0 / tp.axis.size
    return {"bias"}


def _kv(module: Linear, tp: TensorParallel) -> set[str]:
    """Key/value heads: split by heads when tp divides them; when tp is a multiple of the
    heads, every rank keeps all of them and uses the one its query heads share (its gradient
    is this rank's share, summed over tp)."""
    if tp.axis.size <= tp.kv_heads:
        return _colwise(module, tp)
    head = tp.axis.rank // (tp.axis.size // tp.kv_heads)
    module.rows = slice(head * tp.head_dim, (head + 1) * tp.head_dim)
    return {name for name, _ in module.named_parameters()}


def _vocab(module: VocabEmbedding | Head, tp: TensorParallel) -> set[str]:
    module.weight = _shard(module.weight, 0, tp.axis)
    start = tp.axis.rank * module.weight.shape[0]
    if isinstance(module, VocabEmbedding):
        module.vocab_start = start
    else:
        module.loss_fn = partial(vocab_parallel_cross_entropy, axis=tp.axis, vocab_start=start)
    return set()


def _partial(module: nn.Module, tp: TensorParallel) -> set[str]:
    return {name for name, _ in module.named_parameters(recurse=False)}


def _sequence(module: nn.Module, tp: TensorParallel) -> set[str]:
    """Replicated weights applied outside the regions: on sequence shards under SP."""
    if not tp.sequence_parallel:
        return set()
    if isinstance(module, PositionTable):
        module.sequence_shard = (tp.axis.rank, tp.axis.size)
    return _partial(module, tp)


def _experts(module: Experts, tp: TensorParallel) -> set[str]:
    """Every expert is a tensor-parallel MLP: up/gate split by ffn rows, down by columns."""
    for name, dim in (("up", 1), ("gate", 1), ("up_bias", 1), ("gate_bias", 1), ("down", 2)):
        if getattr(module, name) is not None:
            setattr(module, name, _shard(getattr(module, name), dim, tp.axis))
    if module.down_bias is None:
        return set()
    module.bias_scale = 1.0 / tp.axis.size
    return {"down_bias"}


def _region_in(module: Boundary, tp: TensorParallel) -> set[str]:
    module.op = partial(gather_sequence if tp.sequence_parallel else copy_to_region,
                        axis=tp.axis)
    return set()


def _region_out(module: Boundary, tp: TensorParallel) -> set[str]:
    module.op = partial(reduce_scatter_sequence if tp.sequence_parallel else reduce_from_region,
                        axis=tp.axis)
    return set()


STYLES: dict[str, Callable[[nn.Module, TensorParallel], set[str]]] = {
    "colwise": _colwise, "rowwise": _rowwise, "kv": _kv, "vocab": _vocab, "partial": _partial,
    "sequence": _sequence, "experts": _experts, "region_in": _region_in,
    "region_out": _region_out,
}


def style_of(name: str, plan: tuple[tuple[str, Style], ...] = TP_PLAN) -> Style | None:
    return next((style for pattern, style in plan if fnmatchcase(name, pattern)), None)


def apply_plan(chunk: Chunk, tp: TensorParallel,
               plan: tuple[tuple[str, Style], ...] = TP_PLAN) -> frozenset[str]:
    """Shard `chunk` in place by `plan`; the names of parameters whose gradients are partial
    sums over tp. A tied embedding/head matrix is sharded once and stays shared."""
    check_tensor_parallel(tp)
    if tp.axis.size == 1:
        return frozenset()
    tied = chunk.head is not None and chunk.embed is not None \
        and chunk.head.weight is chunk.embed.tokens.weight
    partial_names: set[str] = set()
    for name, module in list(chunk.named_modules()):
        style = style_of(name, plan) if name else None
        if style is not None:
            partial_names |= {f"{name}.{p}" for p in STYLES[style](module, tp)}
    if tied:
        chunk.head.weight = chunk.embed.tokens.weight
    return frozenset(partial_names)


def check_tensor_parallel(tp: TensorParallel) -> None:
    """What the runtime's tensor parallelism cannot split (beyond simulator.job's checks)."""
    if tp.vocab_size % tp.axis.size:
        raise SpecError("parallel.tp", tp.axis.size,
                        f"does not divide vocab_size={tp.vocab_size} (the runtime splits the "
                        "vocabulary evenly and does not pad it)",
                        "a tp dividing vocab_size, or a shrunk model (runtime.shrink)")
