"""Whole-run economics: energy is power × time over the phases, prices and carbon multiply
out, the planner's objectives use them, and `estimate --json` carries them."""

from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path

import pytest

from parasim.planner.search import Scored, economics
from parasim.simulator.economics import (
    checkpoint_bytes,
    gpu_powers,
    step_economics,
    step_energy_of,
    with_monte_carlo,
)
from parasim.simulator.energy import PowerModel, gpu_power, step_energy
from parasim.simulator.jobfile import job_from_mapping
from parasim.simulator.predict import predict
from parasim.simulator.reliability import expected_run, split_run
from parasim.simulator.results import TimeBreakdown

MODEL = {"name": "llama-like", "num_layers": 8, "hidden_size": 4096, "num_attention_heads": 32,
         "num_kv_heads": 8, "ffn_hidden_size": 14336, "vocab_size": 128256}
CLUSTER = {"gpu": "h100-sxm", "num_nodes": 2, "gpus_per_node": 8,
           "intra_node": {"bandwidth_GBps": 450, "latency_us": 3},
           "inter_node": {"bandwidth_Gbps": 400, "nics_per_node": 8, "latency_us": 5}}
ISSUE_RUN_FIELDS = {"days", "gpu_hours", "cost_usd", "energy_mwh", "co2_tonnes", "goodput",
                    "checkpoint_interval_s"}
MODEL_CONSTANTS = PowerModel(compute_saturation=0.8, memory_dynamic_fraction=0.5,
                             waiting_dynamic_fraction=0.25, idle_fraction_of_tdp=0.1)


def job(tokens: float | None = 2e10, cluster: dict | None = None, **training):
    train = {"seq_length": 4096, "global_batch_size": 64, **training}
    if tokens is not None:
        train["tokens"] = tokens
    raw = {"model": MODEL, "cluster": {**CLUSTER, **(cluster or {})}, "training": train,
           "parallel": {"tp": 2, "pp": 2}}
    return job_from_mapping(raw, base_dir=Path("."), source="test")


@pytest.fixture(scope="module")
def base():
    j = job()
    return j, predict(j)


def test_gpu_power_is_linear_in_utilization_up_to_the_tdp():
    p = gpu_power(70.0, 700.0, 0.0, MODEL_CONSTANTS)
    assert (p.compute_w, p.idle_w) == (70.0, 70.0)
    assert p.memory_w == pytest.approx(70 + 0.5 * 630)
    assert p.waiting_w == pytest.approx(70 + 0.25 * 630)
    assert gpu_power(70.0, 700.0, 0.4, MODEL_CONSTANTS).compute_w == pytest.approx(70 + 630 / 2)
    assert gpu_power(70.0, 700.0, 0.8, MODEL_CONSTANTS).compute_w == pytest.approx(700.0)
    assert gpu_power(70.0, 700.0, 0.95, MODEL_CONSTANTS).compute_w == pytest.approx(700.0)


def test_step_energy_is_power_times_time_summed_over_phases():
    b = TimeBreakdown(compute_s=2.0, tp_comm_s=0.3, cp_comm_s=0.0, ep_comm_s=0.0, pp_comm_s=0.1,
                      bubble_s=0.4, dp_comm_s=0.2, optimizer_s=0.05, straggler_s=0.0)
    a100 = gpu_power(58.0, 400.0, 0.6, MODEL_CONSTANTS)
    h100 = gpu_power(70.0, 700.0, 0.6, MODEL_CONSTANTS)
    e = step_energy(b, [(8, h100), (16, a100)], host_w=5000.0, network_w=900.0)
    waiting_s = 0.3 + 0.1 + 0.4 + 0.2
    assert e.gpu_compute_j == pytest.approx(2.0 * (8 * h100.compute_w + 16 * a100.compute_w))
    assert e.gpu_memory_j == pytest.approx(0.05 * (8 * h100.memory_w + 16 * a100.memory_w))
    assert e.gpu_waiting_j == pytest.approx(waiting_s * (8 * h100.waiting_w + 16 * a100.waiting_w))
    assert (e.host_j, e.network_j) == (pytest.approx(5000.0 * b.total_s),
                                       pytest.approx(900.0 * b.total_s))
    assert e.total_j == pytest.approx(sum(getattr(e, f.name) for f in fields(e)))


def test_run_energy_is_the_steps_energy_plus_idle_and_overheads(base):
    j, p = base
    run, rel = p.run, p.run.reliability
    (gpus, power), = gpu_powers(j, p)
    b = p.breakdown
    per_step = gpus * (power.compute_w * b.compute_s + power.memory_w * b.optimizer_s
                       + power.waiting_w * (b.total_s - b.compute_s - b.optimizer_s))
    stepping = (rel.useful_s + rel.rework_s) / p.step_time_s
    gpu_j = run.energy.gpu_compute_j + run.energy.gpu_memory_j + run.energy.gpu_waiting_j
    assert gpu_j == pytest.approx(per_step * stepping)
    assert run.energy.gpu_idle_j == pytest.approx(16 * 70.0 * (rel.checkpoints_s + rel.restarts_s))
    assert run.energy.host_j == pytest.approx(16 * 350.0 * rel.wall_s)  # economics.yaml
    assert run.energy.network_j == pytest.approx(16 * 56.0 * rel.wall_s)
    assert run.energy.cooling_j == pytest.approx(0.3 * run.energy.it_j)  # PUE 1.3
    assert run.energy_j == pytest.approx(sum(getattr(run.energy, f.name)
                                             for f in fields(run.energy)))


