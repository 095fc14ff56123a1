"""Baseline error of the UNCALIBRATED analytic model against public measured training runs.

Nothing is fitted: every job is built from the published row plus the assumptions stated in
`ASSUMPTIONS`, predicted once with the constants in `profiles/analytic.yaml`, and compared.

1. vTrain (Megatron-DeepSpeed on A100, ../shared/data/vtrain/): predicted step time vs the
   measured iteration time; MAPE, median / worst APE and signed bias per group, next to the
   8.37% / 14.73% MAPE vTrain reports for its own simulator on the same rows.
2. Hagemann et al. 2023 (LLaMA 13B/30B/65B, ../shared/data/hagemann2023/layouts.csv):
   predicted `fits` vs the measured ok / OOM Error label, and predicted vs measured MFU.

Run: python3 benchmarks/published_baseline.py [--data-dir ../shared/data]
Only the standard library and PyYAML (through `simulator`) are used.
"""

from __future__ import annotations

import argparse
import csv
import shlex
import statistics
import sys
import textwrap
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

REPO = Path(__file__).resolve().parents[1]

from parasim.simulator.cost.profile import analytic_profile
from parasim.simulator.datasets import vtrain
from parasim.simulator.datasets.published import (HAGEMANN_ASSUMPTIONS, HAGEMANN_FILE,
                                                  hagemann_flags, hagemann_job)
from parasim.simulator.datasets.vtrain import vtrain_job
from parasim.simulator.errors import SpecError
from parasim.simulator.jobfile import job_from_mapping
from parasim.simulator.predict import predict
from parasim.simulator.results import StepPrediction

DEFAULT_DATA_DIR = REPO.parent / "shared" / "data"
VTRAIN_FILES = vtrain.FILES
VTRAIN_PUBLISHED_MAPE = vtrain.PUBLISHED_MAPE_PCT  # vTrain's own simulator, data README
GiB = 2**30

# Hagemann: a global batch of 4M tokens (LLaMA-1's, Touvron et al. 2023 §2.2) for the second MFU
# comparison; 2048 sequences at 2k, 512 at 8k. An assumption, not in the spreadsheets.
ASSUMED_BATCH_TOKENS = 4 * 2**20

USABLE_MEMORY = "  Memory: usable = 80 GiB·0.95 - 1 GiB = 75.0 GiB (profiles/analytic.yaml)."

ASSUMPTIONS = "assumptions (stated, not fitted):\n" + textwrap.indent(vtrain.ASSUMPTIONS, "  ") \
    + "\n" + HAGEMANN_ASSUMPTIONS + "\n" + USABLE_MEMORY


# Reading -------------------------------------------------------------------------------------


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def check_data_dir(data_dir: Path) -> str | None:
    """None when every file is there, else the one-line reason."""
    if not data_dir.is_dir():
        return f"data dir {data_dir} not found; pass --data-dir (it holds vtrain/ and hagemann2023/)"
    for rel in (*VTRAIN_FILES.values(), HAGEMANN_FILE):
        if not (data_dir / rel).is_file():
            return f"{data_dir / rel} not found; pass --data-dir (it holds vtrain/ and hagemann2023/)"
    return None


# Jobs ----------------------------------------------------------------------------------------


def assumed_global_batch(row: dict[str, str]) -> int:
    return ASSUMED_BATCH_TOKENS // int(row["seq_len"])


# Predicting ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """One row: its prediction, or the SpecError that stopped it."""

    row: dict[str, str]
    prediction: StepPrediction | None
    error: SpecError | None


def run_rows(rows: Iterable[dict[str, str]], make_job: Callable[[dict[str, str]], dict]) -> list[Outcome]:
    """Predict every row; a SpecError is an outcome, anything else is a simulator bug (raised)."""
    out = []
    for row in rows:
        try:
            job = job_from_mapping(make_job(row), base_dir=REPO, source="published_baseline")
            out.append(Outcome(row, predict(job, profile=analytic_profile()), None))
        except SpecError as err:
            out.append(Outcome(row, None, err))
    return out


