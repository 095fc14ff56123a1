"""`parasim profile`: measure this machine's op and collective times into a profile folder.

Writes the tables of profiles/README.md (gemm.csv, attention.csv, elementwise.csv,
optimizer.csv, collectives.csv) and, last, meta.json: a folder without meta.json is not a
profile. The tables are staged inside the folder as each completes and moved into place when
all are (`simulator.files.staged_folder`): an interrupted profile, a full disk or a refused
one leaves the folder as it was.

A busy host makes entries many times slow: each table (but collectives) is checked for
entries whose runs spread or whose sizes are out of order, and those are measured again
(`runtime.stability`). Entries that still disagree are a warning (stderr and meta.json's
notes); too many, or one too far off, and the profile is refused unless `keep_unsteady`
(`--force`).

    profile(device="cpu", quick=True, out_dir="/tmp/cpu-quick")

The grids (`runtime.grids`) and the timing (`runtime.timing.Timing`) are parameters, so tests
can run a tiny profile in seconds.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from parasim import profiles
from parasim.runtime import attention_bench, collectives_bench, elementwise_bench, gemm_bench
from parasim.runtime import optimizer_bench
from parasim.runtime.device_info import check_device, default_dtype, meta, torch_dtype
from parasim.runtime.grids import Grids, default_grids, default_timing
from parasim.runtime.progress import Progress
from parasim.runtime.tasks import Row, Task, nominal_rates
from parasim.runtime.stability import SHAPES, Verdict, recheck
from parasim.runtime.timing import Timing
from parasim.simulator.errors import SpecError
from parasim.simulator.files import make_folder, staged_folder

TABLE_COLUMNS = {
    "gemm": gemm_bench.COLUMNS,
    "attention": attention_bench.COLUMNS,
    "elementwise": elementwise_bench.COLUMNS,
    "optimizer": optimizer_bench.COLUMNS,
    "collectives": collectives_bench.COLUMNS,
}
META_FILE = "meta.json"


@dataclass(frozen=True)
class ProfileResult:
    """What `profile` wrote."""

    out_dir: Path
    rows: dict[str, int]  # rows per table file written
    elapsed_s: float
    notes: list[str] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)  # how steady each checked table was


def default_out_dir(device: str, dtype: str, quick: bool) -> Path:
    """measured/<device>-<dtype>[-quick] in the user's parasim folder ($PARASIM_HOME or
    ~/.parasim), where `--profile NAME` finds it again."""
    return profiles.home() / "measured" / f"{device}-{dtype}{'-quick' if quick else ''}"


def prepare_out_dir(out_dir: str | Path, force: bool = False) -> Path:
    """Create `out_dir`; refuse one that is not empty unless `force` (SpecError)."""
    path = check_out_dir(out_dir, force)
    return make_folder(path, field="--out")


def check_out_dir(out_dir: str | Path, force: bool = False) -> Path:
    """`out_dir` as a Path, refused (SpecError) when it is a file, or a folder with files in
    it and not `force`."""
    path = Path(out_dir)
    if path.exists() and not path.is_dir():
        raise SpecError("--out", str(path), "exists and is not a folder",
                        "a new or empty folder")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise SpecError("--out", str(path), "exists and is not empty; refusing to overwrite it "
                        "(nothing is lost)", "a new or empty folder, or --force to overwrite "
                        "its tables")
    return path


def check_threads(threads: int | None) -> None:
    """SpecError unless `threads` is None or a thread count this machine has cores for."""
    if threads is None:
        return
    cores = os.cpu_count() or 1
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= cores:
        raise SpecError("--threads", threads, f"is not a thread count for this machine's "
                        f"{cores} cores", f"1 to {cores}")


@contextmanager
def thread_count(threads: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to `threads` inside, restored after (None: kept)."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def build_tasks(grids: Grids, device: str, dtype: torch.dtype, timing: Timing,
                collective_timeout_s: float | None = None) -> list[Task]:
    """Every measurement of the profile, table by table."""
    rates = nominal_rates(device)
    return (
        gemm_bench.gemm_tasks(grids.gemm_m, grids.gemm_n, grids.gemm_k, device, dtype, timing,
                              rates)
        + attention_bench.attention_tasks(grids.attention_seq_lengths,
                                          grids.attention_head_dims, grids.attention_batch,
                                          grids.attention_heads, device, dtype, timing, rates)
        + elementwise_bench.elementwise_tasks(grids.elementwise_kernels,
                                              grids.elementwise_elements, grids.row_elements,
                                              grids.vocab, device, dtype, timing, rates)
        + optimizer_bench.optimizer_tasks(grids.optimizer_params, device, timing, rates)
        + collectives_bench.collective_tasks(usable_group_sizes(grids, device),
                                             grids.collective_bytes, grids.collectives, device,
                                             dtype, timing, rates, collective_timeout_s)
    )


def usable_group_sizes(grids: Grids, device: str) -> tuple[int, ...]:
    """Group sizes this machine can run: on CUDA one GPU per process."""
    if device != "cuda":
        return grids.collective_group_sizes
    return tuple(n for n in grids.collective_group_sizes if n <= torch.cuda.device_count())


def grid_notes(grids: Grids, device: str, dtype: str) -> list[str]:
    """The facts of the measurement that the tables' columns do not carry."""
    notes = [
        f"elementwise: rows of {grids.row_elements} elements (hidden); embedding table of "
        f"{grids.vocab} rows; cross_entropy logits rows of {grids.vocab} (fp32); copy backward "
        "= a copy of the gradient",
        "optimizer: torch.optim.AdamW defaults (foreach), fp32 parameters in tensors of at "
        f"most {optimizer_bench.CHUNK_PARAMS} elements",
        f"attention: causal, batch {grids.attention_batch}, heads {grids.attention_heads} "
        "(kv heads = heads), PyTorch's default SDPA backend",
    ]
    skipped = sorted(set(grids.collective_group_sizes) - set(usable_group_sizes(grids, device)))
    if skipped:
        notes.append(f"collectives: group sizes {skipped} skipped: only "
                     f"{torch.cuda.device_count()} GPU(s), one per process")
    if device == "cuda" and dtype == "fp32":
        notes.append(f"fp32 matmuls: allow_tf32={torch.backends.cuda.matmul.allow_tf32}")
    return notes


