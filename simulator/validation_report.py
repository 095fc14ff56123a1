"""The validation report: README.md, results.csv, facts.json and scatter.png in one folder.

Rendered from data alone (results.csv, facts.json and an optional hand-written analysis.md),
so `parasim validate --render DIR` rebuilds README.md and scatter.png anywhere, without torch
(DESIGN.md: reports are re-renderable). matplotlib is imported only to draw.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from parasim.simulator.errors import SpecError
from parasim.simulator.files import make_folder, save_figure, write_text_atomic
from parasim.simulator.validation import JobResult, Summary, read_results, results_csv, summarize

MiB = 2**20
RESULTS, FACTS, README, SCATTER, ANALYSIS = ("results.csv", "facts.json", "README.md",
                                             "scatter.png", "analysis.md")
TARGET_STEP_ERROR = 0.10  # issue 7's acceptance: mean step-time error under 10 %
TARGET_SPEARMAN = 0.8  # ... and the measured order of layouts matching the predicted one


@dataclass(frozen=True, kw_only=True)
class RunFacts:
    """How the results were produced: enough to run it again and to judge the numbers."""

    command: str  # the exact command line
    created: str  # UTC, ISO 8601
    suite: str
    suite_description: str
    host: str
    cpu: str
    cores: int
    torch: str
    python: str
    profile: str  # the profile folder used
    profile_threads: int | None  # torch threads the profile was measured at
    profile_quick: bool | None
    profile_date: str
    threads_per_rank: int
    steps: int  # timed steps per job
    warmup_steps: int
    load_before: tuple[float, float, float]  # host load averages (1, 5, 15 min) at the start
    load_after: tuple[float, float, float]  # ... and at the end
    notes: tuple[str, ...] = ()  # facts of single jobs (emulated link rates, skips)
    repeats: int = 1  # interleaved runs of the suite whose timed steps are pooled
    fitted_profile: str | None = None  # the `parasim calibrate` folder the predictions used


def write_facts(path: Path, facts: RunFacts, field: str = "--out") -> None:
    """facts.json, atomically (over an earlier one: the report folder was checked)."""
    write_text_atomic(path, json.dumps(asdict(facts), indent=2) + "\n", force=True, field=field)


def read_facts(path: Path) -> RunFacts:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise SpecError("--render", str(path), f"cannot read: {err}",
                        "a facts.json written by parasim validate") from None
    names = {f.name for f in fields(RunFacts)}
    optional = ("notes", "repeats", "fitted_profile")
    missing = sorted(n for n in names if n not in data and n not in optional)
    if missing:
        raise SpecError("--render", str(path), f"missing key {missing[0]!r}",
                        "a facts.json written by parasim validate")
    data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in names}
    return RunFacts(**data)


# Text ----------------------------------------------------------------------------------------


def percent(value: float | None, signed: bool = True) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:+.1%}" if signed else f"{value:.1%}"


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def mebibytes(value: float | None) -> str:
    return "-" if value is None else f"{value / MiB:.1f}"


def summary_lines(summary: Summary) -> list[str]:
    """The headline numbers, as printed and as the README states them."""
    spearman = "-" if math.isnan(summary.spearman) else f"{summary.spearman:.2f}"
    speeds = summary.machine_speeds
    return [
        f"step time: mean |error| {percent(summary.mean_step_error, False)}, worst "
        f"{percent(summary.worst_step_error, False)} ({summary.worst_step_job or '-'}); "
        f"target under {TARGET_STEP_ERROR:.0%}",
        f"memory: mean |error| {percent(summary.mean_memory_error, False)}, worst "
        f"{percent(summary.worst_memory_error, False)} ({summary.worst_memory_job or '-'})",
        f"ranking of layouts by step time: Spearman {spearman} over {summary.measured} "
        f"measured jobs (target above {TARGET_SPEARMAN}); {summary.failed} without a "
        "measurement",
    ] + ([f"without the fitted profile (the measured profile alone): step time mean |error| "
          f"{percent(summary.uncalibrated_mean_step_error, False)}, Spearman "
          f"{_two_places(summary.uncalibrated_spearman)}"]
         if not math.isnan(summary.uncalibrated_mean_step_error) else []) \
        + ([f"machine speed before the jobs against the profile: {min(speeds):.2f} to "
            f"{max(speeds):.2f} (1.00: as fast as when profiled)"] if speeds else [])


def _two_places(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.2f}"


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def results_table(results: list[JobResult]) -> str:
    """Predicted vs measured, one row per job; a job without a measurement says why."""
    header = ["job", "layout", "predicted s", "measured s (p10-p90)", "error", "predicted MiB",
              "measured MiB", "error", "analytic share", "other load", "machine speed"]
    uncalibrated = any(r.uncalibrated_step_s is not None for r in results)
    if uncalibrated:
        header[5:5] = ["uncalibrated s", "error"]
    rows = []
    for r in results:
        spread = "" if r.measured_p10_s is None else \
            f" ({r.measured_p10_s:.3f}-{r.measured_p90_s:.3f})"
        measured = f"{seconds(r.measured_step_s)}{spread}" if r.measured else \
            f"failed: {r.failure.replace('|', '/')}"
        row = [r.name, r.layout, seconds(r.predicted_step_s), measured,
               percent(r.step_error), mebibytes(r.predicted_peak_bytes),
               mebibytes(r.measured_peak_bytes), percent(r.memory_error),
               percent(r.analytic_share, False), _two_places(r.other_load_cores),
               _two_places(r.machine_speed)]
        if uncalibrated:
            row[5:5] = [seconds(r.uncalibrated_step_s), percent(r.uncalibrated_step_error)]
        rows.append(row)
    return _markdown(header, rows)


PHASE_NOTE = ("Seconds per step, predicted / measured (mean per step on the busiest rank, the "
              "one with the most forward + backward time, whose step the predicted breakdown "
              "describes): forward + backward (TP, CP and EP communication runs inside "
              "them) against compute and exposed TP/CP/EP communication; pipeline waits against "
              "bubble + pipeline sends; gradient reduction against exposed DP communication; "
              "the optimizer step against the optimizer.")


def phase_table(results: list[JobResult]) -> str:
    """Where each step's time went, predicted against measured (PHASE_NOTE)."""
    pairs = (("fwd+bwd", ("compute", "tp_comm", "cp_comm", "ep_comm"), ("forward", "backward")),
             ("pipeline wait", ("bubble", "pp_comm"), ("p2p_wait",)),
             ("grad sync", ("dp_comm",), ("grad_sync",)),
             ("optimizer", ("optimizer",), ("optimizer",)))
    header = ["job"] + [f"{name} pred / meas" for name, _, _ in pairs]
    rows = []
    for r in results:
        if not r.measured or not r.measured_phases_s:
            continue
        cells = [r.name]
        for _, predicted, measured in pairs:
            p = sum((r.predicted_parts_s or {}).get(k, 0.0) for k in predicted)
            m = sum(r.measured_phases_s.get(k, 0.0) for k in measured)
            cells.append(f"{p:.3f} / {m:.3f}")
        rows.append(cells)
    return _markdown(header, rows)