def spec_error_counts(outcomes: Iterable[Outcome]) -> Counter:
    """SpecErrors by message prefix: the field and the reason, without the value."""
    return Counter(f"{o.error.field}: {o.error.why}" for o in outcomes if o.error is not None)


# Statistics ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ErrorStats:
    """Relative errors (predicted / measured - 1) of a group of rows, in percent."""

    n: int
    mape: float
    median_ape: float
    worst_ape: float
    bias: float  # signed mean: negative = predictions too fast / too low

    @staticmethod
    def of(errors: list[float]) -> ErrorStats | None:
        if not errors:
            return None
        ape = [abs(e) for e in errors]
        return ErrorStats(n=len(errors), mape=100 * statistics.fmean(ape),
                          median_ape=100 * statistics.median(ape), worst_ape=100 * max(ape),
                          bias=100 * statistics.fmean(errors))


def relative_error(predicted: float, measured: float) -> float:
    return predicted / measured - 1


def vtrain_error(o: Outcome) -> float:
    assert o.prediction is not None
    return relative_error(o.prediction.step_time_s, vtrain.measured_step_s(o.row))


# vTrain report -------------------------------------------------------------------------------

STATS_HEADER = f"{'group':<28}{'rows':>5}{'SpecErr':>8}{'MAPE':>8}{'median':>8}{'worst':>8}{'bias':>8}"


def stats_line(label: str, outcomes: list[Outcome], error: Callable[[Outcome], float],
               extra: str = "") -> str:
    stats = ErrorStats.of([error(o) for o in outcomes if o.prediction is not None])
    failed = sum(o.error is not None for o in outcomes)
    if stats is None:
        return f"{label:<28}{len(outcomes):>5}{failed:>8}{'-':>8}{'-':>8}{'-':>8}{'-':>8}{extra}"
    return (f"{label:<28}{stats.n:>5}{failed:>8}{stats.mape:>7.1f}%{stats.median_ape:>7.1f}%"
            f"{stats.worst_ape:>7.1f}%{stats.bias:>+7.1f}%{extra}")


def vtrain_groups(kind: str, outcomes: list[Outcome]) -> list[tuple[str, list[Outcome]]]:
    def where(test):
        return [o for o in outcomes if test(o.row)]
    groups = [("  pp>1", where(lambda r: int(r["pipeline parallelism"]) > 1)),
              ("  pp=1", where(lambda r: int(r["pipeline parallelism"]) == 1)),
              ("  tp>1", where(lambda r: int(r["tensor parallelism"]) > 1)),
              ("  tp=1", where(lambda r: int(r["tensor parallelism"]) == 1))]
    if kind == "single":
        for h in sorted({int(o.row["hidden size"]) for o in outcomes}):
            groups.append((f"  hidden {h}", where(lambda r, h=h: int(r["hidden size"]) == h)))
        for mb in sorted({int(o.row["micro batch"]) for o in outcomes}):
            groups.append((f"  micro-batch {mb}", where(lambda r, mb=mb: int(r["micro batch"]) == mb)))
    else:
        for p in sorted({float(o.row["Parameters (billion)"]) for o in outcomes}):
            groups.append((f"  {p:g}B", where(lambda r, p=p: float(r["Parameters (billion)"]) == p)))
    return groups


SHARE_KEYS = (("compute", ("compute",)), ("tp", ("tp_comm",)), ("pp+bub", ("pp_comm", "bubble")),
              ("dp", ("dp_comm",)), ("optim", ("optimizer",)))


def component_shares(outcomes: list[Outcome]) -> dict[str, float]:
    """Mean share of the predicted step time per component, in percent."""
    shares = {name: [] for name, _ in SHARE_KEYS}
    for o in outcomes:
        if o.prediction is None:
            continue
        b = o.prediction.breakdown.as_dict()
        total = o.prediction.step_time_s
        for name, keys in SHARE_KEYS:
            shares[name].append(sum(b[k] for k in keys) / total)
    return {k: 100 * statistics.fmean(v) if v else 0.0 for k, v in shares.items()}


