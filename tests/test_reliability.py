"""Failures, checkpoints and restarts: closed forms pinned, the Monte Carlo against them, and
the default failure rate against the Llama 3 report."""

from __future__ import annotations

import math

import numpy as np
import pytest

from parasim.simulator import reliability
from parasim.simulator.facility import HOUR_S, default_facility
from parasim.simulator.reliability import (
    FailureModel,
    daly_interval_s,
    expected_run,
    monte_carlo,
    restart_expected_s,
    segment_expected_s,
    spare_restart_s,
    split_run,
    system_mtbf_s,
    truncated_exponential_moments,
    young_interval_s,
)

DAY_S = 86400.0


def test_young_interval_is_the_closed_form():
    assert young_interval_s(300.0, DAY_S) == pytest.approx(7200.0, rel=1e-12)  # sqrt(2·300·86400)
    for delta, mtbf in ((1.0, 3600.0), (60.0, 1e5), (7.7, 103837.5)):
        assert young_interval_s(delta, mtbf) == pytest.approx(math.sqrt(2 * delta * mtbf))


def test_daly_interval_is_his_eq_37_and_beats_young():
    """Daly 2006 eq. 37; on the exact expected wall time it is closer to the optimum than
    Young's first-order interval (a grid search finds the optimum)."""
    delta, mtbf, restart = 600.0, 4 * 3600.0, 900.0
    x = delta / (2 * mtbf)
    assert daly_interval_s(delta, mtbf) == pytest.approx(
        math.sqrt(2 * delta * mtbf) * (1 + math.sqrt(x) / 3 + x / 9) - delta)
    assert daly_interval_s(3 * mtbf, mtbf) == mtbf

    def wall_per_work(tau: float) -> float:  # continuous-segment form of Daly's eq. 13
        return segment_expected_s(tau + delta, restart, mtbf) / tau
    grid = np.linspace(500.0, 20000.0, 40000)
    best = grid[np.argmin([wall_per_work(t) for t in grid])]
    daly, young = daly_interval_s(delta, mtbf), young_interval_s(delta, mtbf)
    assert abs(daly - best) < abs(young - best)
    assert daly == pytest.approx(best, rel=0.02)
    assert wall_per_work(daly) <= wall_per_work(young)


def test_segment_expectation_is_dalys_closed_form():
    """M·e^{R/M}·(e^{L/M} - 1), and tends to L without failures."""
    length, restart, mtbf = 3000.0, 600.0, 7200.0
    assert segment_expected_s(length, restart, mtbf) == pytest.approx(
        mtbf * math.exp(restart / mtbf) * (math.exp(length / mtbf) - 1))
    assert segment_expected_s(length, restart, 1e15) == pytest.approx(length, rel=1e-9)
    assert restart_expected_s(restart, 1e15) == pytest.approx(restart, rel=1e-9)


def test_run_parts_add_up_and_interruptions_are_rate_times_time():
    segments = split_run(1000, 10.0, 37)  # 27 segments of 37 steps, one of 1
    assert (segments.full, segments.last_steps, segments.count) == (27, 1, 28)
    assert segments.useful_s == pytest.approx(10000.0)
    model = FailureModel(mtbf_s=5000.0, checkpoint_s=20.0, restart_s=300.0)
    run = expected_run(segments, model)
    assert run.wall_s == pytest.approx(27 * segment_expected_s(390.0, 300.0, 5000.0)
                                       + segment_expected_s(30.0, 300.0, 5000.0))
    assert run.wall_s == pytest.approx(run.useful_s + run.checkpoints_s + run.rework_s
                                       + run.restarts_s)
    assert run.checkpoints_s == pytest.approx(28 * 20.0)
    assert run.interruptions == pytest.approx(run.wall_s / 5000.0)
    assert run.goodput == pytest.approx(10000.0 / run.wall_s)
    assert min(run.rework_s, run.restarts_s) > 0


def test_first_order_loss_per_failure_is_half_an_interval_plus_restart():
    """When M is much longer than an interval, a failure loses about half a segment and a
    restart (the first-order model behind Young's formula)."""
    segments = split_run(100_000, 1.0, 600)
    model = FailureModel(mtbf_s=1e7, checkpoint_s=30.0, restart_s=500.0)
    run = expected_run(segments, model)
    failures = segments.full * math.expm1(630.0 / 1e7) + math.expm1(430.0 / 1e7)
    assert run.rework_s / failures == pytest.approx(630.0 / 2, rel=0.01)
    assert run.restarts_s / failures == pytest.approx(500.0, rel=0.01)


