"""simulator.validation and its report: errors, summary, Spearman, results.csv, rendering.

Pure (no torch): a fixed small set of results, every number worked out by hand here; the
report is rendered from the data alone, and a failed job is listed, never averaged.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from parasim.simulator.errors import SpecError
from parasim.simulator.validation import (
    JobResult,
    average_ranks,
    read_results,
    relative_error,
    results_csv,
    spearman,
    summarize,
)
from parasim.simulator.validation_report import (RunFacts, read_facts, render_report, summary_lines,
                                         write_report)

MiB = 2**20


def measured(name: str, predicted_s: float, measured_s: float, predicted_mib: float,
             measured_mib: float) -> JobResult:
    return JobResult(name=name, layout=f"layout of {name}", predicted_step_s=predicted_s,
                     predicted_peak_bytes=predicted_mib * MiB, analytic_share=0.0,
                     predicted_parts_s={"compute": predicted_s * 0.9,
                                        "dp_comm": predicted_s * 0.1},
                     measured_step_s=measured_s, measured_p10_s=measured_s * 0.95,
                     measured_p90_s=measured_s * 1.05, measured_peak_bytes=measured_mib * MiB,
                     measured_phases_s={"forward": measured_s / 3, "backward": measured_s / 2,
                                        "grad_sync": measured_s / 6},
                     other_load_cores=0.05, machine_speed=0.97)


RESULTS = [
    measured("a", 1.10, 1.00, 90, 100),   # step +10 %, memory -10 %
    measured("b", 1.80, 2.00, 50, 50),    # step -10 %, memory 0
    measured("c", 3.30, 3.00, 120, 100),  # step +10 %, memory +20 %
    JobResult(name="d", layout="tp 2", predicted_step_s=0.5, predicted_peak_bytes=10 * MiB,
              failure="rank 1 raised RuntimeError: boom"),
]
FACTS = RunFacts(command="parasim validate --suite local", created="2026-11-22T00:00:00+00:00",
                 suite="local", suite_description="a test suite", host="test", cpu="a CPU",
                 cores=2, torch="2.13.0+cpu", python="3.11.7", profile="profiles/x",
                 profile_threads=1, profile_quick=True, profile_date="2026-11-22",
                 threads_per_rank=1, steps=5, warmup_steps=2, load_before=(0.1, 0.2, 0.3),
                 load_after=(0.4, 0.5, 0.6), notes=("a note",))


def test_relative_error_is_signed_against_the_measurement():
    assert relative_error(1.1, 1.0) == pytest.approx(0.1)
    assert relative_error(0.9, 1.0) == pytest.approx(-0.1)


def test_average_ranks_share_ties():
    assert average_ranks([10, 30, 20, 30]).tolist() == [1.0, 3.5, 2.0, 3.5]


def test_spearman_by_hand():
    """x ranks 1..5, y ranks 2 1 4 3 5: d = (1, 1, 1, 1, 0), sum d² = 4, n = 5:
    rho = 1 - 6·4 / (5·24) = 0.8 (Spearman's formula without ties)."""
    assert spearman([1, 2, 3, 4, 5], [20, 10, 40, 30, 50]) == pytest.approx(0.8)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_spearman_with_ties_is_pearson_of_average_ranks():
    """Ranks x = (1, 2.5, 2.5, 4), y = (1, 2, 3, 4): centred (-1.5, 0, 0, 1.5) and
    (-1.5, -0.5, 0.5, 1.5); covariance 4.5, norms sqrt(4.5) and sqrt(5): 4.5 / sqrt(22.5)."""
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(22.5))


def test_spearman_agrees_with_scipy():
    stats = pytest.importorskip("scipy.stats")
    x, y = [0.3, 1.2, 0.9, 0.9, 2.0, 0.1, 1.5], [0.2, 1.0, 1.3, 0.8, 1.9, 0.3, 1.4]
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)


def test_spearman_undefined_cases():
    assert math.isnan(spearman([1.0], [2.0]))
    assert math.isnan(spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))


def test_summary_of_the_fixed_results():
    s = summarize(RESULTS)
    assert (s.measured, s.failed) == (3, 1)
    assert s.mean_step_error == pytest.approx(0.1)
    assert s.worst_step_error == pytest.approx(0.1)
    assert s.mean_memory_error == pytest.approx(0.1)  # (10 + 0 + 20) / 3 %
    assert (s.worst_memory_error, s.worst_memory_job) == (pytest.approx(0.2), "c")
    assert s.spearman == pytest.approx(1.0)  # a < b < c both ways
    assert s.machine_speeds == (0.97, 0.97, 0.97)
    assert summary_lines(s)[-1] == ("machine speed before the jobs against the profile: 0.97 "
                                    "to 0.97 (1.00: as fast as when profiled)")