def write_table(path: Path, columns: tuple[str, ...], rows: list[Row]) -> None:
    """One CSV (into the staging folder): the header, then one line per row (times to 6
    significant digits)."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row[column]) for column in columns])


def _cell(value: object) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def run_tasks(tasks: list[Task], out_dir: Path, bar: Progress
              ) -> tuple[dict[str, int], list[str], list[Verdict]]:
    """Run the tasks in order; when a table's last task is done, measure its suspect entries
    again (`runtime.stability`) and write it."""
    counts, notes, verdicts = {}, [], []
    for table, group in itertools.groupby(tasks, key=lambda task: task.table):
        rows, sources = [], []
        for task in group:
            result = _run(task, bar)
            rows += result.rows
            notes += result.notes
            sources += [task if len(result.rows) == 1 else None] * len(result.rows)
        if table in SHAPES:
            rows, verdict = recheck(table, rows, SHAPES[table],
                                    lambda index: _again(sources[index], bar))
            verdicts.append(verdict)
        write_table(out_dir / f"{table}.csv", TABLE_COLUMNS[table], rows)
        counts[table] = len(rows)
    return counts, notes, verdicts


def _run(task: Task, bar: Progress):
    bar.show(task.label, force=True)
    result = task.run(lambda fraction, label: bar.show(label, fraction * task.weight_s))
    bar.advance(task.weight_s, task.label)
    return result


def _again(task: Task | None, bar: Progress) -> Row | None:
    """The one row of a task measured again (None for a task of several rows)."""
    if task is None:
        return None
    bar.show(f"again: {task.label}", force=True)
    return task.run(lambda fraction, label: None).rows[0]


def profile(device: str = "cpu", dtype: str | None = None, quick: bool = False,
            out_dir: str | Path | None = None, progress: bool | None = None, *,
            force: bool = False, grids: Grids | None = None, timing: Timing | None = None,
            collective_timeout_s: float | None = None, threads: int | None = None,
            keep_unsteady: bool = False) -> ProfileResult:
    """Measure every table on `device` in `dtype` and write them with meta.json to `out_dir`.

    `progress`: draw the bar on stderr (None: when stderr is a terminal). `grids` and `timing`
    default to those of `device` and `quick`. `threads`: torch's intra-op threads while timing
    the ops (None: torch's default), recorded in meta.json; a run's ranks each compute with
    cores / ranks threads (`runtime.train.threads_per_rank`), so a profile that predicts them
    must be measured at that count. Raises SpecError on bad input (before measuring), on a
    host too unsteady to profile (unless `keep_unsteady`: then a warning) and when the folder
    cannot be written; runtime.errors.MeasurementError when a benchmark process fails. The
    folder is written whole or not at all.
    """
    check_device(device)
    check_threads(threads)
    dtype = dtype or default_dtype(device)
    resolved = torch_dtype(dtype)
    path = check_out_dir(out_dir or default_out_dir(device, dtype, quick), force)
    grids = grids or default_grids(device, quick)
    timing = timing or default_timing(device, quick)
    tasks = build_tasks(grids, device, resolved, timing, collective_timeout_s)
    enabled = sys.stderr.isatty() if progress is None else progress
    bar = Progress(sum(task.weight_s for task in tasks), enabled)
    start_s = time.monotonic()
    with staged_folder(path, force=force, field="--out", marker=META_FILE) as staging:
        try:
            with thread_count(threads):
                counts, notes, verdicts = run_tasks(tasks, staging, bar)
                info = meta(device, dtype, quick, timing.warmup, timing.repeats, [])
        except BaseException:
            bar.stop()
            raise
        bar.close("profile measured")
        notes = list(dict.fromkeys(grid_notes(grids, device, dtype) + notes
                                   + judge(verdicts, path, keep_unsteady)))
        info["notes"] = notes
        (staging / META_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return ProfileResult(path, counts, time.monotonic() - start_s, notes, verdicts)


def judge(verdicts: list[Verdict], path: Path, keep_unsteady: bool) -> list[str]:
    """The notes on how steady the host was; a warning on stderr for a table with unsteady
    entries; SpecError when one is refused, unless `keep_unsteady`."""
    refused = [v for v in verdicts if v.refused]
    if refused and not keep_unsteady:
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        raise SpecError("profile", str(path), "the host was too busy to profile: "
                        + "; ".join(v.line() for v in refused) + f" (load average {load} on "
                        f"{os.cpu_count()} cores); nothing written",
                        "profile again on an idle host, or --force to keep these tables")
    notes = []
    for verdict in verdicts:
        if not verdict.steady or verdict.changed or verdict.out_of_order:
            notes.append(f"steadiness: {verdict.line()}")
        if not verdict.steady:
            print(f"parasim: warning: {verdict.line()}" + (
                "; kept (--force)" if verdict.refused else ""), file=sys.stderr, flush=True)
    return notes
