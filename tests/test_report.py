"""The estimate's text (app/report.py): one unit of time per line, MoE drops shown, and the
plan's ties line only when layouts tied (issue 17, "honest text")."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from parasim.report import duration, durations, format_estimate, time_unit
from parasim.simulator.jobfile import job_from_mapping
from parasim.simulator.predict import predict
from tests.test_cli_errors import job_with, run_cli, write_job

UNIT = r"(?:ms|s|min|hours|days)\b"


def test_durations_of_one_line_share_the_largest_unit():
    assert durations(30.383, 156.0) == ["0.51 min", "2.6 min"]  # the interval
    assert durations(3.599, 0.69319, 0.00028) == ["3.599 s", "0.693 s", "0.00028 s"]
    assert durations(2.774, 1266.0, 606.0, like=1266.0) == ["0.046 min", "21.1 min", "10.1 min"]
    assert duration(0.64704) == "647.04 ms" and duration(8.461) == "8.461 s"
    assert duration(7.1 * 86400) == "7.1 days" and time_unit(7200.0)[1] == "hours"
    assert durations() == []


def _units(line: str) -> set[str]:
    return set(re.findall(r"\d " + UNIT, line))


def _unit_names(line: str) -> set[str]:
    return {u.split(" ")[1] for u in _units(line)}


def test_every_line_of_an_estimate_uses_one_unit_of_time():
    """Llama 3.1 405B on 16k H100s: step, interval, breakdown, whole run, failures and
    checkpoint lines each in one unit (the interval read "30.383 s to 2.6 min")."""
    result = run_cli("estimate", Path(__file__).resolve().parents[1]
                     / "examples/llama3.1-405b-16k-h100.yaml")
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    for key in ("interval", "breakdown", "whole", "failures", "checkpoint"):
        assert len(_unit_names(lines[key])) == 1, lines[key]


def _moe(**model):
    raw = {"model": {"base": "mixtral-8x7b", **model},
           "cluster": {"base": "dgx-h100", "num_nodes": 1},
           "training": {"seq_length": 4096, "global_batch_size": 16},
           "parallel": {"tp": 1, "ep": 8}}
    job = job_from_mapping(raw, base_dir=Path("."), source="t")
    return job, predict(job)


def test_moe_token_drops_are_in_the_text_when_there_are_any():
    job, p = _moe(router_skew=1.0, capacity_factor=1.0)
    assert p.dropped_token_fraction > 0
    text = format_estimate(job, p)
    assert f"experts     {p.dropped_token_fraction:.1%} of the routed tokens dropped: over " \
        "capacity factor 1 (router skew 1)" in text
    job, p = _moe()
    assert p.dropped_token_fraction == 0 and "dropped" not in format_estimate(job, p)


def test_plan_prints_no_ties_line_without_ties(tmp_path):
    """Every plan printed "ties not broken"; an uncalibrated profile never ties layouts, so
    the line says nothing and is left out (`plan --json` keeps the note)."""
    result = run_cli("plan", write_job(tmp_path, job_with()))
    assert result.returncode == 0, result.stderr
    assert "  ties " not in result.stdout and "not broken" not in result.stdout
    for line in result.stdout.splitlines():
        if line.strip().startswith("runner-up"):
            why = line.split(": ", 1)[1]
            assert len(_unit_names(why)) <= 1, line


@pytest.mark.parametrize("seconds, text", [(0.0, "0.00 ms"), (1e-6, "0.001 ms"),
                                           (119.0, "119.000 s"), (120.0, "2.0 min")])
def test_duration_edges(seconds, text):
    assert duration(seconds) == text
