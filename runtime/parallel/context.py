"""Context parallelism: the sequence split over the cp group, attention by ring attention
(Liu et al. 2023, "Ring Attention with Blockwise Transformers"; Megatron-Core's
`AttnFuncWithCPAndKVP2P`) or, with `cp_style: ulysses`, by all-to-alls that trade the sequence
split for a head split (DeepSpeed-Ulysses, Jacobs et al. 2023; `UlyssesAttention` below).

Load balance (Megatron-Core): the sequence is cut into 2·cp equal chunks and rank i holds
chunks i and 2·cp-1-i, so every rank has the same amount of causal work. Everything but
attention is per token, so only attention communicates.

Ring forward: each rank keeps its queries; the key/value blocks travel around the ring (send
to the next rank, receive from the previous, the next transfer started before the current
block is computed). At step t rank i holds the keys/values of rank j = i - t (mod cp):
- j = i: both query chunks against both key chunks, causal (the two chunks are in order);
- j < i: both query chunks against key chunk j only (chunk 2cp-1-j is later than both), full;
- j > i: only query chunk 2cp-1-i against both key chunks (chunk i is earlier than both), full.
Block results merge by the online softmax (Milakov & Gimelshein 2018): with block output o_b
and log-sum-exp l_b, l = log(e^l + e^l_b), o = o·e^(l_old-l) + o_b·e^(l_b-l).

Backward (choice: a custom autograd function with a ring backward, not an all-gather of K/V):
the keys/values go around the ring again, the next block sent while the current one is
computed (as in the forward), and each block's gradient follows it one step behind: every
rank adds its queries' contribution to the block it holds (the FlashAttention backward of one
block, Dao et al. 2022, using the final output and log-sum-exp) once the previous holders'
part has arrived, and sends it on; after cp passes each block's gradient is back on its
owner. Memory stays at two key/value blocks per
rank, as in the forward. On the CPU each block is torch's fused flash-attention kernel, which
returns the log-sum-exp and has a backward taking the final output and log-sum-exp: the ring
runs the same kernel as one rank's attention without context parallelism, which is what the
cost model prices. Elsewhere blocks fall back to plain matmuls (the s_q x s_k scores of one
block at a time).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd import Function

from parasim.runtime.model import Attention, Chunk, CoreAttention
from parasim.runtime.parallel.expert import all_to_all
from parasim.runtime.parallel.groups import Axis


def chunk_indices(rank: int, size: int) -> tuple[int, int]:
    """The two of 2·size sequence chunks that rank `rank` holds (Megatron-Core)."""
    return rank, 2 * size - 1 - rank


def split_sequence(x: torch.Tensor, axis: Axis, dim: int = 1) -> torch.Tensor:
    """This rank's part of a full-sequence tensor: chunks i and 2cp-1-i along `dim`."""
    if axis.size == 1:
        return x
    pieces = x.chunk(2 * axis.size, dim=dim)
    first, second = chunk_indices(axis.rank, axis.size)
    return torch.cat((pieces[first], pieces[second]), dim=dim)


def local_positions(seq_length: int, axis: Axis, batch: int = 1) -> torch.Tensor:
    """Absolute positions (batch, seq/cp) of the tokens this rank holds."""
    positions = torch.arange(seq_length)[None].expand(batch, seq_length)
    return split_sequence(positions, axis).contiguous()


def block_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, fp32 log-sum-exp) of q (b, h, sq, d) against k, v (b, hkv, sk, d)."""
    k, v = _expand(k, q.shape[1]), _expand(v, q.shape[1])
    if q.device.type == "cpu":  # torch's fused CPU kernel, which returns the log-sum-exp
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, causal)
        return out, lse.float()
    return matmul_block_attention(q, k, v, causal)


def block_attention_backward(grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                             v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                             causal: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) of one block given the final output and log-sum-exp of its query rows
    (the FlashAttention backward, Dao et al. 2022, Appendix B)."""
    kv_heads = k.shape[1]
    k, v = _expand(k, q.shape[1]), _expand(v, q.shape[1])
    if q.device.type == "cpu":
        dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            grad, q, k, v, out, lse, 0.0, causal)
    else:
        dq, dk, dv = matmul_block_attention_backward(grad, q, k, v, out, lse, causal)
    return dq, _fold(dk, kv_heads), _fold(dv, kv_heads)


def matmul_block_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """`block_attention` by plain matmuls (the s_q x s_k scores of one block), for devices
    without a fused kernel that returns the log-sum-exp here; k, v have q's heads."""
    scores = _scores(q, k, causal)
    lse = torch.logsumexp(scores, dim=-1)
    return torch.exp(scores - lse[..., None]) @ v, lse.float()


