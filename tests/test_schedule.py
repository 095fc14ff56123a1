"""The pipeline simulation against closed forms, and the effects it exists to show."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest

from parasim.simulator.errors import SpecError
from parasim.simulator.jobfile import job_from_mapping
from parasim.simulator.layout import Layout
from parasim.simulator.memory import in_flight_microbatches
from parasim.simulator.predict import predict
from parasim.simulator.schedule import TaskTimes, rank_tasks, simulate, sweep

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


@pytest.mark.parametrize("pp, m", [(2, 2), (2, 5), (4, 4), (4, 8), (8, 24)])
@pytest.mark.parametrize("f, b, w", [(1.0, 1.0, 1.0), (1.0, 1.0, 0.5), (1.0, 1.2, 0.8),
                                     (2.0, 2.0, 1.0), (1.0, 2.0, 1.0)])
def test_zero_bubble_bubble_is_the_papers(pp, m, f, b, w):
    """Qi et al. 2023, §3.1: with m >= pp equal stages and T_W <= T_F, ZB-H1's bubble is
    (pp-1)(T_F + T_B - T_W), 1F1B's (pp-1)(T_F + T_B + T_W): a third of it at equal times."""
    zb = simulate(Layout(pp=pp, dp=1, schedule="zero-bubble"), m, [TaskTimes(f, b, w)] * pp)
    plain = simulate(Layout(pp=pp, dp=1), m, [TaskTimes(f, b + w)] * pp)
    work = m * (f + b + w)
    assert zb.makespan_s - work == pytest.approx((pp - 1) * (f + b - w))
    assert plain.makespan_s - work == pytest.approx((pp - 1) * (f + b + w))


def test_a_slow_weight_gradient_cannot_hide_the_last_stages_ramp():
    """Outside the paper's T_W <= T_F: the bubble stops shrinking at (pp-1)·T_F, the time the
    last stage waits for its first input."""
    zb = simulate(Layout(pp=4, dp=1, schedule="zero-bubble"), 8, [TaskTimes(1.0, 1.0, 1.5)] * 4)
    assert zb.makespan_s - 8 * 3.5 == pytest.approx(3 * 1.0)


@pytest.mark.parametrize("pp, m", [(1, 3), (2, 1), (2, 6), (4, 3), (4, 9), (8, 8)])
def test_zero_bubble_order_runs_each_task_once_in_a_valid_order(pp, m):
    """Every micro-batch has one F, one B and one W, in that order; pp - rank micro-batches
    wait for their B at most (1F1B's activations) and rank + 1 for their W, pp between F and
    W (W lags F by pp - 1 on every rank, Qi et al. 2023 §3.1)."""
    layout = Layout(pp=pp, dp=1, schedule="zero-bubble")
    for rank in range(pp):
        tasks = rank_tasks(layout, rank, m)
        assert sorted((t.kind, t.microbatch, t.chunk) for t in tasks) == sorted(
            (kind, i, 0) for kind in "FBW" for i in range(m))
        position = {(t.kind, t.microbatch): k for k, t in enumerate(tasks)}
        assert all(position["F", i] < position["B", i] < position["W", i] for i in range(m))
        for kind in "FBW":  # each kind in micro-batch order
            assert [t.microbatch for t in tasks if t.kind == kind] == list(range(m))
        held, awaiting, peak_held, peak_awaiting, peak_any = 0, 0, 0, 0, 0
        for task in tasks:
            held += {"F": 1, "B": -1}.get(task.kind, 0)
            awaiting += {"B": 1, "W": -1}.get(task.kind, 0)
            peak_held, peak_awaiting = max(peak_held, held), max(peak_awaiting, awaiting)
            peak_any = max(peak_any, held + awaiting)
        assert peak_held == min(pp - rank, m)
        assert peak_awaiting == min(rank + 1, m)
        assert peak_any == min(pp, m)


def test_zero_bubble_steady_state_is_the_papers_triples():
    """pp 4, m 8 (the paper's Figure 3 shape): rank i's steady state repeats
    F_x, B_(x-(pp-1-i)), W_(x-(pp-1))."""
    layout = Layout(pp=4, dp=1, schedule="zero-bubble")
    names = [[f"{t.kind}{t.microbatch}" for t in rank_tasks(layout, rank, 8)]
             for rank in range(4)]
    # the first rank defers nothing (F3 B0 W0 F4 B1 W1 ...): its B's come last
    assert names[0][:9] == ["F0", "F1", "F2", "F3", "B0", "W0", "F4", "B1", "W1"]
    assert names[3][:8] == ["F0", "B0", "F1", "B1", "F2", "B2", "F3", "B3"]
    assert names[3][8:11] == ["W0", "F4", "B4"]
    assert names[3][-4:] == ["W4", "W5", "W6", "W7"]  # the deferred W's fill the tail


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


@pytest.mark.parametrize("schedule, pp, vpp, m", [("1f1b", 4, 1, 7), ("interleaved", 3, 2, 6),
                                                  ("zero-bubble", 4, 1, 6), ("gpipe", 2, 1, 3)])
