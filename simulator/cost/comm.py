"""Collective times with a hierarchical alpha-beta model: NVLink inside a node, NICs across.

A group of n ranks that spans several nodes places `local` of its members on each node.
Ring algorithms (Patarasuk & Yuan 2009, "Bandwidth optimal all-reduce algorithms for clusters
of workstations"; Thakur et al. 2005, "Optimization of Collective Communication Operations in
MPICH"): over one link of bandwidth B and latency alpha,

    all-reduce      2(n-1)/n · S/B + 2(n-1)·alpha
    all-gather      (n-1)/n · S/B + (n-1)·alpha      (S: the gathered size)
    reduce-scatter  (n-1)/n · S/B + (n-1)·alpha      (S: the size before scattering)

Across nodes the hierarchical form runs the intra-node part on NVLink, the inter-node part on
S/local bytes over the NICs, then the intra-node part again (NCCL's tree/ring over nodes; the
2D algorithm of Jia et al. 2018, arXiv:1807.11205). Every GPU of a node is assumed to
communicate at once (all groups of an axis run together), so a GPU's inter-node bandwidth is
its node's NIC bandwidth divided by its GPUs. Issue 3 replaces this with costs on the graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from simulator.cost.profile import AnalyticProfile
from simulator.hardware import ClusterSpec

Collective = Literal["all_reduce", "all_gather", "reduce_scatter", "all_to_all", "p2p"]


@dataclass(frozen=True)
class GroupShape:
    """How a communication group lies on the nodes."""

    size: int  # ranks n
    local: int  # members per node (1 = every member on its own node)

    @property
    def nodes(self) -> int:
        return self.size // self.local


@dataclass(frozen=True)
class Links:
    """Effective bandwidths (NCCL efficiency applied) and latencies of a cluster's two tiers."""

    intra_bytes_per_s: float  # per GPU, NVLink
    intra_latency_s: float
    inter_bytes_per_s: float  # per GPU share of its node's NICs
    inter_latency_s: float


def cluster_links(cluster: ClusterSpec, profile: AnalyticProfile) -> Links:
    """The slowest node group's links set the pace of collectives that span groups."""
    groups = cluster.node_groups
    return Links(
        intra_bytes_per_s=min(g.intra_node.bytes_per_s for g in groups) * profile.intra_node_efficiency,
        intra_latency_s=max(g.intra_node.latency_s for g in groups),
        inter_bytes_per_s=min(g.inter_node_bytes_per_s_per_gpu for g in groups)
        * profile.inter_node_efficiency,
        inter_latency_s=max(g.inter_node.latency_s for g in groups),
    )


def group_shape(size: int, stride: int, gpus_per_node: int) -> GroupShape:
    """Members per node of a group of `size` ranks spaced `stride` ranks apart."""
    if size == 1:
        return GroupShape(1, 1)
    if stride >= gpus_per_node:
        return GroupShape(size, 1)
    local = min(size, max(1, gpus_per_node // stride))
    while size % local:  # a group that straddles nodes unevenly: the largest even share
        local -= 1
    return GroupShape(size, local)


def _ring(steps_fraction: float, steps: int, size_bytes: float, bytes_per_s: float,
          latency_s: float) -> float:
    return steps_fraction * size_bytes / bytes_per_s + steps * latency_s


def _gather_like(shape: GroupShape, size_bytes: float, links: Links) -> float:
    """All-gather or reduce-scatter of S bytes: (n-1)/n of S crosses each rank's link."""
    n, local, nodes = shape.size, shape.local, shape.nodes
    intra = _ring((local - 1) / local, local - 1, size_bytes, links.intra_bytes_per_s,
                  links.intra_latency_s) if local > 1 else 0.0
    inter = _ring((nodes - 1) / nodes, nodes - 1, size_bytes / local, links.inter_bytes_per_s,
                  links.inter_latency_s) if nodes > 1 else 0.0
    assert n == local * nodes
    return intra + inter


def collective_time_s(kind: Collective, size_bytes: float, shape: GroupShape, links: Links) -> float:
    """Time of one collective of `size_bytes` over a group of `shape`.

    all_reduce / all_gather / reduce_scatter: S is the full (unsharded) buffer.
    all_to_all: S is what one rank sends in total; the share for off-node peers uses the NICs.
    p2p: S bytes to one peer, over NVLink when local > 1 (same node) else the NIC."""
    n = shape.size
    if n == 1 or size_bytes <= 0:
        return 0.0
    if kind == "all_reduce":
        return 2 * _gather_like(shape, size_bytes, links)
    if kind in ("all_gather", "reduce_scatter"):
        return _gather_like(shape, size_bytes, links)
    if kind == "all_to_all":
        local = shape.local
        intra = (local - 1) / n * size_bytes / links.intra_bytes_per_s
        inter = (n - local) / n * size_bytes / links.inter_bytes_per_s
        latency = (local - 1) * links.intra_latency_s + (n - local) * links.inter_latency_s
        return intra + inter + latency
    assert kind == "p2p", kind
    if shape.local > 1:
        return size_bytes / links.intra_bytes_per_s + links.intra_latency_s
    return size_bytes / links.inter_bytes_per_s + links.inter_latency_s