def readme(results: list[JobResult], facts: RunFacts, analysis: str | None) -> str:
    summary = summarize(results)
    machine = (f"{facts.cpu}, {facts.cores} cores, host `{facts.host}`; torch {facts.torch}, "
               f"Python {facts.python}")
    profile = (f"`{facts.profile}` (measured {facts.profile_date}, {facts.profile_threads} "
               f"thread(s), {'quick' if facts.profile_quick else 'full'} grids)")
    load = (f"{'/'.join(f'{x:.2f}' for x in facts.load_before)} before, "
            f"{'/'.join(f'{x:.2f}' for x in facts.load_after)} after (1/5/15-minute averages, "
            "the ranks' own load included; the other-load column is the rest)")
    parts = [
        f"# Validation: suite `{facts.suite}`", "",
        f"Produced by `{facts.command}` on {facts.created}.", "",
        facts.suite_description, "",
        "## Summary", "", *[f"- {line}" for line in summary_lines(summary)], "",
        "## Predicted vs measured", "",
        "Step time: median over the timed steps of the slowest rank's step. Memory: the "
        "largest rank's parameter, gradient and optimizer buffers plus the peak of the tensors "
        "autograd saved. Error = (predicted - measured) / measured. Analytic share: the part of "
        "the predicted step not from the measured profile. Other load: cores that other processes "
        "kept busy while the job ran (mean; `app/host_load.py`): time they took from the "
        "ranks, which own one core each. Machine speed: how fast probe kernels ran just before "
        "the job against the profile (1.00 as profiled, 0.90 10% slower; "
        "`runtime/speed_probe.py`): drift of the machine itself, reported, not corrected.", "",
        results_table(results), "", f"![predicted vs measured]({SCATTER})", "",
        "## Where the time went", "", PHASE_NOTE, "", phase_table(results), "",
        "## What the errors say", "",
        analysis.strip() if analysis else f"(No analysis yet: write `{ANALYSIS}` in this folder "
        f"and re-render with `parasim validate --render <this folder>`.)", "",
        "## Machine and inputs", "",
        f"- machine: {machine}", f"- profile: {profile}",
        *([f"- fitted profile: `{facts.fitted_profile}` (`parasim calibrate` over the measured "
           "profile: the predicted column uses it, the uncalibrated one the measured profile "
           "alone)"] if facts.fitted_profile else []),
        f"- ranks: {facts.threads_per_rank} torch thread(s) each; {facts.steps} timed steps "
        f"after {facts.warmup_steps} warm-up steps per job"
        + (f" and run, in {facts.repeats} interleaved runs of the suite (each job's timed "
           "steps pooled)" if facts.repeats > 1 else ""),
        f"- host load: {load}",
        *[f"- {note}" for note in facts.notes], "",
        f"Data: `{RESULTS}` (every number above), `{FACTS}`; the plans and measurements in "
        "`plans/` and `measurements/`, and the profile in `profile/` when this run measured "
        "it. Re-render without torch: `parasim validate --render <this folder>`.", "",
    ]
    return "\n".join(parts)


