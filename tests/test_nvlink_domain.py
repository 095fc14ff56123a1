"""NVLink domains larger than a node (GB200 NVL72: 72 GPUs over 18 4-GPU trays behind NVLink
switches) and multi-plane fabrics: the graph, the collectives priced on it, validation, the
planner's tensor-parallel limit and `parasim topo`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from parasim.cli import main
from parasim.planner.plan import make_plan, with_max_gpus
from parasim.planner.space import enumerate_space
from parasim.simulator import catalog
from parasim.simulator.cost.comm import axis_network
from parasim.simulator.cost.profile import analytic_profile
from parasim.simulator.errors import SpecError
from parasim.simulator.jobfile import job_from_mapping
from parasim.simulator.topology import NVLINK, build_topology
from tests.test_cli_errors import write_job

PERFECT = replace(analytic_profile(), intra_node_efficiency=1.0, inter_node_efficiency=1.0)
NVLINK_B, NVLINK_A = 900e9, 3.5e-6  # gb200-nvl72: per GPU one way; per message
NIC_B, NIC_A = 400e9 / 8, 8e-6
SIZE = 1e8


def job(parallel: dict, model="llama3-70b", batch=1152, **cluster):
    raw = {"model": model, "cluster": {"base": "gb200-nvl72", "num_nodes": 36, **cluster},
           "training": {"seq_length": 4096, "global_batch_size": batch}, "parallel": parallel}
    return job_from_mapping(raw, base_dir=Path("."), source="test")


def net(j, axis):
    return axis_network(j.cluster, j.layout, axis, PERFECT)


def ring_all_reduce(n, bandwidth, alpha):
    return 2 * (n - 1) / n * SIZE / bandwidth + 2 * (n - 1) * alpha


# Catalog and validation ----------------------------------------------------------------------


def test_nvl72_preset_is_a_rack_of_18_trays():
    entry = catalog.entries("clusters")["gb200-nvl72"]
    for key in ("node", "network", "latency"):
        assert entry["sources"][key].strip()
    group = job({"tp": 4}).cluster.node_groups[0]
    assert (group.gpus_per_node, group.domain_gpus, group.nics_per_node) == (4, 72, 4)
    assert group.intra_node.bytes_per_s == NVLINK_B  # 1.8 TB/s both directions
    assert catalog.usual_node("gb300")["nvlink_domain_gpus"] == 72


def test_domain_defaults_to_the_node():
    j = job_from_mapping({"model": "llama3-8b", "cluster": {"base": "dgx-h100", "num_nodes": 2},
                          "training": {"seq_length": 4096, "global_batch_size": 16},
                          "parallel": {"tp": 8}}, base_dir=Path("."), source="t")
    assert j.cluster.node_groups[0].domain_gpus == 8
    t = build_topology(j.cluster)
    assert (t.domain == t.host).all()


@pytest.mark.parametrize("changes, fragment", [
    ({"nvlink_domain_gpus": 70}, "not a whole number of 4-GPU nodes"),
    ({"num_nodes": 20}, "does not fill whole 72-GPU NVLink domains (18 nodes each)"),
    ({"nvlink_domain_gpus": 0}, "nvlink_domain_gpus"),
])
def test_bad_domains_are_refused(changes, fragment):
    with pytest.raises(SpecError) as err:
        job({"tp": 4}, **changes)
    assert fragment in str(err.value)


# The graph -----------------------------------------------------------------------------------


def test_one_nvlink_switch_vertex_per_domain():
    t = build_topology(job({"tp": 4}).cluster)
    assert t.num_domains == 2 and t.num_hosts == 36
    g = t.graph()
    assert set(g.neighbors("nvswitch0")) == {f"gpu{i}" for i in range(72)}
    assert g.nodes["gpu71"]["domain"] == 0 and g.nodes["gpu72"]["domain"] == 1
    inside = t.route([0], [71])  # tray 0 to tray 17: NVLink through the switch
    assert [t.kind[link] for link in inside.link] == [NVLINK, NVLINK]
    across = t.route([0], [72])  # rack 0 to rack 1: NIC, leaf, (spine)
    assert all(t.kind[link] != NVLINK for link in across.link)


# Collectives priced on the domain --------------------------------------------------------------


def test_tp16_inside_a_domain_runs_at_the_nvlink_rate():
    """tp 16 in a 64-GPU domain (16 trays): the ring all-reduce is NVLink's closed form, and
    across 4 trays without the domain it pays the NICs."""
    inside = net(job({"tp": 16}, num_nodes=32, nvlink_domain_gpus=64, batch=1024), "tp")
    assert inside.within_host
    assert inside._candidates("all_reduce", SIZE)["ring"] == pytest.approx(
        ring_all_reduce(16, NVLINK_B, NVLINK_A))
    trays = net(job({"tp": 16}, num_nodes=32, nvlink_domain_gpus=4, batch=1024), "tp")
    assert not trays.within_host
    assert trays.time_s("all_reduce", SIZE) > 3 * inside.time_s("all_reduce", SIZE)


def test_tp_group_straddling_two_domains_pays_the_nic():
    """tp 16 in 8-GPU domains: the ring's hop between domains runs at one NIC's line rate
    (every other hop is NVLink), latency that of the NIC path."""
    straddle = net(job({"tp": 16}, num_nodes=32, nvlink_domain_gpus=8, batch=1024), "tp")
    assert straddle._candidates("all_reduce", SIZE)["ring"] == pytest.approx(
        2 * 15 * (SIZE / 16 / NIC_B + NIC_A))


def test_ep64_all_to_all_inside_the_domain_vs_across_two():
    """ep 64: inside a 64-GPU domain every GPU's NVLink port carries its 63 flows
    (S/64 · 63/B + alpha); spread over two domains half its peers are behind the NICs."""
    moe = "qwen2-57b-a14b"  # 64 experts
    inside = net(job({"tp": 1, "ep": 64}, model=moe, num_nodes=32, nvlink_domain_gpus=64,
                     batch=1024), "ep")
    expected = SIZE / 64 * 63 / NVLINK_B + NVLINK_A
    assert inside.time_s("all_to_all", SIZE) == pytest.approx(expected)
    across = net(job({"tp": 1, "ep": 64}, model=moe, num_nodes=32, nvlink_domain_gpus=32,
                     batch=1024), "ep")
    assert across.time_s("all_to_all", SIZE) > 4 * expected


def test_hierarchical_all_reduce_splits_by_domain():
    """dp 4 x 72: reduce-scatter inside the rack over NVLink, all-reduce across racks."""
    j = job({"tp": 1, "pp": 1}, num_nodes=72, batch=288)
    dp = net(j, "dp")
    assert dp._split is not None and (dp._split.local, dp._split.nodes) == (72, 4)


# Planner -------------------------------------------------------------------------------------


def test_planner_tp_limit_is_the_domain():
    """Tensor parallelism beyond 8 is searched on NVL72 (up to its 72 GPUs), not on 8-GPU
    nodes."""
    fixed = {"pp": 1, "cp": 1, "vpp": 1, "micro_batch_size": 1, "zero_stage": 1,
             "recompute": "none"}
    j = job(None, batch=144)
    assert 16 in {layout.tp for layout in enumerate_space(j, fixed).layouts}  # 144 = 16 x 9
    b200 = replace(j, cluster=replace(j.cluster, node_groups=(replace(
        j.cluster.node_groups[0], gpu=catalog.gpu("b200"), gpus_per_node=8, num_nodes=18,
        nics_per_node=8, nvlink_domain_gpus=None),)))
    assert max(layout.tp for layout in enumerate_space(b200, fixed).layouts) == 8


def test_planner_puts_a_wide_expert_group_in_the_domain():
    """Qwen3-235B (128 experts) at pp 1 needs ep > 8 to fit; the planner picks it, and the
    rack's NVLink domain makes that plan faster than the same GPUs with NVLink per tray."""
    raw = {"model": "qwen3-235b-a22b", "cluster": {"base": "gb200-nvl72", "num_nodes": 36},
           "training": {"seq_length": 4096, "global_batch_size": 1152},
           "parallel": {"pp": 1, "cp": 1, "vpp": 1, "micro_batch_size": 1, "zero_stage": 1,
                        "tp": 1}}
    rack = make_plan(raw, base_dir=Path("."), source="t", top=1)
    assert rack.job.layout.ep > 8
    trays = make_plan({**raw, "cluster": {**raw["cluster"], "nvlink_domain_gpus": 4}},
                      base_dir=Path("."), source="t", top=1)
    assert rack.result.chosen.prediction.step_time_s < trays.result.chosen.prediction.step_time_s


