"""`parasim topo`: the graph summary, where each parallel group lands, and the PNG.

Normal runs call `parasim.cli.main` in-process (capsys); user errors run the real command line
in a subprocess, so that "one line on stderr, exit 2, no traceback" is checked end to end.
Oracles: the example's bisection is N/2 flows at one NIC's line rate (rail-optimized,
non-blocking), and its groups follow the rank formula tp_i + tp·(dp_i + dp·pp_i).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from parasim.cli import main
from parasim.topo import ranks_text
from tests.test_cli_errors import MOE_MODEL, assert_user_error, job_with, run_cli, \
    write_job

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "llama3-70b-dgx-h100.yaml"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def topo(capsys, *args: str | Path) -> str:
    """`parasim topo ARGS` in-process: exit status 0 and nothing on stderr; returns stdout."""
    status = main(["topo", *map(str, args)])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert err == ""
    return out


def table_row(out: str, axis: str) -> list[str]:
    """The placement table's row of `axis`, split on runs of two or more spaces."""
    for line in out.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells[0] == axis:
            return cells
    raise AssertionError(f"no row for {axis} in\n{out}")


# The example job ----------------------------------------------------------------------------


def test_example_summary(capsys):
    out = topo(capsys, EXAMPLE)
    assert "rail-optimized fabric" in out
    assert re.search(r"GPUs\s+1024 h100-sxm on 128 hosts \(8 per host\)", out)
    assert "32 leaves (4 blocks x 8 rails)" in out
    assert "oversubscription leaf 1:1" in out
    # 512 flows, each at one 400 Gb/s NIC's line rate: 512 x 50 GB/s = 25.6 TB/s
    assert re.search(r"bisection\s+25\.6 TB/s: each GPU of the first half", out)


def test_example_placement(capsys):
    out = topo(capsys, EXAMPLE)
    tp, dp, pp = table_row(out, "tp"), table_row(out, "dp"), table_row(out, "pp")
    # axis, name, groups, size, per host, hosts, first group, collective, message, algorithm, ...
    assert tp[1:7] == ["tensor", "128", "8", "8", "1", "0-7"]
    assert dp[1:7] == ["data", "32", "32", "1", "32", "0, 8, 16, ... 248"]
    assert pp[1:7] == ["pipeline", "256", "4", "1", "4", "0, 256, 512, 768"]
    assert tp[7] == "all_reduce" and dp[7] == "all_reduce" and pp[7] == "p2p"
    # tp stays on NVLink (450 GB/s), dp and pp cross 400 Gb/s NICs (50 GB/s)
    assert 200 < float(tp[-1]) <= 450
    assert 20 < float(dp[-1]) <= 50 and 20 < float(pp[-1]) <= 50
    for axis in ("cp", "ep", "dp_cp", "edp"):  # size 1, or a repeat of dp
        with pytest.raises(AssertionError):
            table_row(out, axis)


def test_png_is_written(capsys, tmp_path):
    png = tmp_path / "example.png"
    topo(capsys, EXAMPLE, "--png", png)
    data = png.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000


def test_a_picture_of_many_hosts_says_how_many_it_left_out():
    """Issue 17: the PNG dropped hosts without a word. 128 hosts: the title says 32 drawn and
    96 left out, and the dp group's legend entry how many of its 32 hosts are not drawn."""
    from parasim.simulator.jobfile import load_job
    from parasim.topo import _fabric_figure, placements, topology_of

    job = load_job(EXAMPLE)
    topology = topology_of(job)
    first = {p.axis: p.groups[0] for p in placements(job, topology)}
    figure = _fabric_figure(job, topology, first)
    axes = figure.axes[0]
    assert "32 of 128 hosts drawn, 96 left out" in axes.get_title()
    legend = [t.get_text() for t in axes.get_legend().get_texts()]
    dp = next(t for t in legend if t.startswith("dp group 0"))
    drawn = int(re.search(r"on 32 hosts: (\d+) drawn, (\d+) left out", dp).group(1))
    assert 0 < drawn < 32 and next(t for t in legend if t.startswith("tp")).endswith("0-7")
    small = load_job(EXAMPLE, ["cluster.num_nodes=16", "training.global_batch_size=64"])
    figure = _fabric_figure(small, topology_of(small),
                            {p.axis: p.groups[0] for p in placements(small, topology_of(small))})
    assert "left out" not in figure.axes[0].get_title()  # every host drawn