def vtrain_report(data_dir: Path) -> list[str]:
    lines = ["", "== 1. vTrain: predicted step_time_s vs measured iteration time "
             "(Megatron-DeepSpeed, A100) =="]
    lines.append(STATS_HEADER + f"{'vTrain':>8} |" + "".join(f"{name:>8}" for name, _ in SHARE_KEYS)
                 + "  <- share of predicted time")
    for kind, rel in VTRAIN_FILES.items():
        outcomes = run_rows(read_rows(data_dir / rel), vtrain_job)
        label = "single-node (2-8 GPUs)" if kind == "single" else "multi-node (64-512 GPUs)"
        groups = [(label, outcomes)] + vtrain_groups(kind, outcomes)
        for i, (name, group) in enumerate(groups):
            published = f"{VTRAIN_PUBLISHED_MAPE[kind]:>7.2f}%" if i == 0 else " " * 8
            shares = component_shares(group)
            lines.append(stats_line(name, group, vtrain_error, published + " |"
                                    + "".join(f"{shares[n]:>7.0f}%" for n, _ in SHARE_KEYS)))
        errors = spec_error_counts(outcomes)
        lines.append(f"  SpecErrors: {dict(errors) if errors else 'none'}")
        worst = sorted((o for o in outcomes if o.prediction), key=lambda o: -abs(vtrain_error(o)))[:3]
        for o in worst:
            r = o.row
            lines.append(f"  worst: {r['# GPUs']} GPUs h{r['hidden size']} L{r['# layers']} "
                         f"gbs {r['global batch']} mb {r['micro batch']} tp{r['tensor parallelism']} "
                         f"pp{r['pipeline parallelism']} dp{r['data parallelism']}: measured "
                         f"{float(r['iteration time (ms)']):.0f} ms, predicted "
                         f"{o.prediction.step_time_s * 1e3:.0f} ms ({100 * vtrain_error(o):+.0f}%)")
    lines.append("  (error = predicted/measured - 1; bias < 0: predicted faster than measured; vTrain = the "
                 "MAPE vTrain reports for its own simulator)")
    return lines


# Hagemann report -----------------------------------------------------------------------------


def memory_ratio(p: StepPrediction) -> float:
    """Worst rank's predicted peak over its usable memory (> 1: does not fit)."""
    return max(m.peak_bytes / m.capacity_bytes for m in p.stages)


def confusion(outcomes: list[Outcome]) -> Counter:
    """(measured status, predicted fits) counts."""
    return Counter((o.row["status"], o.prediction.fits) for o in outcomes if o.prediction)


def accuracy(table: Counter) -> float:
    right = table[("ok", True)] + table[("OOM Error", False)]
    total = sum(table.values())
    return 100 * right / total if total else float("nan")


def describe(row: dict[str, str]) -> str:
    _, sp, fa = hagemann_flags(row)
    return (f"{row['model_name'].split(' (')[0]:<9} s{row['seq_len']:<5} {row['num_gpus']:>3}gpu "
            f"tp{row['tp']} pp{row['pp']} dp{row['dp']} mb{row['micro_batch_size']} "
            f"rc:{row['recompute'].split(' ')[0]} {'sp' if sp else '--'} {'fa' if fa else 'nofa'}")


def memory_line(o: Outcome) -> str:
    p = o.prediction
    s = max(p.stages, key=lambda m: m.peak_bytes / m.capacity_bytes)
    return (f"    {describe(o.row):<58} peak {s.peak_bytes / GiB:5.1f} / {s.capacity_bytes / GiB:.1f} GiB "
            f"(w {s.weights_bytes / GiB:.1f} g {s.gradients_bytes / GiB:.1f} "
            f"o {s.optimizer_bytes / GiB:.1f} act {s.activations_bytes / GiB:.1f})")


def confusion_lines(table: Counter, indent: str = "  ") -> list[str]:
    return [f"{indent}{'':<16}{'measured ok':>12}{'measured OOM':>14}",
            f"{indent}{'predicted fits':<16}{table[('ok', True)]:>12}{table[('OOM Error', True)]:>14}",
            f"{indent}{'predicted OOM':<16}{table[('ok', False)]:>12}{table[('OOM Error', False)]:>14}",
            f"{indent}accuracy {accuracy(table):.1f}% of {sum(table.values())}"]


