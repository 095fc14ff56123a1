"""Run a function on N gloo processes and collect what each rank returns.

A thin adapter over the runtime's launcher (`runtime.launch.launch`): it spawns the ranks,
joins them in one gloo process group (TCPStore on 127.0.0.1, port chosen by the OS), returns
their results in rank order, raises MeasurementError naming the rank on an error, a dead rank
or the deadline, and leaves no process behind in any case. Here each rank also runs on one
thread (the ranks share two cores). Starting a rank costs seconds (it imports torch), so each
test module runs all its cases in one `run_ranks` call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from parasim.runtime.launch import launch

DEFAULT_TIMEOUT_S = 90.0


def run_ranks(fn: Callable[..., Any], world: int, *args: Any,
              timeout_s: float = DEFAULT_TIMEOUT_S) -> list[Any]:
    """`[fn(0, *args), ..., fn(world-1, *args)]`, each in its own process of one gloo group.
    `fn` must be a module-level function (pickled by name); its result must pickle."""
    return launch(_call, world, (fn, args), timeout_s)


def _call(rank: int, world: int, payload: tuple[Callable[..., Any], tuple]) -> Any:
    fn, args = payload
    torch.set_num_threads(1)
    return fn(rank, *args)


def to_numpy(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Tensors as numpy arrays (a copy, detached from any shared buffer)."""
    return {name: t.detach().clone().numpy() for name, t in state.items()}