def test_max_gpus_steps_in_whole_domains():
    j = job({"tp": 4}, num_nodes=18, batch=72)
    assert [c.cluster.num_nodes for c in with_max_gpus(j, 300)] == [18, 36, 72]
    with pytest.raises(SpecError, match="72-GPU NVLink domain"):
        with_max_gpus(j, 64)


# Multi-plane fabrics -------------------------------------------------------------------------


def planes_job(planes: int, **cluster):
    raw = {"model": "llama3-8b",
           "cluster": {"base": "dgx-h100", "num_nodes": 64, "topology": "fat-tree",
                       "switch_radix": 16, "planes": planes, **cluster},
           "training": {"seq_length": 4096, "global_batch_size": 512}, "parallel": {"tp": 8}}
    return job_from_mapping(raw, base_dir=Path("."), source="t")


def test_planes_are_independent_fabrics():
    """8 planes of 64 NICs each fit two tiers of radix-16 switches; one plane of 512 NICs
    needs a core tier (DeepSeek's multi-plane fat tree, arXiv:2505.09343 §5.1)."""
    one, eight = build_topology(planes_job(1).cluster), build_topology(planes_job(8).cluster)
    assert one.has_core and not eight.has_core
    assert eight.num_pods == 8 and set(eight.leaf_plane.tolist()) == set(range(8))
    g = eight.graph()
    assert {g.nodes[n]["kind"] for n in g if n.startswith("spine")} == {"switch"}


