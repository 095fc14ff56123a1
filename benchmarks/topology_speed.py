"""Topology speed and memory for 16,384 H100s (2,048 DGX H100 nodes, rail-optimized).

Targets (issue "Network topology graph"): the graph builds in a few seconds, one collective
cost query after caching takes under 50 µs, and the 16,384-GPU graph stays under 1 GiB of
resident memory. Run: python3 benchmarks/topology_speed.py
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path


from parasim.simulator.cost.comm import axis_network
from parasim.simulator.cost.profile import analytic_profile
from parasim.simulator.jobfile import job_from_mapping
from parasim.simulator.topology import FabricTopology

JOB = {
    "model": "llama3.1-405b",
    "cluster": {"base": "dgx-h100", "num_nodes": 2048},
    "training": {"seq_length": 8192, "global_batch_size": 2048},
    "parallel": {"tp": 8, "pp": 16},
}


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    job = job_from_mapping(JOB, base_dir=Path("."), source="benchmark")
    before = rss_mib()
    topology, fabric_s = timed(lambda: FabricTopology(job.cluster))
    graph, graph_s = timed(topology.graph)
    after = rss_mib()
    print(f"16384 GPUs, {job.cluster.topology}: fabric (routing arrays) built in {fabric_s:.3f} s; "
          f"networkx graph ({graph.number_of_nodes()} nodes, {graph.number_of_edges()} edges) "
          f"in {graph_s:.2f} s; resident memory +{after - before:.0f} MiB (total {after:.0f} MiB, "
          f"target < 1024)")
    profile = analytic_profile()
    for axis, kind in (("tp", "all_reduce"), ("dp_cp", "all_reduce"), ("pp_p2p", "p2p")):
        net, first_s = timed(lambda: axis_network(job.cluster, job.layout, axis, profile))
        _, phase_s = timed(lambda: net.time_s(kind, 1e8))
        samples = []
        for i in range(2000):
            start = time.perf_counter()
            net.time_s(kind, 1e6 + i)
            samples.append(time.perf_counter() - start)
        median_us = statistics.median(samples) * 1e6
        print(f"{axis:6s} {kind:10s}: groups placed in {first_s * 1e3:.1f} ms, phases routed in "
              f"{phase_s * 1e3:.1f} ms; cached query median {median_us:.1f} µs (target < 50): "
              f"{'met' if median_us < 50 else 'MISSED'}")


if __name__ == "__main__":
    main()
