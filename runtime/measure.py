"""What a run measured: step times and peak memory per rank, summarised into MEASUREMENT.json.

The trainer returns one `RankMeasurement` per rank; `measurement` checks them and
`Measurement.to_json` writes the file that `simulator.validation` diffs against the plan's
prediction. The step time of a step is the slowest rank's (the next step starts after every
rank's optimizer step, so the slowest rank is the step), and the run's step time is the
median over the timed steps, with p10/p90 as its spread: medians and deciles are robust to
the odd slow step a shared host produces, where a mean is not.

No torch here: reading and summarising a measurement needs none.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from parasim.runtime.errors import MeasurementError
from parasim.simulator.files import write_text_atomic

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class RankMeasurement:
    """One rank's measurement (built by the trainer inside the rank, pickled to the parent)."""

    step_times_s: tuple[float, ...]  # wall time of each timed step, in order (no warm-up)
    peak_bytes: float  # peak memory: CUDA max allocated, or on CPU the trainer's byte counter
    phase_s: dict[str, float]  # seconds per named phase (forward, backward, ...), mean per step
    memory_bytes: dict[str, float] = field(default_factory=dict)  # the peak's parts, by name
    losses: tuple[float, ...] = ()  # each timed step's mean loss; () on ranks without the head


@dataclass(frozen=True, kw_only=True)
class Spread:
    """Median and spread of the step time over the timed steps."""

    median_s: float
    p10_s: float
    p90_s: float
    min_s: float
    max_s: float

    @classmethod
    def of(cls, times_s: tuple[float, ...]) -> Spread:
        """Deciles interpolated between the samples (`statistics.quantiles`, inclusive)."""
        deciles = statistics.quantiles(times_s, n=10, method="inclusive") \
            if len(times_s) > 1 else [times_s[0]] * 9
        return cls(median_s=statistics.median(times_s), p10_s=deciles[0], p90_s=deciles[8],
                   min_s=min(times_s), max_s=max(times_s))


@dataclass(frozen=True, kw_only=True)
class Measurement:
    """A run of a plan: every rank's measurement and what the run was."""

    plan_path: str
    plan_sha256: str  # of the plan file's bytes: which plan this measures
    warmup_steps: int  # run before the timed steps, not in any time here
    ranks: tuple[RankMeasurement, ...]  # by rank
    emulation: dict[str, float] | None = None  # emulated network, measured rate included
    created: str = ""  # UTC, ISO 8601

    @property
    def step_times_s(self) -> tuple[float, ...]:
        """Per timed step, the slowest rank's time."""
        return tuple(max(step) for step in zip(*(r.step_times_s for r in self.ranks)))

    @property
    def step_time(self) -> Spread:
        return Spread.of(self.step_times_s)

    @property
    def losses(self) -> tuple[float, ...]:
        """Per timed step, the mean over the ranks that hold the loss (the last pipeline
        stage's: one per data-parallel replica, repeated over tp and cp), i.e. the loss of the
        step's whole global batch."""
        per_rank = [r.losses for r in self.ranks if r.losses]
        return tuple(statistics.fmean(step) for step in zip(*per_rank))

    @property
    def peak_bytes(self) -> float:
        return max(r.peak_bytes for r in self.ranks)

    def to_json(self) -> dict[str, Any]:
        spread = self.step_time
        return {
            "schema_version": SCHEMA_VERSION, "created": self.created,
            "plan": self.plan_path, "plan_sha256": self.plan_sha256,
            "world_size": len(self.ranks), "steps": len(self.step_times_s),
            "warmup_steps": self.warmup_steps,
            "step_time_s": spread.median_s,
            "step_time_spread_s": {"p10": spread.p10_s, "p90": spread.p90_s,
                                   "min": spread.min_s, "max": spread.max_s},
            "step_times_s": list(self.step_times_s),
            "peak_bytes": self.peak_bytes,
            "losses": list(self.losses),
            "ranks": [{"rank": rank, "step_times_s": list(r.step_times_s),
                       "losses": list(r.losses), "peak_bytes": r.peak_bytes,
                       "memory_bytes": dict(r.memory_bytes), "phase_s": dict(r.phase_s)}
                      for rank, r in enumerate(self.ranks)],
            "emulation": self.emulation,
            "host": host_facts(),
        }


def measurement(results: list[Any], *, plan_path: str | Path, steps: int, warmup_steps: int,
                emulation: dict[str, float] | None = None) -> Measurement:
    """The run's Measurement from the ranks' results; MeasurementError if a rank returned
    something else than a RankMeasurement of `steps` positive step times."""
    for rank, result in enumerate(results):
        _check_rank(rank, result, steps)
    return Measurement(plan_path=str(plan_path), plan_sha256=file_sha256(plan_path),
                       warmup_steps=warmup_steps, ranks=tuple(results), emulation=emulation,
                       created=datetime.now(timezone.utc).isoformat(timespec="seconds"))


def pooled(runs: list[Measurement]) -> Measurement:
    """Several runs of one plan as one measurement: each rank's timed steps in run order (a
    step's time stays the slowest rank's within its own run), its phases and memory parts the
    mean over the runs, its peak the largest; the emulated link's measured rate the mean. One
    run is returned as it is."""
    assert runs and len({len(run.ranks) for run in runs}) == 1, "runs of one plan"
    if len(runs) == 1:
        return runs[0]
    ranks = tuple(
        RankMeasurement(
            step_times_s=tuple(t for r in per_rank for t in r.step_times_s),
            peak_bytes=max(r.peak_bytes for r in per_rank),
            phase_s=_mean_dict([r.phase_s for r in per_rank]),
            memory_bytes=_mean_dict([r.memory_bytes for r in per_rank]),
            losses=tuple(loss for r in per_rank for loss in r.losses))
        for per_rank in zip(*(run.ranks for run in runs)))
    emulation = runs[0].emulation
    if emulation and "measured_inter_node_Gbps" in emulation:
        emulation = {**emulation, "measured_inter_node_Gbps": statistics.fmean(
            run.emulation["measured_inter_node_Gbps"] for run in runs)}
    return replace(runs[0], ranks=ranks, emulation=emulation)


def _mean_dict(parts: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.fmean(p[key] for p in parts) for key in parts[0]}


def _check_rank(rank: int, result: Any, steps: int) -> None:
    if not isinstance(result, RankMeasurement):
        raise MeasurementError(f"rank {rank} returned a {type(result).__name__}, not a "
                               "RankMeasurement")
    times = result.step_times_s
    if len(times) != steps or not all(t > 0 for t in times):
        raise MeasurementError(f"rank {rank} measured {len(times)} step times "
                               f"(min {min(times, default=0):g} s), not {steps} positive ones")


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def host_facts() -> dict[str, Any]:
    """Where the run ran (torch's version read from its metadata: no torch import)."""
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = None
    return {"host": platform.node(), "cpus": os.cpu_count(), "torch": torch_version,
            "python": platform.python_version()}


def write_measurement(path: str | Path, measured: Measurement, *, force: bool = False) -> None:
    """MEASUREMENT.json, atomically; an existing file only with `force` (SpecError naming
    --out otherwise, or when it cannot be written)."""
    write_text_atomic(path, json.dumps(measured.to_json(), indent=2) + "\n", force=force,
                      field="--out")