def test_each_task_starts_when_its_rank_is_free_and_its_input_has_arrived(schedule, pp, vpp, m):
    """The timing rule, read back from the recorded intervals: a task starts at the later of
    its rank's previous end and its input's arrival (F: the stage before's F plus that
    stage's send; B: the stage after's B plus its send, or on the last stage its own F)."""
    rng = random.Random(7)
    times = [TaskTimes(rng.uniform(0.5, 1.5), rng.uniform(1.0, 2.0), rng.uniform(0.0, 1.0),
                       rng.uniform(0.0, 0.2)) for _ in range(pp * vpp)]
    layout = Layout(pp=pp, vpp=vpp, schedule=schedule, dp=1)
    intervals = simulate(layout, m, times, record=True).intervals
    assert len(intervals) == sum(len(rank_tasks(layout, r, m)) for r in range(pp))
    end = {(i.task.kind, i.task.microbatch, i.task.chunk * pp + i.rank): i.end_s
           for i in intervals}
    previous = [0.0] * pp
    for i in sorted(intervals, key=lambda i: (i.rank, i.start_s, i.end_s)):
        stage = i.task.chunk * pp + i.rank
        if i.task.kind == "F" and stage > 0:
            arrival = end["F", i.task.microbatch, stage - 1] + times[stage - 1].send_s
        elif i.task.kind == "B" and stage < pp * vpp - 1:
            arrival = end["B", i.task.microbatch, stage + 1] + times[stage + 1].send_s
        elif i.task.kind == "B":
            arrival = end["F", i.task.microbatch, stage]
        else:
            arrival = 0.0
        assert i.start_s == max(previous[i.rank], arrival)
        previous[i.rank] = i.end_s


def test_recorded_tasks_come_in_the_order_events_start_them():
    """Zero-second tasks all start at 0, in the order a (time, rank) event queue starts them:
    rank 0's F wakes rank 1, whose F and B run before rank 0's B can (not rank order)."""
    timeline = simulate(Layout(pp=2, dp=1), 1, [TaskTimes(0.0, 0.0)] * 2, record=True)
    assert [(i.rank, i.name) for i in timeline.intervals] == [
        (0, "F0.0"), (1, "F0.0"), (1, "B0.0"), (0, "B0.0")]


def test_a_cyclic_order_is_caught():
    """Rank 0's first task needs rank 1's first, which needs rank 0's: no order runs it."""
    steps = (((0, ((1, 0, -1),)),), ((0, ((0, 0, -1),)),))
    with pytest.raises(AssertionError, match="deadlocked"):
        sweep(steps, [1.0], [0.0])


def test_task_lists_are_copies_of_the_cached_orders():
    layout = Layout(pp=4, dp=1)
    rank_tasks(layout, 0, 8).clear()
    assert len(rank_tasks(layout, 0, 8)) == 16


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
    off = {"overlap_grad_reduce": False, "overlap_param_gather": False}  # one overlap at a time
    exposed = getattr(_overlap_job(**{**off, flag: False}).breakdown, component)
    hidden = getattr(_overlap_job(**{**off, flag: True}).breakdown, component)
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


def _interleaved_job(pp: int, vpp: int, microbatches: int, **parallel):
    """Equal virtual stages (2 blocks each, a 256-token vocabulary), tp 8 in a node, each
    pipeline stage on its own node: every activation crosses the network."""
    raw = {"model": {"name": "equal", "num_layers": 2 * pp * vpp, "hidden_size": 4096,
                     "num_attention_heads": 32, "ffn_hidden_size": 16384, "vocab_size": 256},
           "cluster": {"base": "dgx-h100", "num_nodes": pp},
           "training": {"seq_length": 4096, "global_batch_size": microbatches},
           "parallel": {"tp": 8, "pp": pp, "vpp": vpp, "schedule": "interleaved",
                        "stages": [2] * (pp * vpp), **parallel}}
    return job_from_mapping(raw, base_dir=Path("."), source="t")


@pytest.mark.parametrize("pp, vpp, m", [(4, 2, 8), (4, 4, 16), (2, 2, 4), (4, 2, 32)])
def test_predicted_interleaved_bubble_is_the_closed_form(pp, vpp, m):
    """Issue 17: interleaved plans showed "bubble 0.00 ms", their idle time booked as
    pipeline communication. The breakdown's bubble is the critical rank's idle time that the
    sends do not explain: (pp-1)/(vpp·m) of its work on equal stages (Narayanan et al. 2021,
    §2.2), however slow the sends; the sends on the critical path are pp_comm."""
    p = predict(_interleaved_job(pp, vpp, m))
    b = p.breakdown
    work = b.compute_s + b.tp_comm_s + b.cp_comm_s + b.ep_comm_s
    assert p.microbatches == m
    assert b.bubble_s / work == pytest.approx((pp - 1) / (vpp * m), rel=0.03)
    assert 0 < b.pp_comm_s < b.bubble_s + b.pp_comm_s
    assert sum(b.as_dict().values()) == pytest.approx(p.step_time_s, rel=1e-12)


def test_interleaving_shrinks_the_bubble_without_booking_it_as_sends():
    """The issue's example: Llama 3 70B, pp 4, 32 micro-batches; with 10 chunks per rank the
    bubble was 0 and ~99 ms of idle were called pp_comm. One replica (dp 1), so that no
    data-parallel reduction fills the last rank's drain (`dp_buckets`: one bucket there)."""
    job = job_from_mapping({"model": "llama3-70b", "cluster": {"base": "dgx-h100",
                                                               "num_nodes": 4},
                            "training": {"seq_length": 8192, "global_batch_size": 32},
                            "parallel": {"tp": 8, "pp": 4, "sequence_parallel": True,
                                         "recompute": "selective", "zero_stage": 1}},
                           base_dir=Path("."), source="t")
    plain = predict(job).breakdown
    chunks = predict(replace(job, layout=replace(job.layout, vpp=10, schedule="interleaved")))
    b = chunks.breakdown
    work = b.compute_s + b.tp_comm_s
    assert b.bubble_s > 0 and b.bubble_s > b.pp_comm_s
    assert b.bubble_s < plain.bubble_s / 5
    assert b.bubble_s / work == pytest.approx(3 / (10 * 32), rel=0.15)  # ends hold more