def test_planes_keep_the_bisection_a_tapered_core_would_cut():
    """Spine-to-core tapered 4:1: one 512-NIC plane routes half its bisection through the
    core (N/2 flows at 1/4 of 400 Gb/s: 3.2 TB/s); 8 planes never reach a core, so the
    bisection is N/2 flows at line rate (12.8 TB/s)."""
    from parasim.simulator.topology import bisection_bytes_per_s

    tapered = {"oversubscription": [1, 4]}
    one = build_topology(planes_job(1, **tapered).cluster)
    eight = build_topology(planes_job(8, **tapered).cluster)
    assert bisection_bytes_per_s(one) == pytest.approx(256 * 50e9 / 4)
    assert bisection_bytes_per_s(eight) == pytest.approx(256 * 50e9)


def test_traffic_between_planes_is_forwarded_over_nvlink():
    t = build_topology(planes_job(8).cluster)
    same = t.route([0], [8])  # GPU 0 -> GPU 8: both on plane 0 (NIC 0 of hosts 0 and 1)
    assert [t.kind[link] for link in same.link].count(NVLINK) == 0
    cross = t.route([0], [9])  # plane 0 -> plane 1: first to GPU 1 of host 0 over NVLink
    names = [t.link_name(link) for link in cross.link]
    assert names[:2] == ["gpu0->nvswitch0", "nvswitch0->gpu1"]


@pytest.mark.parametrize("changes, fragment", [
    ({"planes": 3}, "does not divide the 8 NICs"),
    ({"planes": 2, "topology": "rail-only"}, "rail-only already"),
])
def test_bad_planes_are_refused(changes, fragment):
    raw = {"model": "llama3-8b", "cluster": {"base": "dgx-h100", "num_nodes": 2, **changes},
           "training": {"seq_length": 4096, "global_batch_size": 16}, "parallel": {"tp": 8}}
    with pytest.raises(SpecError) as err:
        job_from_mapping(raw, base_dir=Path("."), source="t")
    assert fragment in str(err.value)


# parasim topo / estimate ---------------------------------------------------------------------


def test_topo_and_estimate_report_the_domain(tmp_path, capsys):
    path = write_job(tmp_path, {"model": "llama3-8b",
                                "cluster": {"base": "gb200-nvl72", "num_nodes": 36},
                                "training": {"seq_length": 4096, "global_batch_size": 144},
                                "parallel": {"tp": 8, "pp": 2}})
    assert main(["topo", str(path), "--png", str(tmp_path / "f.png")]) == 0
    out = capsys.readouterr().out
    assert "2 NVLink switch fabrics (72-GPU NVLink domains of 18 hosts each)" in out
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["estimate", str(path)]) == 0
    assert "36 x 4 gb200 in 72-GPU NVLink domains (144 GPUs)" in capsys.readouterr().out
