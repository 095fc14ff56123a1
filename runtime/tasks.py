"""A unit of profiling work: one table row (or one multi-process run), with a cost estimate.

The estimate (`weight_s`, seconds at nominal device rates) only spreads the progress bar over
the work: a 2048³ GEMM moves the bar more than a 64³ one. A uniform error in the nominal rates
cancels in the bar's fraction and in its estimate of the time left (elapsed / fraction).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Row = dict[str, Any]
Tick = Callable[[float, str], None]  # (fraction of this task done, label): partial progress


@dataclass(frozen=True)
class TaskResult:
    """What one task measured."""

    rows: list[Row]
    notes: list[str] = field(default_factory=list)  # facts for meta.json's "notes"


@dataclass(frozen=True)
class Task:
    """One entry of the profile: `run(tick)` measures it."""

    table: str  # CSV file stem: gemm, attention, elementwise, optimizer, collectives
    label: str  # what the progress bar shows while it runs
    weight_s: float  # estimated seconds (nominal rates)
    run: Callable[[Tick], TaskResult]


@dataclass(frozen=True, kw_only=True)
class Rates:
    """Nominal device rates for the work estimates (not measurements)."""

    flop_per_s: float
    bytes_per_s: float
    call_s: float  # fixed cost of one timed call (launch, Python, autograd)

    def estimate_s(self, calls: int, flop: float = 0.0, moved_bytes: float = 0.0) -> float:
        return calls * (flop / self.flop_per_s + moved_bytes / self.bytes_per_s + self.call_s)


def nominal_rates(device: str) -> Rates:
    if device == "cuda":
        return Rates(flop_per_s=4e14, bytes_per_s=2e12, call_s=2e-5)
    return Rates(flop_per_s=1.5e11, bytes_per_s=5e9, call_s=5e-5)


def size_text(size: int) -> str:
    """2^20 for powers of two (the grids' usual sizes), else the number."""
    return f"2^{size.bit_length() - 1}" if size > 0 and size & (size - 1) == 0 else str(size)


def row_task(table: str, label: str, weight_s: float, measure: Callable[..., Row],
             *args: Any) -> Task:
    """A task that measures one row with `measure(*args)`."""
    return Task(table, label, weight_s, lambda tick: TaskResult([measure(*args)]))
