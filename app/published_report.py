"""The published suite's report folder: results.csv, memory.csv, fits.csv, README.md and
scatter.png, re-renderable from its CSVs and facts.json (`--render DIR`).

Per source: runs, mean and worst absolute step-time error of the leave-one-source-out
prediction, its median signed error (bias), the share of runs inside the 80% interval, and
the same error for the constant-MFU baseline fitted on the same folds, and the in-sample error
of the parameters fitted on the source alone.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from parasim.simulator.errors import SpecError
from parasim.simulator.files import atomic_open, save_figure, write_text_atomic

RESULTS, MEMORY, FITS = "results.csv", "memory.csv", "fits.csv"
COLUMNS = ("source", "generation", "job", "measured_s", "predicted_s", "baseline_s", "low_s",
           "high_s", "own_s")


def write_results(out: Path, held, memory_rows: list[dict], fit_rows: list[dict]) -> None:
    _write(out / RESULTS, COLUMNS, ([h.run.source, h.run.generation, h.run.job.source,
                                     h.run.measured_step_s, h.predicted_s, h.baseline_s,
                                     h.low_s, h.high_s, h.own_s] for h in held))
    _write(out / MEMORY, ("source", "label", "predicted_GiB", "measured_GiB"),
           ([r["source"], r["label"], r["predicted_GiB"], r["measured_GiB"]]
            for r in memory_rows))
    _write(out / FITS, ("label", "predicted_fits", "ran"),
           ([r["label"], r["predicted_fits"], r["ran"]] for r in fit_rows))


def _write(path: Path, header, rows) -> None:
    with atomic_open(path, force=True, field="--out", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        for row in rows:
            writer.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in row])


def _read(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    except OSError as err:
        raise SpecError("--render", str(path), f"cannot read: {err.strerror}",
                        "a folder written by parasim validate --suite published") from None


def source_table(rows: list[dict[str, str]]) -> list[dict]:
    """One entry per source (and the mean over sources): the errors of the report."""
    table = []
    for source in sorted({r["source"] for r in rows}):
        mine = [r for r in rows if r["source"] == source]
        m = np.array([float(r["measured_s"]) for r in mine])
        p = np.array([float(r["predicted_s"]) for r in mine])
        b = np.array([float(r["baseline_s"]) for r in mine])
        low = np.array([float(r["low_s"]) for r in mine])
        high = np.array([float(r["high_s"]) for r in mine])
        error = p / m - 1
        own = [float(r["own_s"]) for r in mine if r.get("own_s")]
        table.append({"source": source, "runs": len(mine),
                      "generations": ", ".join(sorted({r["generation"] for r in mine})),
                      "mean_abs": float(np.mean(np.abs(error))),
                      "worst": float(error[np.argmax(np.abs(error))]),
                      "median_signed": float(np.median(error)),
                      "coverage": float(np.mean((m >= low) & (m <= high))),
                      "baseline_mean_abs": float(np.mean(np.abs(b / m - 1))),
                      "own_mean_abs": float(np.mean(np.abs(np.array(own) / m - 1)))
                      if len(own) == len(mine) else None})
    return table


def summarize(table: list[dict], rows: list[dict[str, str]]) -> dict:
    """Mean over sources of each source's figures; the median signed error of all runs."""
    error = np.array([float(r["predicted_s"]) / float(r["measured_s"]) - 1 for r in rows])
    return {"sources": len(table), "runs": len(rows),
            "mean_per_source_error": float(np.mean([t["mean_abs"] for t in table])),
            "baseline_mean_per_source_error": float(np.mean([t["baseline_mean_abs"]
                                                             for t in table])),
            "median_signed_error": float(np.median(error)),
            "coverage": float(np.mean([t["coverage"] for t in table])),
            "own_mean_per_source_error": None if any(t["own_mean_abs"] is None for t in table)
            else float(np.mean([t["own_mean_abs"] for t in table]))}


