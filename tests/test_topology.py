"""The cluster graph: what the builders produce, graph files, bisection, placement."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from parasim.simulator.errors import SpecError
from parasim.simulator.jobfile import job_from_mapping
from parasim.simulator.placement import axis_groups, pipeline_pairs
from parasim.simulator.topology import bisection_bytes_per_s, build_topology, load_graph

NODE = {"gpu": "h100-sxm", "gpus_per_node": 8,
        "intra_node": {"bandwidth_GBps": 450, "latency_us": 3},
        "inter_node": {"bandwidth_Gbps": 400, "nics_per_node": 8, "latency_us": 5}}


def cluster(nodes: int, **extra):
    raw = {"model": "llama3-8b", "cluster": {**NODE, "num_nodes": nodes, **extra},
           "training": {"seq_length": 4096, "global_batch_size": 1024}}
    return job_from_mapping(raw, base_dir=Path("."), source="t").cluster


def kinds(graph):
    out = {}
    for node, data in graph.nodes(data=True):
        prefix = node.rstrip("0123456789")
        out[prefix] = out.get(prefix, 0) + 1
        assert data["kind"] in ("gpu", "nic", "switch")
    return out


def test_fat_tree_shape():
    """4 hosts of 8 GPUs and 8 NICs, radix 16 non-blocking: 8 down ports per leaf, so one host
    per leaf, one spine layer; every edge carries bandwidth and latency."""
    graph = build_topology(cluster(4, switch_radix=16)).graph()
    assert kinds(graph) == {"gpu": 32, "nvswitch": 4, "nic": 32, "leaf": 4, "spine": 1}
    for _a, _b, data in graph.edges(data=True):
        assert data["bytes_per_s"] > 0 and data["latency_s"] >= 0


def test_rail_optimized_puts_each_rail_on_its_own_leaf():
    topology = build_topology(cluster(4, topology="rail-optimized"))
    leaves = topology.nic_leaf[topology.nic_of_gpu]
    assert len(set(leaves[topology.local == 0])) == 1  # rail 0 of every host: one leaf
    assert len(set(leaves[topology.host == 0])) == 8  # one host: eight leaves


def test_rail_only_has_no_spine():
    graph = build_topology(cluster(4, topology="rail-only")).graph()
    assert "spine" not in kinds(graph) and kinds(graph)["leaf"] == 8


def test_three_tiers_beyond_one_spine_layer():
    topology = build_topology(cluster(64, switch_radix=16))  # 512 NICs, 64 leaves > radix
    assert topology.has_core and topology.num_pods == 8


def test_oversubscription_shrinks_uplinks_and_bisection():
    full = bisection_bytes_per_s(build_topology(cluster(4, switch_radix=16)))
    thin = bisection_bytes_per_s(build_topology(cluster(4, switch_radix=16, oversubscription=4)))
    assert full == pytest.approx(16 * 50e9)  # 16 pairs, each at a NIC's 400 Gb/s
    assert thin == pytest.approx(full / 4)


def test_nics_shared_by_gpus():
    """Frontier-style: 4 NICs for 8 GPUs, two GPUs per NIC."""
    topology = build_topology(cluster(2, gpus_per_node=8,
                                      inter_node={"bandwidth_Gbps": 200, "nics_per_node": 4,
                                                  "latency_us": 5}))
    assert list(topology.nic_of_gpu[:8]) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_placement_follows_megatron_rank_order():
    job = job_from_mapping({"model": "mixtral-8x7b", "cluster": {**NODE, "num_nodes": 4},
                            "training": {"seq_length": 4096, "global_batch_size": 64},
                            "parallel": {"tp": 2, "cp": 2, "pp": 2, "ep": 4}},
                           base_dir=Path("."), source="t")
    layout = job.layout  # dp = 32 / 8 = 4
    assert axis_groups(layout, "tp")[1].tolist() == [2, 3]
    assert axis_groups(layout, "cp")[0].tolist() == [0, 2]
    assert axis_groups(layout, "dp")[0].tolist() == [0, 4, 8, 12]
    assert axis_groups(layout, "dp_cp")[0].tolist() == [0, 2, 4, 6, 8, 10, 12, 14]
    assert axis_groups(layout, "pp")[0].tolist() == [0, 16]
    assert axis_groups(layout, "ep")[0].tolist() == [0, 2, 4, 6]  # tp-ep-edp-pp
    assert axis_groups(layout, "edp")[0].tolist() == [0, 8]
    senders, receivers = pipeline_pairs(layout)
    assert (receivers - senders == 16).all()
    for axis in ("tp", "cp", "dp", "pp", "ep", "edp"):  # every rank in exactly one group
        assert sorted(axis_groups(layout, axis).ravel().tolist()) == list(range(32))


def _write(tmp_path, nodes, links, name="g.json"):
    path = tmp_path / name
    path.write_text(json.dumps({"directed": False, "multigraph": False, "graph": {},
                                "nodes": nodes, "links": links}))
    return path


GPUS = [{"id": f"g{i}", "kind": "gpu", "rank": i, "host": i // 2} for i in range(4)]


def _links(rate=1e11):
    return [{"source": f"g{i}", "target": "sw", "bytes_per_s": rate, "latency_s": 1e-6}
            for i in range(4)]


def test_graph_file_round_trip(tmp_path):
    path = _write(tmp_path, GPUS + [{"id": "sw", "kind": "switch"}], _links())
    graph = load_graph(path)
    assert graph.number_of_nodes() == 5 and graph.number_of_edges() == 4


@pytest.mark.parametrize("nodes, links, fragment", [
    (GPUS + [{"id": "sw", "kind": "switch"}], _links()[:3], "g3"),  # g3 has no path
    (GPUS + [{"id": "sw", "kind": "switch"}], _links(-5), "bytes_per_s"),
    (GPUS + [{"id": "sw", "kind": "router"}], _links(), "kind"),
    ([{"id": "sw", "kind": "switch"}], [], "no node of kind gpu"),
])
def test_bad_graph_files_name_the_node_or_field(tmp_path, nodes, links, fragment):
    with pytest.raises(SpecError, match=fragment):
        load_graph(_write(tmp_path, nodes, links))


def test_malformed_graph_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(SpecError, match="not a node-link JSON graph"):
        load_graph(path)


def test_graph_file_cluster_routes_by_shortest_path(tmp_path):
    _write(tmp_path, GPUS + [{"id": "sw", "kind": "switch"}], _links())  # g.json
    raw = {"model": "llama3-8b", "training": {"seq_length": 4096, "global_batch_size": 64},
           "cluster": {**NODE, "gpus_per_node": 2, "num_nodes": 2, "graph": "g.json"}}
    job = job_from_mapping(raw, base_dir=tmp_path, source="t")
    topology = build_topology(job.cluster)
    routes = topology.route(np.array([0]), np.array([3]))
    assert len(routes.link) == 2 and list(topology.host) == [0, 0, 1, 1]


@pytest.mark.parametrize("change, fragment", [
    (lambda n, l: n[0].update(rank="zero"), "rank"),
    (lambda n, l: n[1].update(rank=0), "rank"),
    (lambda n, l: l[0].update(bytes_per_s=float("inf")), "bytes_per_s"),
])
def test_graph_file_values_are_checked(tmp_path, change, fragment):
    nodes = [dict(g) for g in GPUS] + [{"id": "sw", "kind": "switch"}]
    links = _links()
    change(nodes, links)
    with pytest.raises(SpecError, match=fragment):
        load_graph(_write(tmp_path, nodes, links))


def test_rail_optimized_with_mixed_nic_counts():
    """Node groups with 4 and 8 NICs: rails 4-7 exist on half the hosts only; no empty leaf."""
    raw = {"model": "llama3-8b", "training": {"seq_length": 4096, "global_batch_size": 64},
           "cluster": {"topology": "rail-optimized", "node_groups": [
               {**NODE, "num_nodes": 32, "inter_node": {**NODE["inter_node"], "nics_per_node": 4}},
               {**NODE, "num_nodes": 32}]}}
    topology = build_topology(job_from_mapping(raw, base_dir=Path("."), source="t").cluster)
    assert np.bincount(topology.nic_leaf).min() > 0
