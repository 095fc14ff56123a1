"""Expert parallelism: the experts of each MoE layer split over the ep group, tokens sent to
their experts' ranks and back by all-to-all with variable splits (GShard, Lepikhin et al.
2020; Megatron-Core's `MoEAlltoAllTokenDispatcher`).

Every rank routes its own tokens exactly as the single-process `MoE` does (same router, same
top-k, same capacity dropping over its local tokens), sorts the kept assignments by expert,
and then `AllToAllDispatcher.run`:

1. exchanges the per-expert counts (all-to-all of E integers),
2. sends each rank the tokens of its experts (all-to-all, splits = tokens per rank),
3. reorders what arrived (source-major) to expert-major and runs the local experts,
4. restores the arrival order and sends the results back (the inverse all-to-all).

The all-to-all is an autograd function whose backward is the all-to-all with the splits
swapped, so gradients reach the routing ranks and the experts alike. An expert's gradient sums
the contributions of every ep rank's tokens; the data-parallel sync sums it further over the
expert-data-parallel group (edp = dp·cp/ep), `runtime.parallel.data`.
"""

from __future__ import annotations

import torch
from torch.autograd import Function

from parasim.runtime.model import Chunk, Experts, MoE
from parasim.runtime.parallel.groups import Axis
from parasim.simulator.errors import SpecError


class _AllToAll(Function):
    """Variable-split all-to-all; backward is the same exchange reversed."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, axis: Axis, out_splits: list[int],
                in_splits: list[int]) -> torch.Tensor:
        ctx.axis, ctx.out_splits, ctx.in_splits = axis, out_splits, in_splits
        return axis.all_to_all(x, out_splits, in_splits)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return ctx.axis.all_to_all(grad, ctx.in_splits, ctx.out_splits), None, None, None


def all_to_all(x: torch.Tensor, axis: Axis, out_splits: list[int],
               in_splits: list[int]) -> torch.Tensor:
    return _AllToAll.apply(x, axis, out_splits, in_splits)


def expert_major_order(received: torch.Tensor) -> torch.Tensor:
    """Row permutation from arrival order (source rank, then local expert) to (local expert,
    then source rank); `received[s, e]` is how many rows source s sent for local expert e."""
    sources, experts = received.shape
    starts = (torch.cumsum(received.flatten(), 0) - received.flatten()).view(sources, experts)
    device = received.device
    pieces = [torch.arange(int(starts[s, e]), int(starts[s, e] + received[s, e]), device=device)
              for e in range(experts) for s in range(sources)]
    return torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.long, device=device)


class AllToAllDispatcher:
    """Sends sorted tokens to the ranks of their experts and the results back."""

    def __init__(self, axis: Axis, num_experts: int) -> None:
        assert num_experts % axis.size == 0, (num_experts, axis.size)
        self.axis, self.local = axis, num_experts // axis.size

    def run(self, experts: Experts, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """x: this rank's kept assignments sorted by global expert; counts: per global expert."""
        sent = counts.view(self.axis.size, self.local)  # row j: tokens for rank j's experts
        received = self.axis.all_to_all(sent.contiguous(), [1] * self.axis.size,
                                        [1] * self.axis.size)
        in_splits, out_splits = sent.sum(1).tolist(), received.sum(1).tolist()
        arrived = all_to_all(x, self.axis, out_splits, in_splits)
        order = expert_major_order(received)
        outputs = experts(arrived[order], received.sum(0).tolist())
        restored = torch.empty_like(outputs).index_copy(0, order, outputs)
        return all_to_all(restored, self.axis, in_splits, out_splits)


def shard_experts(chunk: Chunk, axis: Axis) -> frozenset[str]:
    """Keep this rank's num_experts/ep experts of every MoE layer (in place) and route through
    the all-to-all; returns the names of all expert parameters (reduced over edp)."""
    expert_names = set()
    for name, module in list(chunk.named_modules()):
        if not isinstance(module, MoE):
            continue
        if module.num_experts % axis.size:
            raise SpecError("parallel.ep", axis.size,
                            f"does not divide num_experts={module.num_experts}",
                            "a divisor of num_experts")
        if axis.size > 1:
            _keep_local(module.experts, axis)
            module.dispatcher = AllToAllDispatcher(axis, module.num_experts)
        expert_names |= {f"{name}.experts.{p}" for p, _ in module.experts.named_parameters()}
    return frozenset(expert_names)


def _keep_local(experts: Experts, axis: Axis) -> None:
    for name, param in list(experts.named_parameters(recurse=False)):
        piece = param.detach().chunk(axis.size, dim=0)[axis.rank].clone()
        setattr(experts, name, torch.nn.Parameter(piece, requires_grad=param.requires_grad))