def render(out: Path) -> dict:
    """README.md and scatter.png from the folder's CSVs and facts.json; the summary."""
    rows = _read(out / RESULTS)
    table = source_table(rows)
    summary = summarize(table, rows)
    facts = json.loads((out / "facts.json").read_text(encoding="utf-8"))
    lines = _readme(table, summary, facts, _read(out / MEMORY), _read(out / FITS))
    _scatter(rows, out / "scatter.png")
    write_text_atomic(out / "README.md", "\n".join(lines) + "\n", force=True, field="--out")
    return summary


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _readme(table, summary, facts, memory, fits) -> list[str]:
    lines = ["# Published measured runs: leave-one-source-out", "",
             f"Command: `{facts['command']}` ({facts['created']}, "
             f"{facts['elapsed_s']:.0f} s). Fitted per GPU generation: "
             f"{', '.join(facts['fitted'])}. Each source is predicted by the fit on the other "
             "sources; the baseline is one constant MFU per generation fitted on the same "
             "folds; the interval is the 80% band of the other sources' out-of-source "
             "residuals.", "",
             f"**Mean per-source step-time error {_pct(summary['mean_per_source_error'])}** "
             f"(constant-MFU baseline {_pct(summary['baseline_mean_per_source_error'])}), "
             f"median signed error {_pct(summary['median_signed_error'])}, 80% interval "
             f"coverage {_pct(summary['coverage'])} (mean over {summary['sources']} sources, "
             f"{summary['runs']} runs).", "",
             "| source | generation | runs | mean error | worst | median signed | in 80% "
             "interval | constant-MFU baseline | fitted on itself |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {t['source']} | {t['generations']} | {t['runs']} | {_pct(t['mean_abs'])} | "
              f"{_pct(t['worst'])} | {_pct(t['median_signed'])} | {_pct(t['coverage'])} | "
              f"{_pct(t['baseline_mean_abs'])} | {_own(t['own_mean_abs'])} |" for t in table]
    if summary["own_mean_per_source_error"] is not None:
        lines += ["", "Fitted on itself: each source predicted by the same parameters fitted "
                  "on its own runs alone (in-sample, not an accuracy; the fit's least squares "
                  "of log(measured / predicted), so a source with large misses can show a "
                  "lower mean error out of source). Where it stays high, the source has "
                  "structure these parameters cannot express, whatever they are fitted on. "
                  f"Mean over sources {_pct(summary['own_mean_per_source_error'])}."]
    lines += ["", "![predicted vs measured](scatter.png)", ""]
    lines += _memory_lines(memory) + _fit_lines(fits)
    if facts.get("skipped"):
        lines += ["", "Rows not used: " + ", ".join(f"{why} ({n})" for why, n in
                                                   sorted(facts["skipped"].items()))]
    return lines


def _own(x: float | None) -> str:
    return "not computed" if x is None else _pct(x)


def _memory_lines(memory) -> list[str]:
    if not memory:
        return ["Memory: no source in the corpus measured peak memory per GPU."]
    errors = [float(r["predicted_GiB"]) / float(r["measured_GiB"]) - 1 for r in memory]
    return [f"Memory (sources that measured it, {len(memory)} runs): mean absolute error "
            f"{_pct(float(np.mean(np.abs(errors))))}, median signed "
            f"{_pct(float(np.median(errors)))}."]


def _fit_lines(fits) -> list[str]:
    if not fits:
        return []
    right = sum((r["predicted_fits"] == "True") == (r["ran"] == "True") for r in fits)
    return ["", f"Hagemann et al. 2023, does it fit (ran vs out of memory): {right} of "
            f"{len(fits)} correct ({_pct(right / len(fits))})."]


def _scatter(rows, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7.5, 6.5))
    sources = sorted({r["source"] for r in rows})
    colours = plt.get_cmap("tab20")(np.linspace(0, 1, max(len(sources), 2)))
    for colour, source in zip(colours, sources):
        mine = [r for r in rows if r["source"] == source]
        axes.scatter([float(r["measured_s"]) for r in mine],
                     [float(r["predicted_s"]) for r in mine], s=10, color=colour, label=source)
    values = [float(r[k]) for r in rows for k in ("measured_s", "predicted_s")]
    span = [min(values) / 1.2, max(values) * 1.2]
    axes.plot(span, span, color="black", linewidth=0.8)
    axes.set(xscale="log", yscale="log", xlabel="measured step time (s)",
             ylabel="predicted, fitted without its source (s)",
             title="parasim vs published measured runs (leave-one-source-out)")
    axes.legend(fontsize=6, ncol=2, loc="upper left")
    figure.tight_layout()
    save_figure(figure, path, force=True, field="--out", dpi=120)
    plt.close(figure)