def test_goodput_tends_to_one_as_mtbf_grows():
    steps, step_s, delta, restart = 200_000, 5.0, 20.0, 600.0
    goodputs = []
    for mtbf in (1e3, 1e4, 1e5, 1e6, 1e8, 1e12):
        model = FailureModel(mtbf_s=mtbf, checkpoint_s=delta, restart_s=restart)
        segments = split_run(steps, step_s, reliability.interval_steps(step_s, model))
        goodputs.append(expected_run(segments, model).goodput)
    assert goodputs == sorted(goodputs)
    assert goodputs[0] < 0.8 and goodputs[-1] > 0.9999


@pytest.mark.parametrize("steps,interval,mtbf,delta,restart", [
    (5000, 97, 20_000.0, 15.0, 400.0),  # a few failures per run, a short last segment
    (2000, 50, 900.0, 30.0, 120.0),  # failures often interrupt segments and restarts
    (300, 300, 1e6, 5.0, 60.0),  # one segment, failures rare
])
def test_monte_carlo_mean_matches_the_closed_form(steps, interval, mtbf, delta, restart):
    segments = split_run(steps, 10.0, interval)
    model = FailureModel(mtbf_s=mtbf, checkpoint_s=delta, restart_s=restart)
    mc = monte_carlo(segments, model, runs=4000, seed=7)
    closed = expected_run(segments, model).wall_s
    assert abs(mc.mean_s - closed) < 4 * mc.std_err_s + 1e-9 * closed
    assert mc.p10_s <= mc.p50_s <= mc.p90_s
    again = monte_carlo(segments, model, runs=4000, seed=7)
    assert again == mc  # seeded


def test_monte_carlo_clt_branch_matches_too(monkeypatch):
    """Past MAX_DRAWS the sums of failure times are drawn from their normal limit."""
    monkeypatch.setattr(reliability, "MAX_DRAWS", 0)
    segments = split_run(2000, 10.0, 50)
    model = FailureModel(mtbf_s=900.0, checkpoint_s=30.0, restart_s=120.0)
    mc = monte_carlo(segments, model, runs=4000, seed=3)
    assert abs(mc.mean_s - expected_run(segments, model).wall_s) < 4 * mc.std_err_s


def test_truncated_exponential_moments_by_quadrature():
    a, m = 700.0, 900.0
    x = np.linspace(0.0, a, 200_001)
    density = np.exp(-x / m) / m / (1 - math.exp(-a / m))
    mean = np.trapezoid(x * density, x)
    var = np.trapezoid(x * x * density, x) - mean**2
    got_mean, got_var = truncated_exponential_moments(a, m)
    assert got_mean == pytest.approx(mean, rel=1e-6)
    assert got_var == pytest.approx(var, rel=1e-5)


def test_spare_nodes_shorten_the_wait_for_repairs():
    restart, repair, nodes, mtbf = 600.0, 86400.0, 256, 3692 * HOUR_S
    assert spare_restart_s(restart, repair, None, nodes, mtbf) == restart  # pool replaces nodes
    assert spare_restart_s(restart, repair, 0, nodes, mtbf) == restart + repair
    load = (nodes + 2) * repair / mtbf  # M/G/inf: nodes in repair ~ Poisson(load)
    p_wait = 1 - math.exp(-load) * (1 + load)
    assert spare_restart_s(restart, repair, 2, nodes, mtbf) == pytest.approx(
        restart + p_wait * repair)
    waits = [spare_restart_s(restart, repair, s, nodes, mtbf) for s in range(10)]
    assert waits == sorted(waits, reverse=True) and waits[-1] < restart + 60.0


def test_system_mtbf_adds_failure_rates():
    assert system_mtbf_s(2048, 3692 * HOUR_S) / HOUR_S == pytest.approx(1.80, abs=0.01)
    both = system_mtbf_s(10, 100.0, num_gpus=80, gpu_mtbf_s=800.0)
    assert both == pytest.approx(1 / (10 / 100.0 + 80 / 800.0))


def test_default_failure_rate_against_the_llama3_report():
    """Llama 3 (Grattafiori et al. 2024, §3.3.4): 466 interruptions in 54 days of pre-training
    on 16,384 H100s (2,048 nodes of 8), 419 unexpected. parasim's default, from Meta's RSC-1
    cluster (Kokolis et al. 2025: 6.50 failures per 1000 node-days), gives
    54 days · 24 h · 2048 nodes / 3692 h = 719 expected interruptions: same order (1.7x)."""
    facility = default_facility()
    mtbf = system_mtbf_s(2048, facility.node_mtbf_s)
    expected = 54 * DAY_S / mtbf
    assert expected == pytest.approx(54 * 24 * 2048 / 3692, rel=1e-9)
    assert expected == pytest.approx(719, abs=1)
    assert 1 / 3 < expected / 419 < 3