def test_rail_only_cluster(capsys, tmp_path):
    png = tmp_path / "rail-only.png"
    out = topo(capsys, EXAMPLE, "--set", "cluster.topology=rail-only", "--png", png)
    assert "rail-only fabric" in out
    assert "8 rail switches, no spine, no core" in out
    assert re.search(r"bisection\s+25\.6 TB/s", out)  # r -> r + 512 stays on its rail
    assert table_row(out, "dp")[5] == "32"
    assert png.read_bytes().startswith(PNG_MAGIC)


def test_every_axis_of_a_moe_layout(capsys, tmp_path):
    job = job_with({"model": MOE_MODEL, "cluster.num_nodes": 4,
                    "parallel": {"tp": 2, "cp": 2, "ep": 4, "pp": 2}})
    out = topo(capsys, write_job(tmp_path, job))
    assert table_row(out, "cp")[6:8] == ["0, 2", "all_gather"]
    assert table_row(out, "ep")[6:8] == ["0, 2, 4, 6", "all_to_all"]
    assert table_row(out, "dp_cp")[3] == "8"
    assert table_row(out, "edp")[3] == "2"  # dp·cp / ep = 4·2 / 4


def test_job_without_parallel_prints_the_summary_only(capsys, tmp_path):
    job = job_with({"parallel": None})
    del job["parallel"]
    out = topo(capsys, write_job(tmp_path, job))
    assert "bisection" in out and "GPUs        16 h100-sxm" in out
    assert "placement" not in out and "all_reduce" not in out


def test_ranks_text():
    assert ranks_text(np.arange(8)) == "0-7"
    assert ranks_text(np.array([0, 256, 512, 768])) == "0, 256, 512, 768"
    assert ranks_text(np.arange(0, 256, 8)) == "0, 8, 16, ... 248"
    assert ranks_text(np.array([5])) == "5"
    assert ranks_text(np.array([0, 1, 8, 9, 16, 17, 24, 25])) == "0, 1, 8, 9, ... 25"


# User errors --------------------------------------------------------------------------------


def test_unwritable_png_path(tmp_path):
    result = run_cli("topo", EXAMPLE, "--png", tmp_path / "missing" / "out.png")
    assert_user_error(result, "--png", "cannot write", "missing")


def test_png_path_that_is_a_directory(tmp_path):
    assert_user_error(run_cli("topo", EXAMPLE, "--png", tmp_path), "--png", "cannot write")


def test_bad_override(tmp_path):
    assert_user_error(run_cli("topo", EXAMPLE, "--set", "parallel.tp=3"), "parallel.tp=3")


# Graph files --------------------------------------------------------------------------------


def small_graph(**top: Any) -> dict[str, Any]:
    """4 GPUs on 2 hosts: each host's GPUs meet at an NVSwitch, both NVSwitches at a switch."""
    nodes = [{"id": f"g{i}", "kind": "gpu", "rank": i, "host": f"h{i // 2}"} for i in range(4)]
    nodes += [{"id": f"nv{h}", "kind": "switch"} for h in range(2)] + [{"id": "sw",
                                                                        "kind": "switch"}]
    links = [{"source": f"g{i}", "target": f"nv{i // 2}", "bytes_per_s": 450e9,
              "latency_s": 1.75e-6, "link": "nvlink"} for i in range(4)]
    links += [{"source": f"nv{h}", "target": "sw", "bytes_per_s": 50e9, "latency_s": 4e-6}
              for h in range(2)]
    return {"directed": False, "multigraph": False, "graph": {}, "nodes": nodes,
            "links": links, **top}


def graph_job(tmp_path: Path, graph: Any, num_nodes: int = 2, parallel: bool = True) -> Path:
    """A job on the graph file: 2 hosts x 2 GPUs by default (tp 2, dp 2)."""
    text = graph if isinstance(graph, str) else json.dumps(graph)
    (tmp_path / "fabric.json").write_text(text, encoding="utf-8")
    job = job_with({"cluster.graph": "fabric.json", "cluster.num_nodes": num_nodes,
                    "cluster.gpus_per_node": 2, "parallel": {"tp": 2, "pp": 1}})
    if not parallel:
        del job["parallel"]
    return write_job(tmp_path, job)


