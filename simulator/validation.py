"""Predicted against measured: relative errors, their mean and worst, and the rank correlation.

`parasim validate` runs a suite of jobs, each predicted (`simulator.predict`) and measured
(`parasim run`), and keeps one `JobResult` per job. This module is the arithmetic of the
comparison and the results table (`results.csv`), from which the report
(`simulator.validation_report`) is rendered again without torch (DESIGN.md, reports/).

Errors are signed relative errors, (predicted - measured) / measured: +10 % means the model
predicts 10 % too slow (too much memory). The summary is the mean absolute percentage error
(MAPE) and the worst absolute one, over the jobs that were measured; failed jobs are listed,
never averaged. How well the model orders layouts is Spearman's rank correlation between the
predicted and the measured step times (Spearman 1904).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from parasim.simulator.errors import SpecError

# Phases the trainer times (runtime.train, mean seconds per step, busiest rank) and the
# predicted components they are compared with (simulator.results.TimeBreakdown).
MEASURED_PHASES = ("forward", "backward", "p2p_wait", "grad_sync", "optimizer")
PREDICTED_PARTS = ("compute", "tp_comm", "cp_comm", "ep_comm", "pp_comm", "bubble", "dp_comm",
                   "optimizer", "straggler")


@dataclass(frozen=True, kw_only=True)
class JobResult:
    """One job of a suite: its prediction, and its measurement or why there is none."""

    name: str  # the suite's name of the job, e.g. pp2-1f1b
    layout: str  # the layout in words, e.g. "pp 2, 1f1b, 4 micro-batches"
    predicted_step_s: float | None  # simulator.predict's step time (None: no prediction)
    predicted_peak_bytes: float | None  # the busiest rank's predicted memory
    analytic_share: float = 0.0  # share of the predicted step from the analytic fallback
    predicted_parts_s: dict[str, float] | None = None  # the breakdown, by PREDICTED_PARTS
    measured_step_s: float | None = None  # median over timed steps of the slowest rank
    measured_p10_s: float | None = None  # spread of the step times
    measured_p90_s: float | None = None
    measured_peak_bytes: float | None = None  # the largest rank's counted bytes
    measured_phases_s: dict[str, float] | None = None  # by MEASURED_PHASES, the busiest rank
    other_load_cores: float | None = None  # cores other processes kept busy during the run
    machine_speed: float | None = None  # profiled / current time of probe kernels before it
    uncalibrated_step_s: float | None = None  # predicted by the measured profile alone, when
    # the prediction above also used a fitted profile (`parasim calibrate`)
    failure: str = ""  # one line: why this job has no measurement ("" if it has one)

    def __post_init__(self) -> None:
        complete = None not in (self.predicted_step_s, self.predicted_peak_bytes,
                                self.measured_step_s)
        assert complete or self.failure, f"{self.name}: no numbers and no failure reason"

    @property
    def measured(self) -> bool:
        return not self.failure

    @property
    def step_error(self) -> float | None:
        if not self.measured:
            return None
        return relative_error(self.predicted_step_s, self.measured_step_s)

    @property
    def uncalibrated_step_error(self) -> float | None:
        if not self.measured or self.uncalibrated_step_s is None:
            return None
        return relative_error(self.uncalibrated_step_s, self.measured_step_s)

    @property
    def memory_error(self) -> float | None:
        if not self.measured or self.measured_peak_bytes is None:
            return None
        return relative_error(self.predicted_peak_bytes, self.measured_peak_bytes)


def relative_error(predicted: float, measured: float) -> float:
    """(predicted - measured) / measured: signed, positive when the prediction is too high."""
    assert measured > 0, measured
    return (predicted - measured) / measured


# Summary -------------------------------------------------------------------------------------


def average_ranks(values: list[float] | np.ndarray) -> np.ndarray:
    """Ranks 1..n of `values`, ties sharing the mean of the ranks they span (Spearman 1904;
    the usual tie correction, as scipy.stats.rankdata(method="average"))."""
    x = np.asarray(values, dtype=float)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    start = 0
    while start < len(x):
        end = start
        while end + 1 < len(x) and x[order[end + 1]] == x[order[start]]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation: Pearson's correlation of the average ranks (C. Spearman,
    "The proof and measurement of association between two things", Am. J. Psychol. 15(1),
    1904). NaN with fewer than two pairs or when either side is constant (no order to match)."""
    assert len(x) == len(y), (len(x), len(y))
    if len(x) < 2:
        return math.nan
    rx, ry = average_ranks(x), average_ranks(y)
    dx, dy = rx - rx.mean(), ry - ry.mean()
    norm = math.sqrt(float(dx @ dx) * float(dy @ dy))
    return math.nan if norm == 0 else float(dx @ dy) / norm


@dataclass(frozen=True, kw_only=True)
class Summary:
    """The suite in a few numbers (absolute errors as fractions: 0.1 = 10 %)."""

    measured: int  # jobs with a measurement
    failed: int  # jobs without one
    mean_step_error: float  # MAPE of the step time; NaN when nothing was measured
    worst_step_error: float
    worst_step_job: str
    mean_memory_error: float
    worst_memory_error: float
    worst_memory_job: str
    spearman: float  # predicted vs measured step times, over the measured jobs
    machine_speeds: tuple[float, ...] = ()  # of the measured jobs that probed it
    uncalibrated_mean_step_error: float = math.nan  # MAPE without the fitted profile (if any)
    uncalibrated_spearman: float = math.nan