def matmul_block_attention_backward(grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                                    v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                                    causal: bool
                                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The backward of `matmul_block_attention` (k, v with q's heads)."""
    probs = torch.exp(_scores(q, k, causal) - lse.to(q.dtype)[..., None])
    dv = probs.transpose(-1, -2) @ grad
    delta = (grad * out).sum(dim=-1, keepdim=True)
    dscores = probs * (grad @ v.transpose(-1, -2) - delta) * q.shape[-1] ** -0.5
    return dscores @ k, dscores.transpose(-1, -2) @ q, dv


def _scores(q: torch.Tensor, k: torch.Tensor, causal: bool) -> torch.Tensor:
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    if causal:
        mask = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
    return scores


def _expand(x: torch.Tensor, heads: int) -> torch.Tensor:
    """Key/value heads repeated for the query heads of their group (GQA)."""
    return x if x.shape[1] == heads else x.repeat_interleave(heads // x.shape[1], dim=1)


def _fold(x: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """Gradient of _expand: sum over each group's query heads."""
    b, heads, s, d = x.shape
    return x if heads == kv_heads else x.view(b, kv_heads, heads // kv_heads, s, d).sum(2)


def ring_blocks(rank: int, source: int, seq: int) -> tuple[slice, slice, bool]:
    """(query rows, key rows, causal) of the work at a step holding `source`'s keys."""
    half = seq // 2
    if source == rank:
        return slice(0, seq), slice(0, seq), True
    if source < rank:
        return slice(0, seq), slice(0, half), False
    return slice(half, seq), slice(0, seq), False


def _merge(out: torch.Tensor, lse: torch.Tensor, rows: slice, block_out: torch.Tensor,
           block_lse: torch.Tensor) -> None:
    """Online-softmax merge of a block's result into rows `rows` of (out, lse), in place."""
    old = lse[:, :, rows]
    new = torch.logaddexp(old, block_lse)
    out[:, :, rows] = (out[:, :, rows] * torch.exp(old - new).to(out.dtype)[..., None]
                       + block_out * torch.exp(block_lse - new).to(out.dtype)[..., None])
    lse[:, :, rows] = new


class _RingAttention(Function):
    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                axis: Axis) -> torch.Tensor:
        out = torch.zeros_like(q)
        lse = torch.full(q.shape[:-1], float("-inf"), dtype=torch.float32, device=q.device)
        held = torch.stack((k, v))
        for step in range(axis.size):
            if step + 1 < axis.size:
                incoming, requests = axis.ring_shift(held)
            rows, cols, causal = ring_blocks(axis.rank, (axis.rank - step) % axis.size,
                                             q.shape[2])
            block_out, block_lse = block_attention(q[:, :, rows], held[0][:, :, cols],
                                                   held[1][:, :, cols], causal)
            _merge(out, lse, rows, block_out, block_lse)
            if step + 1 < axis.size:
                for request in requests:
                    request.wait()
                held = incoming
        ctx.axis = axis
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        q, k, v, out, lse = ctx.saved_tensors
        axis = ctx.axis
        dq = torch.zeros_like(q)
        held = torch.stack((k, v))
        gradient, in_flight = torch.zeros_like(held), []  # the held block's (dk, dv) so far
        for step in range(axis.size):
            if step + 1 < axis.size:  # the next block travels while this one is computed
                incoming, requests = axis.ring_shift(held, tag=KV_TAG)
            rows, cols, causal = ring_blocks(axis.rank, (axis.rank - step) % axis.size,
                                             q.shape[2])
            dq_b, dk_b, dv_b = block_attention_backward(
                grad[:, :, rows], q[:, :, rows], held[0][:, :, cols], held[1][:, :, cols],
                out[:, :, rows], lse[:, :, rows], causal)
            dq[:, :, rows] += dq_b
            _wait(in_flight)  # the previous holders' part of this block's gradient
            gradient[0][:, :, cols] += dk_b
            gradient[1][:, :, cols] += dv_b
            gradient, in_flight = axis.ring_shift(gradient, tag=GRADIENT_TAG)
            if step + 1 < axis.size:
                _wait(requests)
                held = incoming
        _wait(in_flight)  # after cp passes each block's gradient is back on its owner
        return dq, gradient[0], gradient[1], None


KV_TAG, GRADIENT_TAG = 0, 1  # the two shifts of the ring backward, in flight together


def _wait(requests: list) -> None:
    for request in requests:
        request.wait()


class RingAttention(nn.Module):
    """Causal attention over a sequence split across the cp group (drop-in for
    `runtime.model.CoreAttention`)."""

    def __init__(self, axis: Axis) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return _RingAttention.apply(q, k, v, self.axis)


def whole_sequence(pieces: torch.Tensor, dim: int) -> torch.Tensor:
    """The full sequence from every rank's part (`pieces`: the cp parts stacked on dim 0,
    each holding chunks j and 2cp-1-j along `dim` of a part): the inverse of stacking
    `split_sequence` over the ranks."""
    size = pieces.shape[0]
    halves = [piece.chunk(2, dim=dim - 1) for piece in pieces]  # dim of a part, one lower
    ordered = [None] * (2 * size)
    for rank, (first, second) in enumerate(halves):
        a, b = chunk_indices(rank, size)
        ordered[a], ordered[b] = first, second
    return torch.cat(ordered, dim=dim - 1)


def sequence_parts(x: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """Every rank's part of a full-sequence tensor along `dim`, stacked on a new dim 0."""
    chunks = x.chunk(2 * size, dim=dim)
    return torch.stack([torch.cat((chunks[a], chunks[b]), dim=dim)
                        for a, b in (chunk_indices(r, size) for r in range(size))])


def _to_heads(x: torch.Tensor, axis: Axis) -> torch.Tensor:
    """(b, heads, s/cp, d) with this rank's tokens -> (b, heads/cp, s, d) with this rank's
    heads: head group j goes to rank j, the parts that arrive are put in sequence order."""
    groups = x.unflatten(1, (axis.size, -1)).movedim(1, 0).contiguous()
    arrived = all_to_all(groups, axis, [1] * axis.size, [1] * axis.size)
    return whole_sequence(arrived, dim=3)


def _to_sequence(x: torch.Tensor, axis: Axis) -> torch.Tensor:
    """The inverse of `_to_heads`: (b, heads/cp, s, d) -> (b, heads, s/cp, d)."""
    parts = sequence_parts(x, axis.size, dim=2).contiguous()
    arrived = all_to_all(parts, axis, [1] * axis.size, [1] * axis.size)
    return arrived.movedim(0, 1).flatten(1, 2)


def _kv_for_head_split(kv: torch.Tensor, heads: int, size: int) -> torch.Tensor:
    """Keys or values whose head groups line up with the queries' after the split: as they
    are when cp divides their heads, else repeated (to cp heads when their heads divide cp,
    else to one per query head), as DeepSpeed-Ulysses replicates grouped keys/values."""
    kv_heads = kv.shape[1]
    if kv_heads % size == 0:
        return kv
    copies = size // kv_heads if size % kv_heads == 0 else heads // kv_heads
    return kv.repeat_interleave(copies, dim=1)


class UlyssesAttention(nn.Module):
    """Causal attention over a sequence split across the cp group (drop-in for
    `runtime.model.CoreAttention`): queries, keys and values in one all-to-all to a head
    split, the plain attention of `CoreAttention` on the whole sequence for heads/cp heads,
    the output all-to-all back: the two all-to-alls a block's forward costs in the simulator
    (`simulator.step_time._ulysses_all_to_alls`). Autograd carries the gradients through the
    same all-to-alls reversed."""

    def __init__(self, axis: Axis) -> None:
        super().__init__()
        self.axis = axis
        self.core = CoreAttention()

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        heads, size = q.shape[1], self.axis.size
        k, v = (_kv_for_head_split(t, heads, size) for t in (k, v))
        q, k, v = _to_heads_together((q, k, v), self.axis)
        return _to_sequence(self.core(q, k, v), self.axis)


def _to_heads_together(tensors: tuple[torch.Tensor, ...], axis: Axis
                       ) -> tuple[torch.Tensor, ...]:
    """`_to_heads` of each tensor (of one head dimension), in one all-to-all: each rank's
    head group of every tensor packed side by side, unpacked after the exchange."""
    assert len({t.shape[-1] for t in tensors}) == 1, "one head dimension"
    widths = [t.shape[1] // axis.size for t in tensors]
    packed = torch.cat([t.unflatten(1, (axis.size, -1)) for t in tensors], dim=2)
    return _to_heads(packed.flatten(1, 2), axis).split(widths, dim=1)


def apply_context_parallel(chunk: Chunk, axis: Axis, style: str = "ring") -> None:
    """Swap every block's core attention for ring (or Ulysses) attention over `axis` (in
    place)."""
    if axis.size == 1:
        return
    for module in chunk.modules():
        if isinstance(module, Attention):
            module.core = RingAttention(axis) if style == "ring" else UlyssesAttention(axis)
