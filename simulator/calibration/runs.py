"""Measured runs to calibrate against: reading a runs file, and the calibration / test split.

Two formats, told apart by their header:

- parasim: `job` (a job file, relative to the CSV) and `step_time_s` (the measured step), plus
  any number of override columns named like `--set` keys (`parallel.tp`,
  `training.global_batch_size`, ...) applied to the job; an empty cell overrides nothing.
- vTrain: the columns of ../shared/data/vtrain/*.csv (`simulator.datasets.vtrain`).

The split rule, fixed before any error was seen and never tuned: a run belongs to the
calibration half when the first byte of sha256 of its row (its cells joined by commas, in the
file's column order) is even, else to the test half. It depends on the row's contents only, not
on its position, the other rows or any prediction.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

from parasim.simulator.datasets import vtrain
from parasim.simulator.checks import require_number
from parasim.simulator.errors import SpecError
from parasim.simulator.job import Job
from parasim.simulator.jobfile import apply_override, job_from_mapping, load_raw

PARASIM_COLUMNS = ("job", "step_time_s")
SPLIT_RULE = ("calibration half: rows whose sha256 (cells joined by commas, in the file's "
              "column order) has an even first byte; test half: odd")
FORMATS = (f"a parasim runs file ({', '.join(PARASIM_COLUMNS)}, optional override columns "
           f"such as parallel.tp) or a vTrain file ({', '.join(vtrain.COLUMNS)})")


@dataclass(frozen=True)
class Run:
    """One measured run: its job (layout resolved) and its measured step time."""

    job: Job
    measured_step_s: float
    row: dict[str, str]  # the file's cells, for reports and subgroups
    digest: bytes  # sha256 of the row (the split rule)
    line: int  # line number in the file (the header is line 1)

    @property
    def in_calibration_half(self) -> bool:
        return self.digest[0] % 2 == 0


def row_digest(cells: list[str]) -> bytes:
    return hashlib.sha256(",".join(cells).encode("utf-8")).digest()


def split(runs: tuple[Run, ...]) -> tuple[tuple[Run, ...], tuple[Run, ...]]:
    """(calibration half, test half) by the module's split rule."""
    return (tuple(r for r in runs if r.in_calibration_half),
            tuple(r for r in runs if not r.in_calibration_half))


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_runs(path: str | Path) -> tuple[Run, ...]:
    """Every run of a runs file; SpecError naming the file, line and column of a bad cell."""
    path = Path(path)
    header, rows = _read_table(path)
    is_vtrain = any(c in header for c in (vtrain.TIME_COLUMN, "# GPUs"))
    required = vtrain.COLUMNS if is_vtrain else PARASIM_COLUMNS
    missing = [c for c in required if c not in header]
    if missing:
        raise SpecError("--runs", str(path), f"missing column {missing[0]!r}", FORMATS)
    if not rows:
        raise SpecError("--runs", str(path), "has no runs", "one run per line after the header")
    build = _vtrain_run if is_vtrain else _parasim_run
    return tuple(build(path, header, cells, line) for line, cells in rows)


def _read_table(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            table = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise SpecError("--runs", str(path), f"cannot read: {reason}", FORMATS) from None
    if not table:
        raise SpecError("--runs", str(path), "is empty", FORMATS)
    header = [c.strip() for c in table[0]]
    rows = [(line, cells) for line, cells in enumerate(table[1:], start=2) if any(cells)]
    for line, cells in rows:
        if len(cells) != len(header):
            raise SpecError(f"--runs {path.name}:{line}", ",".join(cells),
                            f"has {len(cells)} cells where the header has {len(header)}",
                            "one cell per column")
    return header, rows


def _positive(path: Path, line: int, column: str, text: str) -> float:
    """A cell that must hold a finite number > 0."""
    field = f"--runs {path.name}:{line}.{column}"
    try:
        return require_number(field, float(text), 0, above=True)
    except (ValueError, SpecError):  # text, NaN, infinite, <= 0: the cell as written
        raise SpecError(field, text, "must be a positive number", "a number > 0") from None


def _job(path: Path, line: int, raw: dict, base_dir: Path) -> Job:
    """The run's job with its layout resolved; a SpecError names the line."""
    try:
        job = job_from_mapping(raw, base_dir=base_dir, source=f"{path.name}:{line}")
    except SpecError as err:
        raise SpecError(f"--runs {path.name}:{line}: {err.field}", err.value, err.why,
                        err.valid) from None
    if job.layout is None:
        raise SpecError(f"--runs {path.name}:{line}", "parallel", "the run's job has no layout",
                        "a parallel section in the job, or parallel.* columns")
    return job


def _vtrain_run(path: Path, header: list[str], cells: list[str], line: int) -> Run:
    row = dict(zip(header, cells))
    for column in vtrain.COLUMNS:
        _positive(path, line, column, row[column])
    for column in vtrain.COLUMNS[:-1]:  # counts and sizes are whole numbers
        if float(row[column]) != int(float(row[column])):
            raise SpecError(f"--runs {path.name}:{line}.{column}", row[column],
                            "must be a whole number", "an integer > 0")
    row = {k: (str(int(float(v))) if k in vtrain.COLUMNS[:-1] else v) for k, v in row.items()}
    job = _job(path, line, vtrain.vtrain_job(row), path.parent)
    return Run(job, vtrain.measured_step_s(row), row, row_digest(cells), line)


def _parasim_run(path: Path, header: list[str], cells: list[str], line: int) -> Run:
    row = dict(zip(header, cells))
    measured = _positive(path, line, "step_time_s", row["step_time_s"])
    job_path = path.parent / row["job"]
    try:
        raw = load_raw(job_path)
        for column, text in row.items():
            if column not in PARASIM_COLUMNS and text.strip():
                apply_override(raw, f"{column}={text}")
    except SpecError as err:
        raise SpecError(f"--runs {path.name}:{line}: {err.field}", err.value, err.why,
                        err.valid) from None
    return Run(_job(path, line, raw, job_path.parent), measured, row, row_digest(cells), line)
