"""Timing one kernel: warm-up, repeated timed runs, the median and their spread.

On CUDA a run is bracketed by `torch.cuda.Event`s on the current stream after a
`torch.cuda.synchronize()` (work queued before it does not leak in); on the CPU by
`time.perf_counter`. An optional `setup` runs before each run, untimed (a forward pass before a
timed backward, a barrier before a collective), and its result is the run's argument.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True, kw_only=True)
class Timing:
    """How often each entry runs."""

    warmup: int  # untimed runs first (allocator, caches, cuBLAS heuristics, lazy init)
    repeats: int  # timed runs; the median is kept

    def __post_init__(self) -> None:
        assert self.warmup >= 0 and self.repeats >= 1, self


def synchronize(device: str) -> None:
    """Wait for queued device work (no-op on the CPU, where every call is synchronous)."""
    if device == "cuda":
        torch.cuda.synchronize()


def run_time_s(fn: Callable[..., Any], args: tuple, device: str) -> float:
    """Seconds of one call of `fn(*args)`, device work included."""
    synchronize(device)
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(*args)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3  # elapsed_time is in milliseconds
    start_s = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start_s


@dataclass(frozen=True)
class Timed:
    """What the timed runs of one entry gave."""

    median_s: float
    spread: float  # upper over lower quartile of the runs: 1.0 steady, 2.0 a busy host's mark


def spread_of(times_s: list[float]) -> float:
    """Upper quartile over lower quartile of repeated timings (1.0 for fewer than 2 runs)."""
    if len(times_s) < 2:
        return 1.0
    low, _, high = statistics.quantiles(times_s, n=4, method="inclusive")
    return high / low if low > 0 else float("inf")


def timed(fn: Callable[..., Any], device: str, timing: Timing,
          setup: Callable[[], Any] | None = None) -> Timed:
    """Median and spread of `fn()` (or `fn(setup())`) over `timing.repeats` runs after
    warm-up."""
    times_s = []
    for index in range(timing.warmup + timing.repeats):
        args = () if setup is None else (setup(),)
        elapsed_s = run_time_s(fn, args, device)
        if index >= timing.warmup:
            times_s.append(elapsed_s)
    return Timed(statistics.median(times_s), spread_of(times_s))


def median_time_s(fn: Callable[..., Any], device: str, timing: Timing,
                  setup: Callable[[], Any] | None = None) -> float:
    """Median seconds of `fn()` (or `fn(setup())`) over `timing.repeats` runs after warm-up."""
    return timed(fn, device, timing, setup).median_s
