"""The public Python API (`import parasim`): the README's example runs as printed, and each
function gives what the command line gives for the same input."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas
import pytest

import parasim

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "llama3-70b-dgx-h100.yaml"


def readme_python_example() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    exec(compile(readme_python_example(), "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "MFU" in out and "parallel.micro_batch_size" in out


def test_public_names_are_documented():
    for name in parasim.__all__:
        value = getattr(parasim, name)
        assert value.__doc__, name
    with pytest.raises(AttributeError):
        parasim.no_such_name  # noqa: B018


def test_estimate_equals_the_command():
    command = subprocess.run([sys.executable, "-m", "parasim", "estimate", str(EXAMPLE),
                              "--json"], capture_output=True, text=True, timeout=120)
    assert command.returncode == 0, command.stderr
    expected = json.loads(command.stdout)["step_time_s"]
    assert parasim.estimate(parasim.load_job(EXAMPLE)).step_time_s == expected


def test_load_job_takes_a_mapping_and_overrides():
    mapping = {"model": "llama3-8b", "cluster": {"base": "dgx-h100", "num_nodes": 1},
               "training": {"seq_length": 4096, "global_batch_size": 16},
               "parallel": {"tp": 2}}
    job = parasim.load_job(mapping, ["parallel.tp=4"])
    assert job.layout.tp == 4 and mapping["parallel"]["tp"] == 2  # the mapping is not changed
    with pytest.raises(parasim.SpecError, match="parallel.tp"):
        parasim.load_job(mapping, ["parallel.tp=3"])


def test_plan_holds_the_fixed_fields_and_writes_a_file_run_reads(tmp_path):
    job = parasim.load_job({"model": "llama3-8b",
                            "cluster": {"base": "dgx-h100", "num_nodes": 1},
                            "training": {"seq_length": 4096, "global_batch_size": 16},
                            "parallel": {"tp": 2}})
    plan = parasim.plan(job, top=2)
    assert isinstance(plan, parasim.Plan) and plan.job.layout.tp == 2
    assert plan.result is not None and plan.result.chosen.prediction is plan.prediction
    written = parasim.write_plan(plan, tmp_path / "plan.json")
    assert written.job.layout == plan.job.layout and written.path == tmp_path / "plan.json"
    with pytest.raises(parasim.SpecError, match="exists"):
        parasim.write_plan(plan, tmp_path / "plan.json")
    with pytest.raises(parasim.SpecError, match="--top"):
        parasim.plan(job, top=0)


def test_sweep_reports_invalid_combinations_in_its_table():
    job = parasim.load_job(EXAMPLE)
    table = parasim.sweep(job, {"parallel.tp": [3, 8]})
    assert list(table["parallel.tp"]) == [3, 8]
    assert "does not divide" in table["error"][0] and pandas.isna(table["error"][1])
    assert table["step_time_s"][1] == parasim.estimate(job).step_time_s
