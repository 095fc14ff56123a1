"""`parasim estimate` on bad economics and reliability input: exit status 2, one line naming
the field (the contract of tests/test_cli_errors.py, whose helpers run the real CLI). Also
the whole-run JSON and the Monte Carlo flag end to end."""

from __future__ import annotations

import json

import pytest

from tests.test_cli_errors import assert_user_error, estimate

TOKENS = {"training.tokens": 1e10}


@pytest.mark.parametrize("changes,field", [
    ({"cluster.node_mtbf_hours": 0}, "cluster.node_mtbf_hours"),
    ({"cluster.node_mtbf_hours": -100}, "cluster.node_mtbf_hours"),
    ({"cluster.gpu_mtbf_hours": -1}, "cluster.gpu_mtbf_hours"),
    ({"cluster.price_per_gpu_hour": 0}, "cluster.price_per_gpu_hour"),
    ({"cluster.reserved_price_per_gpu_hour": -2}, "cluster.reserved_price_per_gpu_hour"),
    ({"cluster.power_watts": 0}, "cluster.power_watts"),
    ({"cluster.gpu": {"base": "h100-sxm", "tdp_watts": -700}}, "cluster.gpu.tdp_watts"),
    ({"cluster.gpu": {"base": "h100-sxm", "idle_watts": -5}}, "cluster.gpu.idle_watts"),
    ({"cluster.host_power_watts_per_gpu": -1}, "cluster.host_power_watts_per_gpu"),
    ({"cluster.checkpoint_write_GBps_per_node": 0}, "cluster.checkpoint_write_GBps_per_node"),
    ({"cluster.checkpoint_write_GBps_per_node": -1}, "cluster.checkpoint_write_GBps_per_node"),
    ({"training.tokens": 0}, "training.tokens"),
    ({"training.tokens": -1e12}, "training.tokens"),
    ({"cluster.pue": 0.8}, "cluster.pue"),
    ({"cluster.spare_nodes": -1}, "cluster.spare_nodes"),
    ({"cluster.pricing": "spot"}, "cluster.pricing"),
])
def test_bad_economics_input_names_the_field(tmp_path, changes, field):
    assert_user_error(estimate(tmp_path, {**TOKENS, **changes}), field + "=")


def test_monte_carlo_needs_tokens_and_a_positive_count(tmp_path):
    assert_user_error(estimate(tmp_path, None, "--monte-carlo", "100"),
                      "--monte-carlo", "training.tokens")
    assert_user_error(estimate(tmp_path, TOKENS, "--monte-carlo", "0"), "--monte-carlo=0")


def test_estimate_json_run_and_monte_carlo(tmp_path):
    failing = {**TOKENS, "cluster.node_mtbf_hours": 5}  # failures in every run: a real spread
    result = estimate(tmp_path, failing, "--json", "--monte-carlo", "200")
    assert result.returncode == 0, result.stderr
    run = json.loads(result.stdout)["run"]
    for name in ("days", "gpu_hours", "cost_usd", "energy_mwh", "co2_tonnes", "goodput",
                 "checkpoint_interval_s"):
        assert run[name] > 0, name
    mc = run["monte_carlo"]
    assert mc["runs"] == 200 and mc["p10_days"] <= mc["p50_days"] <= mc["p90_days"]
    assert abs(mc["mean_days"] - run["days"]) < 4 * mc["std_err_days"] + 1e-9 * run["days"]
