"""ZeRO-3's weight gathering: units of buckets gathered before use, freed after, prefetched.

Rajbhandari et al. 2020 ("ZeRO", §5.3 P_p and §7.2.1: each layer's parameters are broadcast
/ gathered just before its forward and backward and discarded after) as PyTorch FSDP does it
(Zhao et al. 2023, "PyTorch FSDP", §3.2-3.3: one flat unit per transformer block; the root
unit's weights stay gathered from its forward to its backward; forward prefetch of the next
unit and backward prefetch of the previous one, issued before the current unit's compute so
that the all-gather runs behind it).

A unit is a module and the buckets (`runtime.parallel.data.Bucket`, ZeRO-3: weight shard
persistent, full buffer freed) holding its parameters. Hooks:
- forward pre-hook: gather the unit (waiting for a prefetch), then start the next unit's gather
  (forward order: the root, then the blocks);
- forward hook: free a block's weights; register a hook on its output's gradient, which runs
  before the block's backward (and before a fully recomputed block reruns its forward there):
  gather the unit again and start the previous block's gather;
- freeing after the backward is the gradient hook's (`GradSync`): a bucket's weights are freed
  once every one of its gradients has arrived, when no backward operation needs them any more.
Every rank runs the same modules in the same order, so the collectives of one data-parallel
group are issued in the same order on every member.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import nn


class WeightBuffers(Protocol):  # runtime.parallel.data.Bucket, as this module uses it
    def start_weights(self) -> None: ...
    def wait_weights(self) -> None: ...
    def free_weights(self) -> None: ...


def weight_units(chunk: nn.Module, named: list[tuple[str, nn.Parameter]]
                 ) -> list[tuple[nn.Module, list[tuple[str, nn.Parameter]], bool]]:
    """(module, its parameters, free after forward) per unit, in forward order: the root
    (everything outside the blocks, kept from forward to backward), then each block."""
    blocks = getattr(chunk, "blocks", None)
    if not isinstance(blocks, nn.ModuleDict):
        return [(chunk, named, False)]
    units = [(block, [(n, p) for n, p in named if n.startswith(f"blocks.{key}.")], True)
             for key, block in blocks.items()]
    inside = {id(p) for _, members, _ in units for _, p in members}
    root = [(n, p) for n, p in named if id(p) not in inside]
    return [(chunk, root, False), *[u for u in units if u[1]]]


class Unit:
    """The buckets of one module's parameters, gathered and freed together."""

    def __init__(self, buckets: Sequence[WeightBuffers]) -> None:
        self.buckets = list(buckets)

    def prefetch(self) -> None:
        for bucket in self.buckets:
            bucket.start_weights()

    def gather(self) -> None:
        self.prefetch()
        for bucket in self.buckets:
            bucket.wait_weights()

    def free(self) -> None:
        for bucket in self.buckets:
            bucket.free_weights()


class WeightSharding:
    """The hooks that gather each unit's weights around its forward and backward."""

    def __init__(self, units: Sequence[tuple[nn.Module, Sequence[WeightBuffers], bool]], *,
                 prefetch: bool) -> None:
        self.units = [Unit(buckets) for _, buckets, _ in units]
        self.prefetch = prefetch
        self.gathers_prefetched = 0  # for tests: gathers started ahead of their unit
        for index, (module, _, free_after_forward) in enumerate(units):
            module.register_forward_pre_hook(self._before_forward(index))
            module.register_forward_hook(self._after_forward(index, free_after_forward))

    def _ahead(self, index: int) -> None:
        if self.prefetch and 0 <= index < len(self.units):
            self.units[index].prefetch()
            self.gathers_prefetched += 1

    def _before_forward(self, index: int):
        def hook(module: nn.Module, args: Any) -> None:
            self.units[index].gather()
            self._ahead(index + 1)
        return hook

    def _after_forward(self, index: int, free: bool):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if free:
                self.units[index].free()
            if isinstance(output, torch.Tensor) and output.requires_grad:
                output.register_hook(self._before_backward(index))
        return hook

    def _before_backward(self, index: int):
        def hook(grad: torch.Tensor) -> None:
            self.units[index].gather()
            if index > 1:  # not the root: it is kept from its forward, and what of it is
                self._ahead(index - 1)  # freed already (the head's buckets) is not needed
        return hook
