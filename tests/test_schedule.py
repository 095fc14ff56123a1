"""The pipeline simulation against closed forms, and the effects it exists to show."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from parasim.simulator.errors import SpecError
from parasim.simulator.jobfile import job_from_mapping
from parasim.simulator.layout import Layout
from parasim.simulator.memory import in_flight_microbatches
from parasim.simulator.predict import predict
from parasim.simulator.schedule import TaskTimes, rank_tasks, simulate

F, B = 1.0, 2.0


def bubble_fraction(layout: Layout, m: int, times: list[TaskTimes]) -> float:
    """Idle share of the busiest rank relative to its work, as (pp-1)/m is defined."""
    timeline = simulate(layout, m, times)
    work = max(timeline.busy_s)
    return (timeline.makespan_s - work) / work


@pytest.mark.parametrize("pp, m", [(2, 4), (4, 8), (4, 16), (8, 32)])
def test_1f1b_bubble_is_closed_form(pp, m):
    """Equal stages, no communication: bubble = (pp-1)/m (Narayanan et al. 2021, §2.2)."""
    layout = Layout(pp=pp, dp=1)
    assert bubble_fraction(layout, m, [TaskTimes(F, B)] * pp) == pytest.approx((pp - 1) / m)


@pytest.mark.parametrize("pp, vpp, m", [(2, 2, 4), (4, 2, 8), (4, 4, 16), (8, 3, 16)])
def test_interleaved_bubble_is_closed_form(pp, vpp, m):
    """(pp-1)/(vpp·m) with each chunk a 1/vpp of the rank's layers."""
    layout = Layout(pp=pp, vpp=vpp, schedule="interleaved", dp=1)
    times = [TaskTimes(F / vpp, B / vpp)] * (pp * vpp)
    assert bubble_fraction(layout, m, times) == pytest.approx((pp - 1) / (vpp * m))


def test_gpipe_bubble_matches_1f1b_but_memory_does_not():
    gpipe, plain = Layout(pp=4, schedule="gpipe", dp=1), Layout(pp=4, dp=1)
    times = [TaskTimes(F, B)] * 4
    assert simulate(gpipe, 8, times).makespan_s == simulate(plain, 8, times).makespan_s
    assert simulate(gpipe, 8, times).peak_in_flight == (8, 8, 8, 8)  # holds all m


@pytest.mark.parametrize("schedule, vpp", [("1f1b", 1), ("interleaved", 2), ("gpipe", 1)])
def test_peak_in_flight_matches_the_memory_formula(schedule, vpp):
    """1F1B holds pp - stage micro-batches, interleaved pp + (pp-1)/vpp at rank 0
    (Korthikanti et al. 2022 §4.2.3), GPipe all m: the simulation agrees with `memory`."""
    layout = Layout(pp=4, vpp=vpp, schedule=schedule, dp=1)
    timeline = simulate(layout, 16, [TaskTimes(F / vpp, B / vpp)] * (4 * vpp))
    assert list(timeline.peak_in_flight) == [in_flight_microbatches(layout, r, 16)
                                             for r in range(4)]


def test_zero_bubble_has_a_smaller_bubble_at_the_same_memory():
    """ZB-H1 (Qi et al. 2023): backward split into B and W of equal time."""
    plain = simulate(Layout(pp=4, dp=1), 8, [TaskTimes(1.0, 2.0)] * 4)
    zb = simulate(Layout(pp=4, dp=1, schedule="zero-bubble"), 8, [TaskTimes(1.0, 1.0, 1.0)] * 4)
    assert zb.makespan_s < plain.makespan_s
    assert zb.peak_in_flight == plain.peak_in_flight
    assert zb.busy_s == plain.busy_s


def test_every_task_runs_once():
    layout = Layout(pp=4, vpp=2, schedule="interleaved", dp=1)
    for rank in range(4):
        tasks = rank_tasks(layout, rank, 8)
        assert len(tasks) == len(set(tasks)) == 2 * 8 * 2


def test_sends_lengthen_the_pipeline():
    layout = Layout(pp=4, dp=1)
    free = simulate(layout, 8, [TaskTimes(F, B)] * 4).makespan_s
    costly = simulate(layout, 8, [TaskTimes(F, B, send_s=0.1)] * 4).makespan_s
    assert costly > free