def test_graph_file(capsys, tmp_path):
    png = tmp_path / "graph.png"
    out = topo(capsys, graph_job(tmp_path, small_graph()), "--png", png)
    assert "graph file" in out and "fabric.json" in out
    assert "4 h100-sxm on 2 hosts (2 per host)" in out
    assert "3 (tiers are not named in graph files)" in out
    assert "6 undirected: 4 nvlink, 2 network" in out
    # g0 -> g2 and g1 -> g3 share the 50 GB/s uplinks: 2 flows x 25 GB/s
    assert re.search(r"bisection\s+0\.05 TB/s", out)
    assert table_row(out, "tp")[4:7] == ["2", "1", "0, 1"]
    assert table_row(out, "dp")[4:7] == ["1", "2", "0, 2"]
    assert png.read_bytes().startswith(PNG_MAGIC)


def disconnect(graph: dict) -> dict:
    graph["links"] = [l for l in graph["links"] if l["source"] != "nv1"]
    return graph


def negative_rate(graph: dict) -> dict:
    graph["links"][4]["bytes_per_s"] = -1
    return graph


@pytest.mark.parametrize("graph, nodes, fragments", [
    ('{"nodes": [', 2, ("cluster.graph", "fabric.json", "not a node-link JSON graph")),
    (disconnect(small_graph()), 2, ("cluster.graph.nodes[g2]", "disconnected")),
    (negative_rate(small_graph()), 2, ("cluster.graph.links[nv0-sw].bytes_per_s=-1",
                                       "positive")),
    (small_graph(), 4, ("cluster.graph", "has 4 GPUs but the node groups have 8")),
], ids=["malformed-json", "disconnected", "negative-bytes-per-s", "gpu-count-mismatch"])
def test_bad_graph_file(tmp_path, graph, nodes, fragments):
    assert_user_error(run_cli("topo", graph_job(tmp_path, graph, nodes)), *fragments)


def big_graph(hosts: int) -> dict[str, Any]:
    """`hosts` hosts of 2 GPUs under one switch: 3·hosts + 1 nodes."""
    graph = {"directed": False, "multigraph": False, "graph": {}, "nodes": [{"id": "sw",
             "kind": "switch"}], "links": []}
    for h in range(hosts):
        graph["nodes"].append({"id": f"nv{h}", "kind": "switch"})
        graph["links"].append({"source": f"nv{h}", "target": "sw", "bytes_per_s": 50e9,
                               "latency_s": 4e-6})
        for g in (2 * h, 2 * h + 1):
            graph["nodes"].append({"id": f"g{g}", "kind": "gpu", "rank": g, "host": h})
            graph["links"].append({"source": f"g{g}", "target": f"nv{h}", "bytes_per_s": 450e9,
                                   "latency_s": 1.75e-6, "link": "nvlink"})
    return graph


def test_graph_too_large_to_draw(tmp_path):
    job = graph_job(tmp_path, big_graph(70), num_nodes=70, parallel=False)  # 211 nodes
    result = run_cli("topo", job, "--png", tmp_path / "big.png")
    assert_user_error(result, "--png", "211 nodes", "too many to draw")
    assert "bisection" in result.stdout  # the summary is still printed
    assert not (tmp_path / "big.png").exists()


# Graph-file shapes that once ended in tracebacks


def _multigraph_by_default() -> dict[str, Any]:
    graph = small_graph()
    del graph["multigraph"]  # node_link_graph then builds a MultiGraph
    return graph


def test_minimal_graph_file_without_multigraph_key(tmp_path):
    result = run_cli("topo", graph_job(tmp_path, _multigraph_by_default()))
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("graph", [small_graph(directed=True), [1, 2]],
                         ids=["directed", "not-a-mapping"])
def test_graph_file_shapes_are_user_errors(tmp_path, graph):
    assert_user_error(run_cli("topo", graph_job(tmp_path, graph)), "cluster.graph")
