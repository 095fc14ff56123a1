"""planner.overlaps: the communication-overlap flags chosen for the finalists of a search."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from parasim.planner.export import export_layout
from parasim.planner.overlaps import SEARCHED_FLAGS, applies, best_overlaps
from parasim.planner.search import search
from parasim.simulator.errors import SpecError
from parasim.simulator.jobfile import job_from_mapping
from parasim.simulator.layout import Layout, overlap_text
from parasim.simulator.predict import predict

SMALL = {"model": {"name": "small", "num_layers": 8, "hidden_size": 4096,
                   "num_attention_heads": 32, "num_kv_heads": 8, "ffn_hidden_size": 14336,
                   "vocab_size": 32000},
         "cluster": {"base": "dgx-h100", "num_nodes": 1},
         "training": {"seq_length": 4096, "global_batch_size": 64}}


def _job(raw=SMALL, parallel=None):
    return job_from_mapping({**raw, "parallel": parallel or {}}, base_dir=Path("."), source="t")


def test_each_flag_applies_only_where_megatron_core_runs_it():
    assert applies(Layout(tp=8, sequence_parallel=True), "tp_comm_overlap")
    assert not applies(Layout(tp=8), "tp_comm_overlap")  # --tp-comm-overlap needs SP
    assert not applies(Layout(tp=1, sequence_parallel=True), "tp_comm_overlap")
    assert applies(Layout(ep=8), "ep_comm_overlap")
    assert applies(Layout(ep=8, pp=4, vpp=2, schedule="interleaved"), "ep_comm_overlap")
    assert not applies(Layout(ep=8, pp=4), "ep_comm_overlap")  # 1F1B without vpp
    assert not applies(Layout(ep=8, recompute="full"), "ep_comm_overlap")
    assert not applies(Layout(ep=8, full_recompute_layers=(1,)), "ep_comm_overlap")
    assert applies(Layout(dp=2), "overlap_grad_reduce")
    assert not applies(Layout(dp=1), "overlap_grad_reduce")
    assert applies(Layout(dp=2, zero_stage=1), "overlap_param_gather")
    assert not applies(Layout(dp=2, zero_stage=1, overlap_grad_reduce=False),
                       "overlap_param_gather")
    with pytest.raises(AssertionError):
        applies(Layout(), "cp_comm_overlap")  # never searched: Megatron always overlaps


def test_a_flag_is_kept_only_where_the_step_gets_shorter_and_fixed_flags_are_held():
    layout = Layout(tp=8, dp=2, ep=2, sequence_parallel=True, zero_stage=1)
    gains = {"tp_comm_overlap": 0.3, "ep_comm_overlap": -0.2, "overlap_grad_reduce": 0.0,
             "overlap_param_gather": 0.0}

    def step_s(lay: Layout) -> float:  # each flag that differs from the default moves the step
        return 10 - sum(gain for flag, gain in gains.items()
                        if getattr(lay, flag) != getattr(layout, flag))

    chosen = best_overlaps(layout, {}, step_s)
    assert chosen.tp_comm_overlap and not chosen.ep_comm_overlap
    assert chosen.overlap_grad_reduce and chosen.overlap_param_gather  # no gain: defaults kept
    assert not best_overlaps(layout, {"tp_comm_overlap": False}, step_s).tp_comm_overlap
    assert best_overlaps(layout, {}, lambda lay: None) == layout  # does not fit: untouched


def test_turning_off_the_grad_reduce_overlap_turns_off_the_gather_overlap_it_needs():
    layout = Layout(dp=2, zero_stage=1)
    chosen = best_overlaps(layout, {}, lambda lay: 5.0 if lay.overlap_grad_reduce else 4.0)
    assert not chosen.overlap_grad_reduce and not chosen.overlap_param_gather


def test_the_plan_turns_on_tp_overlap_where_the_simulator_says_it_is_faster():
    """On one 8-GPU node with tp 8 and sequence parallelism, the chosen flag is the faster of
    the two full predictions of the chosen layout."""
    fixed = {"tp": 8, "sequence_parallel": True, "micro_batch_size": 1}
    best = search(_job(), fixed).chosen
    flipped = replace(best.layout, tp_comm_overlap=not best.layout.tp_comm_overlap)
    other = predict(replace(_job(), layout=flipped))
    assert best.prediction.step_time_s <= other.step_time_s
    assert best.layout.tp_comm_overlap  # the tp collectives are worth hiding here
    assert "TP overlap" in overlap_text(best.layout)


def test_fixed_flags_are_never_searched():
    fixed = {"tp": 8, "sequence_parallel": True, "tp_comm_overlap": False}
    assert all(not s.layout.tp_comm_overlap for s in search(_job(), fixed).ranked)


def test_megatron_export_refuses_an_expert_overlap_it_cannot_run():
    raw = {**SMALL, "model": "mixtral-8x7b", "cluster": {"base": "dgx-h100", "num_nodes": 2},
           "training": {"seq_length": 4096, "global_batch_size": 64}}
    job = _job(raw, {"ep": 4, "pp": 2, "ep_comm_overlap": True})
    with pytest.raises(SpecError, match="ep_comm_overlap=false"):
        export_layout(job, "megatron")
    job = _job(raw, {"ep": 4, "pp": 2, "vpp": 2, "schedule": "interleaved",
                     "ep_comm_overlap": True})
    assert "--overlap-moe-expert-parallel-comm" in export_layout(job, "megatron")


def test_searched_flags_are_layout_fields():
    assert set(SEARCHED_FLAGS) <= set(Layout.__dataclass_fields__)