def with_bf16_gradients(row: dict[str, str]) -> dict[str, Any]:
    """Sensitivity only: 2-byte gradients instead of Megatron-LM's fp32 accumulation for bf16."""
    job = hagemann_job(row)
    job["training"]["grad_precision"] = "bf16"
    return job


def hagemann_memory_lines(outcomes: list[Outcome], skipped: Counter,
                          sensitivity: list[Outcome]) -> list[str]:
    lines = ["", "== 2a. Hagemann et al. 2023: predicted fits vs measured (ok = fits, OOM Error = does not) ==",
             f"  rows: {len(outcomes)} with status ok / OOM Error; skipped: "
             + ", ".join(f"{k} {v}" for k, v in sorted(skipped.items())),
             f"  SpecErrors: {dict(spec_error_counts(outcomes)) or 'none'}"]
    table = confusion(outcomes)
    lines += confusion_lines(table)
    lines.append(f"  {'by group':<40}{'rows':>5}{'acc':>7}{'OOM->fits':>11}{'ok->OOM':>9}")
    keys = sorted({(o.row["seq_len"], hagemann_flags(o.row)[0], hagemann_flags(o.row)[2]) for o in outcomes})
    for seq, rc, fa in keys:
        group = [o for o in outcomes if (o.row["seq_len"], *hagemann_flags(o.row)[::2]) == (seq, rc, fa)]
        t = confusion(group)
        label = f"seq {seq}, recompute {rc}, {'flash' if fa else 'no flash'}"
        lines.append(f"  {label:<40}{sum(t.values()):>5}{accuracy(t):>6.1f}%"
                     f"{t[('OOM Error', True)]:>11}{t[('ok', False)]:>9}")
    for tp in sorted({int(o.row["tp"]) for o in outcomes}):
        t = confusion([o for o in outcomes if int(o.row["tp"]) == tp])
        lines.append(f"  {f'tp {tp}':<40}{sum(t.values()):>5}{accuracy(t):>6.1f}%"
                     f"{t[('OOM Error', True)]:>11}{t[('ok', False)]:>9}")
    done = [o for o in outcomes if o.prediction]
    missed = sorted((o for o in done if o.row["status"] != "ok" and o.prediction.fits),
                    key=lambda o: memory_ratio(o.prediction))[:8]
    false_oom = sorted((o for o in done if o.row["status"] == "ok" and not o.prediction.fits),
                       key=lambda o: -memory_ratio(o.prediction))[:8]
    t = confusion(sensitivity)
    lines.append(f"  sensitivity, NOT the baseline: bf16 gradients (training.grad_precision) -> accuracy "
                 f"{accuracy(t):.1f}%: ok->OOM {t[('ok', False)]}, OOM->fits {t[('OOM Error', True)]}")
    lines.append("  worst: measured OOM, predicted fits (lowest predicted peak first)")
    lines += [memory_line(o) for o in missed]
    lines.append("  worst: measured ok, predicted OOM (highest predicted peak first)")
    lines += [memory_line(o) for o in false_oom]
    return lines


def mfu_error(o: Outcome) -> float:
    assert o.prediction is not None
    return relative_error(o.prediction.mfu, float(o.row["mfu_pct"]) / 100)


def time_error(o: Outcome) -> float:
    assert o.prediction is not None
    return relative_error(o.prediction.step_time_s, float(o.row["iteration_time_s"]))


def implied_global_batch(o: Outcome) -> float:
    """Sequences per step that make parasim's model FLOPs match the measured MFU and time."""
    p = o.prediction
    per_sequence = p.model_flop_per_step / (p.tokens_per_step / int(o.row["seq_len"]))
    measured_flop = float(o.row["mfu_pct"]) / 100 * p.peak_flop_per_s * float(o.row["iteration_time_s"])
    return measured_flop / per_sequence


