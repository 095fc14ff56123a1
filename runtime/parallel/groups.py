"""The process groups of one rank, built from the simulator's placement.

`simulator.placement.axis_groups` is the one definition of which global ranks form each tp, cp,
dp, dp·cp, ep, edp and pp group (Megatron-Core's rank order); this module turns its rows into
torch process groups. `torch.distributed.new_group` must be called by every rank of the world
for every group, in the same order, whether or not the rank is a member (torch's contract):
`build_groups` walks AXES in a fixed order and each axis's rows top to bottom on every rank.

An `Axis` is one group seen from this rank (its process group, size, index in it and the
members' global ranks), with the plain collectives the parallel layers need. Collectives over
an axis of size 1 return their input and touch no process group, so a single process runs
every layer without torch.distributed being initialised (`ParallelGroups.single()`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from parasim.simulator.layout import Layout
from parasim.simulator.placement import axis_groups

AXES = ("tp", "cp", "dp", "dp_cp", "ep", "edp", "pp")

# The tensor collectives under their current names; torch 2.13 renamed them and warns on
# every call of the old ones (all_gather_into_tensor, reduce_scatter_tensor).
all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
reduce_scatter_single = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


@dataclass(frozen=True, kw_only=True)
class Axis:
    """One parallel group as this rank sees it."""

    name: str  # tp | cp | dp | dp_cp | ep | edp | pp | embedding
    size: int  # members
    rank: int  # this rank's index among the members (ring order)
    ranks: tuple[int, ...]  # the members' global ranks, ring order
    group: dist.ProcessGroup | None  # None when size is 1 (no communication)

    @classmethod
    def alone(cls, name: str, global_rank: int = 0) -> Axis:
        return cls(name=name, size=1, rank=0, ranks=(global_rank,), group=None)

    def next_rank(self) -> int:
        """Global rank of the next member on the ring."""
        return self.ranks[(self.rank + 1) % self.size]

    def previous_rank(self) -> int:
        return self.ranks[(self.rank - 1) % self.size]

    # Collectives (no autograd; the autograd functions in tensor/expert/context wrap these) --

    def all_reduce(self, x: torch.Tensor, op: dist.ReduceOp = dist.ReduceOp.SUM) -> torch.Tensor:
        """A new tensor: the reduction of `x` over the members."""
        out = x.clone()
        if self.size > 1:
            dist.all_reduce(out, op=op, group=self.group)
        return out

    def all_gather(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """The members' `x` concatenated along `dim`, in member order."""
        if self.size == 1:
            return x
        moved = x.movedim(dim, 0).contiguous()
        out = moved.new_empty((self.size * moved.shape[0], *moved.shape[1:]))
        all_gather_single(out, moved, group=self.group)
        return out.movedim(0, dim).contiguous()

    def reduce_scatter(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """The sum over members of `x`, split along `dim`; this member's part."""
        if self.size == 1:
            return x
        moved = x.movedim(dim, 0).contiguous()
        assert moved.shape[0] % self.size == 0, (moved.shape, self.size)
        out = moved.new_empty((moved.shape[0] // self.size, *moved.shape[1:]))
        reduce_scatter_single(out, moved, group=self.group)
        return out.movedim(0, dim).contiguous()

    def all_to_all(self, x: torch.Tensor, out_splits: list[int],
                   in_splits: list[int]) -> torch.Tensor:
        """Rows in_splits[j] of `x` go to member j; out_splits[j] rows come from member j."""
        if self.size == 1:
            return x
        out = x.new_empty((sum(out_splits), *x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=self.group)
        return out

    def ring_shift(self, x: torch.Tensor, tag: int = 0) -> tuple[torch.Tensor, list]:
        """Start sending `x` to the next member and receiving the previous member's; returns
        the receive buffer and the requests to wait on. Shifts in flight at once use
        different tags."""
        received = torch.empty_like(x)
        ops = [dist.P2POp(dist.isend, x.contiguous(), self.next_rank(), self.group, tag),
               dist.P2POp(dist.irecv, received, self.previous_rank(), self.group, tag)]
        return received, dist.batch_isend_irecv(ops)


@dataclass(frozen=True, kw_only=True)
class ParallelGroups:
    """This rank's groups on every axis (Megatron-Core's parallel_state, made explicit)."""

    layout: Layout  # resolved (dp set)
    rank: int  # global rank
    tp: Axis
    cp: Axis
    dp: Axis
    dp_cp: Axis  # gradient reduction of dense weights
    ep: Axis
    edp: Axis  # gradient reduction of expert weights: dp·cp/ep ranks
    pp: Axis
    embedding: Axis  # first and last pipeline stage: tied embedding gradients (Megatron-LM)

    @classmethod
    def single(cls, layout: Layout | None = None) -> ParallelGroups:
        """One process, no torch.distributed: every axis has size 1."""
        layout = layout or Layout(dp=1)
        assert layout.world_size == 1, layout
        axes = {name: Axis.alone(name) for name in (*AXES, "embedding")}
        return cls(layout=layout, rank=0, **axes)


def build_groups(layout: Layout) -> ParallelGroups:
    """Every group of the layout, created on every rank in the same order; this rank's kept.

    torch.distributed must be initialised with world size = layout.world_size."""
    assert layout.dp is not None, "resolve the layout first"
    world, rank = dist.get_world_size(), dist.get_rank()
    assert world == layout.world_size, (world, layout.world_size)
    axes = {name: _make_axis(name, axis_groups(layout, name).tolist(), rank) for name in AXES}
    embedding_rows = [[row[0], row[-1]] if len(row) > 1 else [row[0]]
                      for row in axis_groups(layout, "pp").tolist()]
    axes["embedding"] = _make_axis("embedding", embedding_rows, rank)
    return ParallelGroups(layout=layout, rank=rank, **axes)


def _make_axis(name: str, rows: list[list[int]], rank: int) -> Axis:
    """new_group for every row of size > 1 (all ranks, same order); this rank's row kept."""
    mine = None
    for row in rows:
        group = dist.new_group(row) if len(row) > 1 else None
        if rank in row:
            mine = Axis(name=name, size=len(row), rank=row.index(rank), ranks=tuple(row),
                        group=group)
    assert mine is not None, (name, rank, rows)
    return mine
