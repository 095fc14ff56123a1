"""`parasim validate` end to end on a 2-job suite of a tiny model (slow: it runs ranks).

The profile is a tiny one made here (the quick profile takes minutes), so most costs are
analytic and the numbers mean nothing; what is checked is the contract: one line per job and
the summary printed, the report folder complete, every number finite, the plans readable by
`parasim run`, and the report re-renderable from its data.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import yaml

torch = pytest.importorskip("torch")

from parasim.planner.plan import read_plan  # noqa: E402  (after the importorskip)
from parasim.runtime.profiler import profile  # noqa: E402
from parasim.simulator.validation import read_results  # noqa: E402
from tests.test_cli_errors import REPO  # noqa: E402
from tests.test_profiler import TINY, TINY_TIMING  # noqa: E402

SUITE = {
    "description": "two layouts of a tiny model",
    "models": {"tiny": {"num_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
                        "num_kv_heads": 2, "ffn_hidden_size": 128, "vocab_size": 256}},
    "training": {"seq_length": 64, "global_batch_size": 4, "precision": "fp32"},
    "jobs": [{"name": "dp2", "model": "tiny", "parallel": {"dp": 2}},
             {"name": "tp2", "model": "tiny", "parallel": {"tp": 2}}],
}


@pytest.mark.slow
def test_a_two_job_suite_end_to_end(tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump(SUITE))
    profile("cpu", None, False, tmp_path / "profile", False, grids=TINY, timing=TINY_TIMING,
            threads=1)
    assert json.loads((tmp_path / "profile" / "meta.json").read_text())["threads"] == 1
    out = tmp_path / "report"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "parasim", "validate", "--suite", str(suite), "--profile",
         str(tmp_path / "profile"), "--steps", "2", "--warmup", "1", "--repeat", "2",
         "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:4]] == [
        "[run 1/2, 1/2] dp2", "[run 1/2, 2/2] tp2", "[run 2/2, 1/2] dp2", "[run 2/2, 2/2] tp2"]
    assert lines[4] == "pooled over the runs:" and lines[5].startswith("  dp2: predicted ")
    assert any(line.startswith("step time: mean |error| ") for line in lines)
    assert {"README.md", "results.csv", "facts.json", "scatter.png", "plans",
            "measurements"} <= {p.name for p in out.iterdir()}
    rows = read_results(out / "results.csv")
    assert [r.name for r in rows] == ["dp2", "tp2"] and all(r.measured for r in rows)
    for r in rows:
        assert r.predicted_step_s > 0 and r.measured_step_s > 0 and r.measured_peak_bytes > 0
        assert all(math.isfinite(v) for v in (r.predicted_step_s, r.measured_step_s,
                                              r.step_error, r.predicted_peak_bytes,
                                              r.measured_peak_bytes, r.memory_error))
    pooled = json.loads((out / "measurements" / "tp2.json").read_text())
    assert pooled["steps"] == 4 and all(len(r["step_times_s"]) == 4 for r in pooled["ranks"])
    assert json.loads((out / "facts.json").read_text())["repeats"] == 2
    plan = read_plan(out / "plans" / "tp2.json")
    assert plan.job.layout.tp == 2 and plan.job_mapping["cluster"]["gpu"]["name"] == "cpu"
    (out / "README.md").unlink()
    rendered = subprocess.run([sys.executable, "-m", "parasim", "validate", "--render",
                               str(out)], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=60)
    assert rendered.returncode == 0 and (out / "README.md").is_file(), rendered.stderr

    # The loop closed: the report's runs.csv calibrates the model, the fitted profile predicts.
    # (Its step times are replaced by predicted + 50 ms, which a fitted step overhead matches
    # exactly: two noisy runs of a tiny model would give no bounded interval.)
    runs = (out / "runs.csv").read_text().splitlines()
    assert runs == ["job,step_time_s"] + [f"jobs/{r.name}.json,{r.measured_step_s!r}"
                                          for r in rows]
    (out / "runs.csv").write_text("\n".join(
        ["job,step_time_s"] + [f"jobs/{r.name}.json,{r.predicted_step_s + 0.05!r}"
                               for r in rows]) + "\n")
    fitted = tmp_path / "fitted"
    calibrated = subprocess.run(
        [sys.executable, "-m", "parasim", "calibrate", "--runs", str(out / "runs.csv"),
         "--profile", str(tmp_path / "profile"), "--params", "overhead.step_s",
         "--out", str(fitted)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert calibrated.returncode == 0, calibrated.stderr
    fit = yaml.safe_load((fitted / "profile.yaml").read_text())["fit"]
    assert fit["measured_profile"] == str(tmp_path / "profile") and fit["runs_used"] == 2
    again = tmp_path / "again"
    result = subprocess.run(
        [sys.executable, "-m", "parasim", "validate", "--suite", str(suite), "--profile",
         str(tmp_path / "profile"), "--profile", str(fitted), "--steps", "1", "--warmup", "0",
         "--out", str(again)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "without the fitted profile (the measured profile alone)" in result.stdout
    assert fit["parameters"][0]["value"] == pytest.approx(0.05, rel=1e-3)
    for before, after in zip(rows, read_results(again / "results.csv")):
        assert after.uncalibrated_step_s == pytest.approx(before.predicted_step_s)
        assert after.predicted_step_s == pytest.approx(before.predicted_step_s + 0.05, rel=1e-3)
    assert json.loads((again / "facts.json").read_text())["fitted_profile"] == str(fitted)