def summarize(results: list[JobResult]) -> Summary:
    ok = [r for r in results if r.measured]
    step = [(abs(r.step_error), r.name) for r in ok]
    memory = [(abs(r.memory_error), r.name) for r in ok if r.memory_error is not None]
    worst_step = max(step, default=(math.nan, ""))
    worst_memory = max(memory, default=(math.nan, ""))
    plain = [r for r in ok if r.uncalibrated_step_s is not None]
    return Summary(
        measured=len(ok), failed=len(results) - len(ok),
        mean_step_error=_mean([e for e, _ in step]),
        worst_step_error=worst_step[0], worst_step_job=worst_step[1],
        mean_memory_error=_mean([e for e, _ in memory]),
        worst_memory_error=worst_memory[0], worst_memory_job=worst_memory[1],
        spearman=spearman([r.predicted_step_s for r in ok], [r.measured_step_s for r in ok]),
        machine_speeds=tuple(r.machine_speed for r in ok if r.machine_speed is not None),
        uncalibrated_mean_step_error=_mean([abs(r.uncalibrated_step_error) for r in plain]),
        uncalibrated_spearman=spearman([r.uncalibrated_step_s for r in plain],
                                       [r.measured_step_s for r in plain]),
    )


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


# results.csv ---------------------------------------------------------------------------------

SCALAR_COLUMNS = tuple(f.name for f in fields(JobResult)
                       if f.name not in ("predicted_parts_s", "measured_phases_s"))
COLUMNS = SCALAR_COLUMNS + tuple(f"predicted_{p}_s" for p in PREDICTED_PARTS) \
    + tuple(f"measured_{p}_s" for p in MEASURED_PHASES)
REQUIRED = ("name", "layout", "predicted_step_s", "predicted_peak_bytes", "measured_step_s",
            "failure")
TEXT_COLUMNS = ("name", "layout", "failure")


def results_csv(results: list[JobResult]) -> str:
    """The table, one row per job: every field, phases and parts in their own columns; a
    missing number is an empty cell."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in results:
        cells = {name: getattr(r, name) for name in SCALAR_COLUMNS}
        cells.update({f"predicted_{p}_s": (r.predicted_parts_s or {}).get(p)
                      for p in PREDICTED_PARTS})
        cells.update({f"measured_{p}_s": (r.measured_phases_s or {}).get(p)
                      for p in MEASURED_PHASES})
        writer.writerow([_cell(cells[c]) for c in COLUMNS])
    return out.getvalue()


def _cell(value: object) -> str:
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def read_results(path: str | Path) -> list[JobResult]:
    """The rows of a results.csv (`results_csv`); SpecError naming a missing column or a cell
    that is not a number."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise SpecError("results", str(path), f"cannot read: {err.strerror}",
                        "a results.csv written by parasim validate") from None
    rows = list(csv.DictReader(io.StringIO(text)))
    header = rows[0].keys() if rows else next(csv.reader(io.StringIO(text)), [])
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise SpecError(f"{path}: column", missing[0], "missing", ", ".join(REQUIRED))
    return [_row(row, line, str(path)) for line, row in enumerate(rows, start=2)]


def _row(row: dict[str, str], line: int, path: str) -> JobResult:
    def number(column: str) -> float | None:
        text = (row.get(column) or "").strip()
        if not text:
            return None
        try:
            return float(text)
        except ValueError:
            raise SpecError(f"{path}:{line}.{column}", text, "is not a number",
                            "a number or an empty cell") from None

    failure = row.get("failure") or ""
    for column in ("predicted_step_s", "predicted_peak_bytes", "measured_step_s"):
        if not failure and number(column) is None:
            raise SpecError(f"{path}:{line}.{column}", "", "is empty, and the row gives no "
                            "failure reason", "a number, or a reason in the failure column")
    parts = {p: number(f"predicted_{p}_s") for p in PREDICTED_PARTS}
    phases = {p: number(f"measured_{p}_s") for p in MEASURED_PHASES}
    return JobResult(
        name=row["name"], layout=row.get("layout") or "",
        predicted_step_s=number("predicted_step_s"),
        predicted_peak_bytes=number("predicted_peak_bytes"),
        analytic_share=number("analytic_share") or 0.0,
        predicted_parts_s={p: v for p, v in parts.items() if v is not None} or None,
        measured_step_s=number("measured_step_s"),
        measured_p10_s=number("measured_p10_s"), measured_p90_s=number("measured_p90_s"),
        measured_peak_bytes=number("measured_peak_bytes"),
        measured_phases_s={p: v for p, v in phases.items() if v is not None} or None,
        other_load_cores=number("other_load_cores"), machine_speed=number("machine_speed"),
        uncalibrated_step_s=number("uncalibrated_step_s"), failure=failure)