def test_a_failed_job_has_no_error_and_is_not_averaged():
    failed = RESULTS[3]
    assert not failed.measured and failed.step_error is None and failed.memory_error is None
    assert summarize(RESULTS[:3]).mean_step_error == summarize(RESULTS).mean_step_error


def test_nothing_measured_summarizes_to_nan():
    s = summarize(RESULTS[3:])
    assert math.isnan(s.mean_step_error) and math.isnan(s.spearman) and s.worst_step_job == ""


def test_results_csv_round_trip(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text(results_csv(RESULTS), encoding="utf-8")
    assert read_results(path) == RESULTS


def test_results_csv_missing_column(tmp_path):
    path = tmp_path / "results.csv"
    text = results_csv(RESULTS).replace("measured_step_s,", "measured_time,", 1)
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SpecError, match="measured_step_s.*missing"):
        read_results(path)


def test_results_csv_row_without_numbers_or_reason(tmp_path):
    path = tmp_path / "results.csv"
    lines = results_csv(RESULTS[:1]).splitlines()
    cells = lines[1].split(",")
    cells[lines[0].split(",").index("measured_step_s")] = ""
    path.write_text("\n".join([lines[0], ",".join(cells)]) + "\n", encoding="utf-8")
    with pytest.raises(SpecError, match=r"results.csv:2.measured_step_s"):
        read_results(path)


def test_report_is_rendered_from_data_alone(tmp_path):
    write_report(tmp_path, RESULTS, FACTS)
    assert {p.name for p in tmp_path.iterdir()} >= {"README.md", "results.csv", "facts.json",
                                                    "scatter.png"}
    assert (tmp_path / "scatter.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    readme = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert "Produced by `parasim validate --suite local`" in readme
    assert "step time: mean |error| 10.0%, worst 10.0% (a)" in readme
    assert "Spearman 1.00 over 3 measured jobs" in readme
    assert "| a | layout of a | 1.100 | 1.000 (0.950-1.050) | +10.0% | 90.0 | 100.0 | -10.0% |" \
        in readme
    assert "| d | tp 2 | 0.500 | failed: rank 1 raised RuntimeError: boom | - |" in readme
    assert "(No analysis yet" in readme
    assert read_facts(tmp_path / "facts.json") == FACTS


def test_a_calibrated_report_shows_the_uncalibrated_prediction_beside_it(tmp_path):
    """With a fitted profile, each row also says what the measured profile alone predicted,
    and the summary gives both errors: what the calibration changed is on the page."""
    results = [replace(r, uncalibrated_step_s=r.measured_step_s * 0.8) if r.measured else r
               for r in RESULTS]
    summary = summarize(results)
    assert summary.uncalibrated_mean_step_error == pytest.approx(0.2)
    assert summary.uncalibrated_spearman == pytest.approx(1.0)
    facts = replace(FACTS, fitted_profile="reports/local-calibration/fitted")
    write_report(tmp_path, results, facts)
    assert read_results(tmp_path / "results.csv") == results
    assert read_facts(tmp_path / "facts.json") == facts
    readme = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert "without the fitted profile (the measured profile alone): step time mean |error| " \
        "20.0%, Spearman 1.00" in readme
    assert "| a | layout of a | 1.100 | 1.000 (0.950-1.050) | +10.0% | 0.800 | -20.0% | 90.0 |" \
        in readme
    assert "fitted profile: `reports/local-calibration/fitted`" in readme
    assert "without the fitted profile" not in "\n".join(summary_lines(summarize(RESULTS)))


def test_render_includes_the_analysis_and_survives_a_rerender(tmp_path):
    write_report(tmp_path, RESULTS, FACTS)
    (tmp_path / "analysis.md").write_text("The errors are compute.\n", encoding="utf-8")
    before = (tmp_path / "results.csv").read_text(encoding="utf-8")
    summary = render_report(tmp_path)
    assert summary.measured == 3
    assert "The errors are compute." in (tmp_path / "README.md").read_text(encoding="utf-8")
    assert (tmp_path / "results.csv").read_text(encoding="utf-8") == before


def test_facts_missing_a_key(tmp_path):
    data = asdict(FACTS)
    del data["command"]
    (tmp_path / "facts.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(SpecError, match="missing key 'command'"):
        read_facts(tmp_path / "facts.json")


def test_render_of_a_folder_without_results(tmp_path):
    with pytest.raises(SpecError, match="has no results.csv"):
        render_report(Path(tmp_path))