MODEL = {"name": "big-vocab", "num_layers": 16, "hidden_size": 2048, "num_attention_heads": 16,
         "ffn_hidden_size": 8192, "vocab_size": 256000}


def _job(**parallel):
    raw = {"model": MODEL, "cluster": {"base": "dgx-h100", "num_nodes": 1},
           "training": {"seq_length": 4096, "global_batch_size": 64},
           "parallel": {"tp": 2, "pp": 4, **parallel}}
    return job_from_mapping(raw, base_dir=Path("."), source="t")


def test_a_256k_vocabulary_on_the_last_stage_needs_lighter_stages():
    """The LM head of a 256k vocabulary makes the last stage the slowest; moving layers off
    it (and off the first, which holds the embedding) shortens the step."""
    even = predict(_job(stages=[4, 4, 4, 4]))
    lighter = predict(_job(stages=[4, 6, 5, 1]))
    small_vocab = _job(stages=[4, 4, 4, 4])
    no_head = predict(replace(small_vocab, model=replace(small_vocab.model, vocab_size=32000)))
    assert lighter.step_time_s < even.step_time_s
    # the head makes the last stage the busiest: the whole pipeline runs at its pace
    assert even.breakdown.compute_s > 1.5 * no_head.breakdown.compute_s


def test_straggler_slows_the_step():
    raw = {"model": MODEL, "cluster": {"base": "dgx-h100", "num_nodes": 1,
                                       "straggler_slowdown": 1.5},
           "training": {"seq_length": 4096, "global_batch_size": 64},
           "parallel": {"tp": 2, "pp": 4}}
    slow = predict(job_from_mapping(raw, base_dir=Path("."), source="t"))
    base = predict(_job())
    assert slow.breakdown.straggler_s > 0
    assert slow.step_time_s == pytest.approx(base.step_time_s + slow.breakdown.straggler_s)


def test_interleaved_needs_microbatches_in_groups_of_pp():
    with pytest.raises(SpecError, match="global_batch_size"):
        raw = {"model": MODEL, "cluster": {"base": "dgx-h100", "num_nodes": 1},
               "training": {"seq_length": 4096, "global_batch_size": 6},
               "parallel": {"tp": 2, "pp": 4, "vpp": 2, "schedule": "interleaved"}}
        job_from_mapping(raw, base_dir=Path("."), source="t")


def _overlap_job(**parallel):
    raw = {"model": "mixtral-8x7b", "cluster": {"base": "dgx-h100", "num_nodes": 2},
           "training": {"seq_length": 4096, "global_batch_size": 64},
           "parallel": {"tp": 2, "pp": 2, "ep": 4, "zero_stage": 1, **parallel}}
    return predict(job_from_mapping(raw, base_dir=Path("."), source="t"))


@pytest.mark.parametrize("flag, component", [
    ("overlap_grad_reduce", "dp_comm_s"),
    ("tp_comm_overlap", "tp_comm_s"),
    ("ep_comm_overlap", "ep_comm_s"),
    ("overlap_param_gather", "dp_comm_s"),
])
def test_each_overlap_hides_its_communication(flag, component):
    exposed = getattr(_overlap_job().breakdown, component)
    hidden = getattr(_overlap_job(**{flag: True}).breakdown, component)
    assert 0 <= hidden < exposed


def test_router_skew_slows_the_experts_and_capacity_drops_tokens():
    def moe(**model):
        raw = {"model": {"base": "mixtral-8x7b", **model},
               "cluster": {"base": "dgx-h100", "num_nodes": 1},
               "training": {"seq_length": 4096, "global_batch_size": 16},
               "parallel": {"tp": 1, "ep": 8}}
        return predict(job_from_mapping(raw, base_dir=Path("."), source="t"))
    balanced, skewed = moe(), moe(router_skew=1.0)
    assert skewed.breakdown.compute_s > balanced.breakdown.compute_s
    assert skewed.breakdown.ep_comm_s > balanced.breakdown.ep_comm_s
    capped = moe(router_skew=1.0, capacity_factor=1.0)
    assert capped.dropped_token_fraction > 0 == skewed.dropped_token_fraction
    assert capped.breakdown.compute_s < skewed.breakdown.compute_s
