"""Activation recomputation (Chen et al. 2016, "Training Deep Nets with Sublinear Memory
Cost"; Korthikanti et al. 2022 for the selective variant).

- full: a block keeps only its input; its forward runs again in the backward
  (`torch.utils.checkpoint`, non-reentrant), Megatron-LM `--recompute-granularity full`;
- selective: only the core attention (scores, softmax, weighted sum: the activations that grow
  with s² and are cheap to recompute) is rerun, Korthikanti et al. §5;
- per block: the planner may recompute in full only some blocks (e.g. the first N of each
  stage, Megatron-LM `--recompute-method block --recompute-num-layers N`); `full_layers` names
  them by global layer index, and under `selective` the other blocks recompute selectively.

Collectives inside a recomputed block (tensor, expert, context parallel) run again in the
backward on every rank alike, so ranks stay in step.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from functools import partial

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from parasim.runtime.model import Chunk
from parasim.simulator.layout import Recompute

recompute_call: Callable[..., torch.Tensor] = partial(checkpoint, use_reentrant=False)


class Checkpointed(nn.Module):
    """A parameter-free module (the core attention) rerun in the backward."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return recompute_call(self.inner, *args)


def full_recompute_layers(chunk: Chunk, recompute: Recompute,
                          full_layers: Collection[int] | None) -> frozenset[int]:
    """The chunk's blocks recomputed in full: `full_layers` when given, else every block
    under `full` and none otherwise."""
    if full_layers is not None:
        return frozenset(i for i in full_layers if i in chunk.layers)
    return frozenset(chunk.layers) if recompute == "full" else frozenset()


def apply_recompute(chunk: Chunk, recompute: Recompute,
                    full_layers: Collection[int] | None = None) -> frozenset[int]:
    """Mark blocks for full recompute and wrap the others' core attention under selective
    (in place, after every module swap); returns the fully recomputed layers."""
    full = full_recompute_layers(chunk, recompute, full_layers)
    for key, block in chunk.blocks.items():
        if int(key) in full:
            block.checkpoint = recompute_call
        elif recompute == "selective" and not isinstance(block.attn.core, Checkpointed):
            block.attn.core = Checkpointed(block.attn.core)
    return full