def hagemann_mfu_lines(memory_outcomes: list[Outcome], rows_ok: list[dict[str, str]]) -> list[str]:
    lines = ["", "== 2b. Hagemann et al. 2023: predicted vs measured MFU (status ok, mfu_pct given) =="]
    lines.append(STATS_HEADER + "  (MFU error = pred/meas - 1)")
    ok = [o for o in memory_outcomes if o.row["status"] == "ok" and o.row["mfu_pct"]]
    pp1 = [o for o in ok if int(o.row["pp"]) == 1]
    ppn = [o for o in ok if int(o.row["pp"]) > 1]
    lines.append(stats_line("A: m = 2·pp, all rows", ok, mfu_error))
    lines.append(stats_line("A: m = 2·pp, pp=1 (m=2)", pp1, mfu_error))
    lines.append(stats_line("A: m = 2·pp, pp>1", ppn, mfu_error))
    divisible = [r for r in rows_ok if assumed_global_batch(r) % (int(r["micro_batch_size"]) * int(r["dp"])) == 0]
    assumed = run_rows(divisible, lambda r: hagemann_job(r, assumed_global_batch(r)))
    for label, test in (("all rows", lambda r: True), ("pp=1", lambda r: int(r["pp"]) == 1),
                        ("pp>1", lambda r: int(r["pp"]) > 1)):
        group = [o for o in assumed if test(o.row)]
        lines.append(stats_line(f"B: 4M-token batch, {label}", group, mfu_error))
    lines.append(stats_line("B: step time, 4M-token batch", assumed, time_error))
    lines.append(f"  B skipped {len(rows_ok) - len(divisible)} rows whose micro_batch·dp does not divide the "
                 f"assumed batch; SpecErrors: {dict(spec_error_counts(assumed)) or 'none'}")
    lines.append("  A: m = 2·pp micro-batches (the memory jobs): pp>1 rows carry a (pp-1)/(2pp) bubble and "
                 "every row pays its dp")
    lines.append("     all-reduce per 2·pp micro-batches: A's predicted MFU is pessimistic by construction, "
                 "its lower error is luck.")
    lines.append("  B: global batch 4M tokens (2048 x 2k / 512 x 8k sequences, LLaMA-1's) - an assumption.")
    lines.append("  measured MFU is the spreadsheet's 'Average MFU' (their FLOP formula, not stated);")
    lines.append("  implied batch = measured MFU x peak x time / parasim's model FLOPs per sequence:")
    sweeps = sorted({(o.row["model_name"].split(" (")[0], int(o.row["seq_len"]), int(o.row["num_gpus"]))
                     for o in ok})
    for sweep in sweeps:
        group = [implied_global_batch(o) for o in ok
                 if (o.row["model_name"].split(" (")[0], int(o.row["seq_len"]), int(o.row["num_gpus"])) == sweep]
        lines.append(f"    {sweep[0]:<9} seq {sweep[1]:>4} {sweep[2]:>3} GPUs: {len(group):>3} rows, implied "
                     f"global batch median {statistics.median(group):7.1f} (min {min(group):.1f}, "
                     f"max {max(group):.1f}) sequences")
    return lines


def hagemann_report(data_dir: Path) -> list[str]:
    rows = read_rows(data_dir / HAGEMANN_FILE)
    usable = [r for r in rows if r["status"] in ("ok", "OOM Error")]
    skipped = Counter(r["status"] for r in rows if r["status"] not in ("ok", "OOM Error"))
    outcomes = run_rows(usable, hagemann_job)
    rows_ok = [r for r in usable if r["status"] == "ok" and r["mfu_pct"]]
    sensitivity = run_rows(usable, with_bf16_gradients)
    return hagemann_memory_lines(outcomes, skipped, sensitivity) + hagemann_mfu_lines(outcomes, rows_ok)


# Main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                        help=f"folder with vtrain/ and hagemann2023/ (default {DEFAULT_DATA_DIR})")
    args = parser.parse_args(argv)
    problem = check_data_dir(args.data_dir)
    if problem:
        print(f"published_baseline: error: {problem}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    command = " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])
    print(f"$ {command}")
    print(f"data: {args.data_dir.resolve()}   model: analytic, UNCALIBRATED (profiles/analytic.yaml); "
          "nothing fitted")
    print(ASSUMPTIONS)
    for line in vtrain_report(args.data_dir) + hagemann_report(args.data_dir):
        print(line)
    print(f"\n({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
