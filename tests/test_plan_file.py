"""planner.plan.read_plan: what `parasim plan --out` writes reads back as the same job.

(The one-line errors of bad plan files are checked through `parasim run` in
tests/runtime/test_launch.py.)
"""

from __future__ import annotations

import pytest

from parasim.planner.plan import read_plan
from parasim.simulator.errors import SpecError
from tests.test_cli_errors import job_with, run_cli, write_job


def test_a_written_plan_reads_back(tmp_path):
    job_path = write_job(tmp_path, job_with())
    plan_path = tmp_path / "PLAN.json"
    result = run_cli("plan", job_path, "--out", plan_path)
    assert result.returncode == 0, result.stderr
    plan = read_plan(plan_path)
    raw, job = plan.job_mapping, plan.job
    assert raw["model"] == job_with()["model"] and raw["parallel"]["tp"] == job.layout.tp
    assert plan.objective == "time" and plan.path == plan_path
    assert job.layout.world_size == job.cluster.world_size == 16
    assert job.source == str(plan_path)


def test_estimate_reproduces_a_plan_file(tmp_path):
    """`parasim estimate PLAN.json` predicts the plan's layout: the plan's own prediction,
    and `--set` overrides apply to the plan's job."""
    import json

    job_path = write_job(tmp_path, job_with())
    plan_path = tmp_path / "PLAN.json"
    assert run_cli("plan", job_path, "--out", plan_path).returncode == 0
    planned = json.loads(plan_path.read_text())["prediction"]["step_time_s"]
    result = run_cli("estimate", plan_path, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["step_time_s"] == pytest.approx(planned, rel=1e-9)
    longer = run_cli("estimate", plan_path, "--json", "--set", "training.seq_length=8192")
    assert json.loads(longer.stdout)["step_time_s"] > planned


def test_a_missing_plan_file(tmp_path):
    with pytest.raises(SpecError, match="plan=.*cannot read"):
        read_plan(tmp_path / "nothing.json")