def test_compute_power_follows_the_step_utilization(base):
    _, p = base
    u = p.hardware_flop_per_step / (p.peak_flop_per_s * p.breakdown.compute_s)
    assert p.run.power.compute_w == pytest.approx(70 + 630 * min(1.0, u / 0.8))


def test_dollars_gpu_hours_and_carbon_multiply_out(base):
    _, p = base
    run = p.run
    hours = run.wall_time_s / 3600
    assert run.days == pytest.approx(run.wall_time_s / 86400)
    assert run.gpu_hours == pytest.approx(16 * hours)
    assert run.cost_usd == run.cost_on_demand_usd == pytest.approx(16 * hours * 3.99)
    assert run.cost_reserved_usd == pytest.approx(16 * hours * 3.99 * (1 - 0.35))
    assert run.co2_kg == pytest.approx(run.energy_j / 3.6e6 * 0.481)  # 481 g/kWh


def test_job_prices_pricing_and_grid_override_the_defaults():
    p = predict(job(cluster={"price_per_gpu_hour": 2.0, "reserved_price_per_gpu_hour": 1.25,
                             "pricing": "reserved", "grid_gco2_per_kwh": 50, "pue": 1.1}))
    hours = p.run.wall_time_s / 3600
    assert p.run.cost_on_demand_usd == pytest.approx(16 * hours * 2.0)
    assert p.run.cost_usd == p.run.cost_reserved_usd == pytest.approx(16 * hours * 1.25)
    assert p.run.co2_kg == pytest.approx(p.run.energy_j / 3.6e6 * 0.050)
    assert p.run.energy.cooling_j == pytest.approx(0.1 * p.run.energy.it_j)


def test_checkpoint_size_and_failure_model(base):
    j, p = base
    assert checkpoint_bytes(j, p) == p.params_total * (2 + 12)  # bf16 weights + Adam states
    m = p.run.reliability.model
    assert m.checkpoint_s == pytest.approx(p.params_total * 14 / (2 * 1e9))  # 2 nodes x 1 GB/s
    assert m.restart_s == pytest.approx(600.0 + m.checkpoint_s)  # relaunch + read back
    assert m.mtbf_s == pytest.approx(3692 * 3600 / 2)
    assert p.run.reliability == expected_run(_segments(p), m)  # the model's expectation


def _segments(p):
    r = p.run.reliability
    return split_run(p.run.steps, p.step_time_s, r.interval_steps)


def test_fp32_checkpoints_have_no_master_copy():
    j = job(precision="fp32")
    p = predict(j)
    assert checkpoint_bytes(j, p) == p.params_total * (4 + 8)


def test_checkpoint_interval_steps_of_the_job_is_used():
    p = predict(job(checkpoint_interval_steps=7))
    assert p.run.reliability.interval_steps == 7
    assert p.run.reliability.interval_s == pytest.approx(7 * p.step_time_s)


def test_spares_are_paid_and_cut_the_restart():
    none = predict(job(cluster={"spare_nodes": 0, "node_mtbf_hours": 100}))
    some = predict(job(cluster={"spare_nodes": 2, "node_mtbf_hours": 100}))
    assert none.run.reliability.model.restart_s > some.run.reliability.model.restart_s
    assert some.run.gpus_paid == 32 and none.run.gpus_paid == 16
    assert some.run.gpu_hours == pytest.approx(some.run.wall_time_s / 3600 * 32)


def test_goodput_falls_with_the_failure_rate():
    good = predict(job(cluster={"node_mtbf_hours": 1e6})).run
    bad = predict(job(cluster={"node_mtbf_hours": 5})).run
    assert good.reliability.goodput > 0.99 > bad.reliability.goodput
    assert bad.days > good.days and bad.cost_usd > good.cost_usd


def test_planner_objectives_use_the_whole_run_when_tokens_are_set(base):
    j, p = base
    dollars, joules = economics(j, p)
    assert (dollars, joules) == step_economics(j, p)
    assert dollars == pytest.approx(p.step_time_s / 3600 * 16 * 3.99)
    assert joules == pytest.approx(step_energy_of(j, p).total_j * 1.3)
    scored = Scored(
        layout=j.layout, prediction=p, dollars_per_step=dollars, joules_per_step=joules,
        cluster=j.cluster)
    assert scored.value("cost") == p.run.cost_usd
    assert scored.value("energy") == p.run.energy_j
    per_step = replace(scored, prediction=replace(p, run=None))
    assert per_step.value("cost") == dollars and per_step.value("energy") == joules


def test_estimate_json_run_has_the_issue_fields(base):
    _, p = base
    out = json.loads(json.dumps(p.to_json()))["run"]
    assert ISSUE_RUN_FIELDS <= set(out)
    assert out["energy_mwh"] == pytest.approx(p.run.energy_j / 3.6e9)
    assert out["co2_tonnes"] == pytest.approx(p.run.co2_kg / 1000)
    assert out["checkpoint_interval_s"] == p.run.reliability.interval_s
    assert "monte_carlo" not in out


def test_no_tokens_no_run():
    assert predict(job(tokens=None)).run is None


def test_monte_carlo_is_attached_on_request():
    j = job(cluster={"node_mtbf_hours": 5})  # failures in every run: a real spread
    p = predict(j)
    with_mc = with_monte_carlo(p, j, 500)
    mc = with_mc.run.monte_carlo
    assert mc.runs == 500 and mc.seed == 0
    assert abs(mc.mean_s - p.run.wall_time_s) < 4 * mc.std_err_s + 1e-9 * p.run.wall_time_s
    assert set(with_mc.to_json()["run"]["monte_carlo"]) == {
        "runs", "seed", "mean_days", "std_err_days", "p10_days", "p50_days", "p90_days"}