# Scatter -------------------------------------------------------------------------------------


def scatter_png(results: list[JobResult], path: Path, field: str = "--out") -> None:
    """Predicted against measured step time and memory, one point per measured job, on the
    identity line's log-log axes with the +-10 % band."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ok = [r for r in results if r.measured]
    figure = Figure(figsize=(11, 5), layout="constrained")
    FigureCanvasAgg(figure)
    panels = (("step time (s)", [(r.measured_step_s, r.predicted_step_s, r.name) for r in ok]),
              ("peak memory (MiB)", [(r.measured_peak_bytes / MiB, r.predicted_peak_bytes / MiB,
                                      r.name) for r in ok if r.measured_peak_bytes]))
    for index, (what, points) in enumerate(panels, start=1):
        _panel(figure.add_subplot(1, 2, index), what, points)
    save_figure(figure, path, force=True, field=field)


def _panel(axes, what: str, points: list[tuple[float, float, str]]) -> None:
    from matplotlib.ticker import FormatStrFormatter

    axes.set_title(f"{what}: predicted vs measured")
    axes.set_xlabel(f"measured {what}")
    axes.set_ylabel(f"predicted {what}")
    if not points:
        axes.text(0.5, 0.5, "nothing measured", ha="center", transform=axes.transAxes)
        return
    values = [v for x, y, _ in points for v in (x, y)]
    low, high = min(values) / 1.3, max(values) * 1.3
    axes.plot([low, high], [low, high], color="black", linewidth=1, label="predicted = measured")
    for factor in (1 - TARGET_STEP_ERROR, 1 + TARGET_STEP_ERROR):
        axes.plot([low, high], [low * factor, high * factor], color="grey", linestyle="--",
                  linewidth=0.8)
    axes.scatter([x for x, _, _ in points], [y for _, y, _ in points], zorder=3)
    for x, y, name in points:
        axes.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    axes.set_xscale("log")
    axes.set_yscale("log")
    for axis in (axes.xaxis, axes.yaxis):  # 0.6, 0.8, 1 rather than 6 x 10^-1
        axis.set_major_formatter(FormatStrFormatter("%g"))
        axis.set_minor_formatter(FormatStrFormatter("%g"))
    axes.set_xlim(low, high)
    axes.set_ylim(low, high)
    axes.legend(loc="upper left", fontsize=8, title=f"dashed: +-{TARGET_STEP_ERROR:.0%}",
                title_fontsize=8)


# The folder ----------------------------------------------------------------------------------


def write_report(folder: Path, results: list[JobResult], facts: RunFacts) -> None:
    """results.csv and facts.json (the data), then scatter.png and README.md from them, each
    file atomically and README.md, the folder's marker, last."""
    make_folder(folder, field="--out")
    write_text_atomic(folder / RESULTS, results_csv(results), force=True, field="--out")
    write_facts(folder / FACTS, facts)
    render_report(folder, field="--out")


def render_report(folder: Path, field: str = "--render") -> Summary:
    """scatter.png, then README.md (last), from the folder's results.csv, facts.json and
    analysis.md; SpecError naming `field` if one cannot be written."""
    if not (folder / RESULTS).is_file():
        raise SpecError("--render", str(folder), f"has no {RESULTS}",
                        "a report folder written by parasim validate")
    results = read_results(folder / RESULTS)
    facts = read_facts(folder / FACTS)
    analysis_path = folder / ANALYSIS
    analysis = analysis_path.read_text(encoding="utf-8") if analysis_path.is_file() else None
    scatter_png(results, folder / SCATTER, field)
    write_text_atomic(folder / README, readme(results, facts, analysis), force=True, field=field)
    return summarize(results)
