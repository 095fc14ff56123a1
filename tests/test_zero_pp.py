"""ZeRO++ (`parallel.zero_pp`, Wang et al. 2023, arXiv:2306.10209): the paper's cross-node
volume cut (3M -> 0.75M), hpZ's memory, the collectives on the topology, validation, export
refusals and where the planner tries it."""

from __future__ import annotations

from pathlib import Path

import pytest

from parasim.planner.export import export_layout
from parasim.planner.plan import layout_mapping
from parasim.planner.search import search
from parasim.planner.space import enumerate_space, zero_pp_twin
from parasim.simulator.errors import SpecError
from parasim.simulator.jobfile import job_from_mapping
from parasim.simulator.layout import Layout
from parasim.simulator.offload import node_dp
from parasim.simulator.placement import axis_groups
from parasim.simulator.predict import predict
from parasim.simulator.zero_pp import cross_node_bytes_per_node, zero3_transfers, zero_pp_transfers

PARAMS = 7.5e9  # a 7.5B-parameter model: M = 15 GB of fp16 weights
M = 2 * PARAMS


def _job(parallel: dict, nodes: int = 4, model: str = "llama3-8b"):
    raw = {"model": model, "cluster": {"base": "dgx-h100", "num_nodes": nodes},
           "training": {"seq_length": 4096, "global_batch_size": 256},
           "parallel": {"tp": 1, "pp": 1, "zero_stage": 3, "micro_batch_size": 1,
                        "recompute": "full", **parallel}}
    return job_from_mapping(raw, base_dir=Path("."), source="test")


@pytest.mark.parametrize("local, nodes", [(8, 64), (8, 384 // 8), (16, 128)])
def test_cross_node_volume_falls_from_3m_to_075m(local, nodes):
    """Wang et al. 2023 (abstract, §3): ZeRO-3's forward all-gather, backward all-gather and
    gradient reduce-scatter move 3M across nodes, ZeRO++'s qwZ + hpZ + qgZ 0.75M (4x less),
    each collective's share (n-1)/n (ring) or (nodes-1)/nodes (all-to-all) of it."""
    n = local * nodes
    plain = cross_node_bytes_per_node(zero3_transfers(PARAMS, 2, 2), local, nodes)
    zpp = cross_node_bytes_per_node(zero_pp_transfers(PARAMS, 2, local, nodes), local, nodes)
    assert plain == pytest.approx(3 * M * (n - 1) / n)
    assert zpp == pytest.approx(0.5 * M * (n - 1) / n + 0.25 * M * (nodes - 1) / nodes)
    assert plain / zpp == pytest.approx(4, rel=0.02)


def test_each_technique_cuts_its_own_collective():
    """qwZ: the forward gather in int8 (half); hpZ: the backward gather inside the node
    (nothing crosses); qgZ: int4 gradients (a quarter) all-to-all'd inside then across."""
    transfers = zero_pp_transfers(PARAMS, 2, 8, 4)
    forward, backward, intra, inter = transfers
    assert (forward.level, forward.payload_bytes) == ("all", 0.5 * M)
    assert (backward.level, backward.payload_bytes) == ("intra", M)
    assert (intra.kind, intra.payload_bytes, intra.reduces) == ("all_to_all", 0.25 * M, True)
    assert (inter.level, inter.payload_bytes) == ("inter", 0.25 * M / 8)


def test_hpz_adds_a_secondary_weight_copy_over_the_nodes_gpus():
    """Pure data parallelism on 8-GPU nodes: + weights / 8 per GPU."""
    plain, zpp = predict(_job({})).stages[0], predict(_job({"zero_pp": True})).stages[0]
    weights = plain.weights_bytes * 32  # ZeRO-3 shards the 16-bit weights over dp 32
    assert zpp.weights_bytes - plain.weights_bytes == pytest.approx(weights / 8)
    job = _job({"tp": 2})
    assert node_dp(job.cluster, job.layout) == 4


def test_zero_pp_cuts_the_exposed_data_parallel_time_across_nodes():
    plain, zpp = predict(_job({})), predict(_job({"zero_pp": True}))
    assert zpp.breakdown.dp_comm_s < plain.breakdown.dp_comm_s
    assert zpp.step_time_s < plain.step_time_s


@pytest.mark.parametrize("parallel, field", [
    ({"zero_stage": 1, "zero_pp": True}, "parallel.zero_pp"),
    ({"zero_pp": "yes"}, "parallel.zero_pp"),
    ({"zero_pp": float("nan")}, "parallel.zero_pp"),
    ({"zero_pp": -1}, "parallel.zero_pp"),
])
def test_bad_zero_pp(parallel, field):
    with pytest.raises(SpecError) as err:
        _job(parallel)
    assert err.value.field == field


def test_plan_file_mapping_carries_zero_pp():
    layout = Layout(dp=32, zero_stage=3, zero_pp=True)
    assert layout_mapping(layout)["zero_pp"] is True
    assert Layout(**layout_mapping(layout)) == layout


def test_exports_refuse_zero_pp_in_one_line():
    for fmt in ("megatron", "torchtitan"):
        with pytest.raises(SpecError) as err:
            export_layout(_job({"zero_pp": True}), fmt)
        assert "--set parallel.zero_pp=false" in err.value.valid
        assert "\n" not in str(err.value)


def test_zero_pp_twin_only_on_zero3_across_nodes():
    job = _job({}, nodes=2)
    space = enumerate_space(job, {"pp": 1, "cp": 1, "micro_batch_size": 1})
    twins = [t for t in (zero_pp_twin(job, layout, {}) for layout in space.layouts) if t]
    assert twins
    for layout in twins:
        assert layout.zero_stage == 3
        group = axis_groups(layout, "dp_cp")[0]
        assert len({int(r) // 8 for r in group}) > 1
    one = _job({}, nodes=1)
    assert not any(zero_pp_twin(one, layout, {}) for layout in
                   enumerate_space(one, {"pp": 1, "cp": 1, "micro_batch_size": 1}).layouts)
    fixed = enumerate_space(job, {"pp": 1, "cp": 1, "micro_batch_size": 1, "zero_pp": True})
    assert fixed.layouts and all(l.zero_pp and l.zero_stage == 3 for l in fixed.layouts)


def test_planner_picks_zero_pp_for_a_fixed_zero3_across_nodes():
    fixed = {"tp": 1, "pp": 1, "cp": 1, "zero_stage": 3, "micro_batch_size": 1,
             "recompute": "full"}
    result = search(_job({}), fixed)
    assert result.chosen.layout.zero_pp


def test_planner_leaves_zero_pp_out_inside_one_node():
    result = search(_job({}, nodes=1), {"tp": 1, "pp": 1, "cp": 1, "micro_batch_size": 1,
                                        "recompute": "full", "zero_stage": 3})
    assert not any(s.layout.zero_pp for s in result.ranked)


def test_a_fixed_zero_pp_is_planned_with_both_context_parallel_styles():
    """The Ulysses pruning compares a layout's blocks with its ring twin's under a key that
    drops the ZeRO stage: it must drop ZeRO++ with it (ZeRO++ needs ZeRO-3)."""
    result = search(_job({"zero_stage": 3, "zero_pp": True, "tp": 2, "cp": 4}), {
        "zero_stage": 3, "zero_pp": True, "tp": 2, "cp": 4})
    assert result.chosen.layout.zero_pp and result.chosen.layout.cp == 4
    assert any("cp_style ulysses" in reason for reason in result.rejected)
