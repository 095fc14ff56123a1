"""Collective costs on the topology graph: closed forms, and the effects users pay for."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

from parasim.simulator.cost.comm import AxisNetwork, axis_network, bus_factor
from parasim.simulator.cost.profile import analytic_profile
from parasim.simulator.jobfile import job_from_mapping
from parasim.simulator.placement import axis_groups
from parasim.simulator.topology import GraphTopology, build_topology

PERFECT = replace(analytic_profile(), intra_node_efficiency=1.0, inter_node_efficiency=1.0)
NODE = {"gpu": "h100-sxm", "gpus_per_node": 8,
        "intra_node": {"bandwidth_GBps": 450, "latency_us": 3},
        "inter_node": {"bandwidth_Gbps": 400, "nics_per_node": 8, "latency_us": 5}}


def job(parallel: dict, nodes: int = 1, model: str = "llama3-8b", **cluster):
    raw = {"model": model, "cluster": {**NODE, "num_nodes": nodes, **cluster},
           "training": {"seq_length": 4096, "global_batch_size": 1024}, "parallel": parallel}
    return job_from_mapping(raw, base_dir=Path("."), source="test")


def net(j, axis, profile=PERFECT):
    return axis_network(j.cluster, j.layout, axis, profile)


@pytest.mark.parametrize("n", [2, 4, 8])
def test_ring_all_reduce_closed_form(n):
    """2(n-1)/n · S/B + 2(n-1)·alpha on one NVSwitch node (alpha: one message's latency)."""
    j = job({"tp": n, "pp": 8 // n})
    size, bandwidth, alpha = 1e8, 450e9, 3e-6
    ring = net(j, "tp")._candidates("all_reduce", size)["ring"]
    assert ring == pytest.approx(2 * (n - 1) / n * size / bandwidth + 2 * (n - 1) * alpha)


@pytest.mark.parametrize("kind", ["all_gather", "reduce_scatter"])
def test_ring_gather_closed_form(kind):
    j = job({"tp": 8})
    size = 1e8
    got = net(j, "tp")._candidates(kind, size)["ring"]
    assert got == pytest.approx(7 / 8 * size / 450e9 + 7 * 3e-6)


def test_group_of_one_costs_zero():
    j = job({"tp": 8})
    assert net(j, "dp_cp").time_s("all_reduce", 1e9) == 0
    assert net(j, "cp").time_s("all_gather", 1e9) == 0


def test_large_message_runs_at_the_bottleneck():
    """busbw -> the bottleneck bandwidth as S grows (nccl-tests' definition)."""
    j = job({"tp": 8})
    cost = net(j, "tp").cost("all_reduce", 1e12)
    assert cost.busbw_bytes_per_s == pytest.approx(450e9, rel=1e-3)
    assert cost.algbw_bytes_per_s * bus_factor("all_reduce", 8) == pytest.approx(
        cost.busbw_bytes_per_s)
    across = job({"tp": 8, "order": "dp-tp-cp-pp"}, nodes=8)  # every tp peer on its own host
    ring = net(across, "tp")._candidates("all_reduce", 1e12)["ring"]
    assert 2 * 7 / 8 * 1e12 / ring == pytest.approx(50e9, rel=1e-3)  # the NIC, 400 Gb/s


def test_tp_across_nodes_costs_more_than_inside():
    inside = job({"tp": 8}, nodes=8)
    half = job({"tp": 8, "order": "dp-tp-cp-pp"}, nodes=2)  # 4 tp peers per host
    across = job({"tp": 8, "order": "dp-tp-cp-pp"}, nodes=8)  # one tp peer per host
    size = 4096 * 4096 * 2
    times = [net(j, "tp").time_s("all_reduce", size) for j in (inside, half, across)]
    assert times[0] < times[1] < times[2]
    assert times[2] > 5 * times[0]


def _dp_cost(oversubscription: float, radix: int) -> float:
    j = job({"tp": 8}, nodes=4, oversubscription=oversubscription, switch_radix=radix)
    return net(j, "dp_cp").time_s("all_reduce", 1e9)


def test_oversubscription_slows_dp_only_when_groups_cross_the_spine():
    """Radix 16 at 4:1 leaves 12 down ports: 8-NIC hosts sit under different leaves, so the
    eight DP rings of a host cross the spine and share its quarter-rate uplinks. Radix 64 puts
    all four hosts under one leaf: the uplinks are never used."""
    assert _dp_cost(4, 16) > 3 * _dp_cost(1, 16)
    assert _dp_cost(4, 64) == pytest.approx(_dp_cost(1, 64))


def test_rail_only_matches_fat_tree_for_tp_in_node_and_dp_on_rails():
    """Wang et al. 2023: TP inside the high-bandwidth domain and DP along rails never needs a
    spine, so a rail-only fabric costs the same as a full fat-tree."""
    fat = job({"tp": 8}, nodes=8, topology="fat-tree")
    rail = job({"tp": 8}, nodes=8, topology="rail-only")
    for axis, kind in (("tp", "all_reduce"), ("dp_cp", "all_reduce"), ("dp_cp", "all_gather")):
        assert net(rail, axis).time_s(kind, 1e9) == pytest.approx(net(fat, axis).time_s(kind, 1e9))


def test_rail_only_all_to_all_across_rails_costs_more():
    """An expert all-to-all over GPUs of different rails must be forwarded over NVLink first
    on a rail-only fabric (Wang et al. 2023)."""
    moe = "qwen2-57b-a14b"  # 64 experts
    fat = job({"tp": 1, "ep": 16}, nodes=2, model=moe)
    rail = job({"tp": 1, "ep": 16}, nodes=2, model=moe, topology="rail-only")
    groups = axis_groups(fat.layout, "ep")
    assert list(groups[0]) == list(range(16))  # two hosts, all eight rails
    assert net(rail, "ep").time_s("all_to_all", 1e8) > net(fat, "ep").time_s("all_to_all", 1e8)


def test_all_to_all_respects_bisection():
    """At 4:1 the spine carries a quarter of what the NICs can send: an all-to-all over all
    hosts is throttled by it, one inside a host is not."""
    size = 1e9
    wide = job({"tp": 1, "ep": 8, "order": "tp-cp-dp-ep-pp"}, nodes=8, model="mixtral-8x7b",
               oversubscription=4, switch_radix=16)
    full = job({"tp": 1, "ep": 8, "order": "tp-cp-dp-ep-pp"}, nodes=8, model="mixtral-8x7b",
               switch_radix=16)
    assert net(wide, "ep").time_s("all_to_all", size) > 3 * net(full, "ep").time_s(
        "all_to_all", size)


def test_slower_nics_in_a_node_group_pace_the_ring():
    """Holmes-style pools: DP rings that cross hosts with 200 Gb/s NICs run at their rate."""
    fast = dict(NODE, num_nodes=2)
    slow = dict(NODE, num_nodes=2, inter_node={**NODE["inter_node"], "bandwidth_Gbps": 200})
    raw = {"model": "llama3-8b", "training": {"seq_length": 4096, "global_batch_size": 1024},
           "parallel": {"tp": 8}}
    mixed = job_from_mapping({**raw, "cluster": {"node_groups": [fast, slow]}},
                             base_dir=Path("."), source="t")
    uniform = job_from_mapping({**raw, "cluster": {"node_groups": [fast, fast]}},
                               base_dir=Path("."), source="t")
    ratio = net(mixed, "dp_cp").time_s("all_reduce", 1e10) / net(uniform, "dp_cp").time_s(
        "all_reduce", 1e10)
    assert ratio == pytest.approx(2, rel=0.02)


def test_hierarchical_beats_a_flat_ring_across_rails():
    j = job({"tp": 2}, nodes=4, topology="rail-optimized", oversubscription=4, switch_radix=16)
    candidates = net(j, "dp_cp")._candidates("all_reduce", 1e8)
    assert candidates["hierarchical"] < candidates["ring"]
    assert net(j, "dp_cp").cost("all_reduce", 1e8).algorithm == "hierarchical"


@pytest.mark.parametrize("topology", ["fat-tree", "rail-optimized", "rail-only"])
def test_fast_router_agrees_with_shortest_paths_on_the_graph(topology):
    """Oracle: the coordinate router and Dijkstra on the same networkx graph give the same
    collective times, every algorithm, every axis. On rail-only fabrics a flow between rails
    may be relayed on either host at equal latency; the router relays at the source (NCCL's
    PXN), Dijkstra at whichever it meets first, so only rings (same-rail or in-host hops) are
    compared there."""
    j = job({"tp": 2, "pp": 2, "ep": 4}, nodes=4, model="mixtral-8x7b", topology=topology,
            oversubscription=4, switch_radix=16)
    fabric = build_topology(j.cluster)
    graph = GraphTopology(fabric.graph(), "oracle")
    for axis in ("tp", "dp_cp", "ep", "pp"):
        groups = axis_groups(j.layout, axis)
        kinds = ("all_reduce", "all_gather") if topology == "rail-only" else (
            "all_reduce", "all_gather", "all_to_all")
        for kind in kinds:
            fast = AxisNetwork(fabric, PERFECT, groups)._candidates(kind, 1e8)
            slow = AxisNetwork(graph, PERFECT, groups)._candidates(kind, 1e8)
            assert fast == pytest.approx(slow), (axis, kind)


def test_pipeline_sends_cross_hosts_when_stages_do():
    within = job({"tp": 2, "pp": 4}, nodes=1)
    across = job({"tp": 8, "pp": 2}, nodes=2)
    size = 1e7
    assert net(across, "pp_p2p").time_s("p2p", size) > net(within, "pp_p2p").time_s("p2p", size)
    assert net(within, "pp_p2p").time_s("p2p", size) == pytest.approx(size / 450e9 + 3e-6)


def test_costs_are_cached_per_placement():
    a = job({"tp": 8, "recompute": "full"}, nodes=2)
    b = job({"tp": 8, "micro_batch_size": 2}, nodes=2)
    assert net(a, "dp_cp") is net(b, "dp_cp")
    assert math.isfinite(net(a, "dp_cp").time_s("all_reduce", 1.0))
