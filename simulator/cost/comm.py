"""Collective costs over the topology graph, with contention between concurrent groups.

A collective is a sequence of phases; in a phase every member of every group of an axis sends
one message to a peer at the same time (all tp groups of a step communicate together, so the
eight DP rings of a node share its spine uplinks). A link carrying k flows gives each 1/k of
its rate times NCCL's efficiency for that link kind; a flow runs at the rate of its most loaded
link and pays the latencies of its path. A group finishes a phase when its slowest flow does.

Algorithms (Thakur et al. 2005, "Optimization of Collective Communication Operations in MPICH";
Patarasuk & Yuan 2009 for the ring; NCCL's ring, tree and the two-level 2D ring of Jia et al.
2018, arXiv:1807.11205), for a group of n with message S, per-flow inverse bandwidth w (s/byte)
and latency a of the ring's slowest hop:

    ring all-reduce        2(n-1) steps of S/n:   2(n-1)/n · S·w + 2(n-1)·a
    ring all-gather / RS   (n-1) steps of S/n:    (n-1)/n · S·w + (n-1)·a
    tree all-reduce        2·S·w + 2·ceil(log2 n)·a (pipelined double binary tree)
    hierarchical           reduce-scatter inside each NVLink domain, all-reduce of S/local
                           across domains among same-position members, all-gather inside
                           the domain (a domain is a node, or a GB200 NVL72 rack of 18 nodes
                           behind NVLink switches: `topology.domain`)
    all-to-all             every ordered pair at once, S/n each: S/n · w_pairs + a
    broadcast              pipelined ring: S·w + (n-1)·a
    p2p                    S·w + a

With one bandwidth B on every hop the ring all-reduce is the closed form 2(n-1)/n · S/B +
2(n-1)·alpha. The cheapest algorithm is used, as NCCL's tuner does, and reported with the
algorithm and bus bandwidth nccl-tests would print (busbw = algbw · 2(n-1)/n for all-reduce,
(n-1)/n for all-gather, reduce-scatter and all-to-all, 1 for broadcast and p2p).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from parasim.simulator.cost.profile import AnalyticProfile
from parasim.simulator.hardware import ClusterSpec
from parasim.simulator.layout import Layout
from parasim.simulator.placement import axis_groups, axis_signature, pipeline_pairs
from parasim.simulator.topology import NVLINK, Topology, build_topology

Collective = Literal["all_reduce", "all_gather", "reduce_scatter", "all_to_all", "broadcast", "p2p"]
COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "broadcast", "p2p")


@dataclass(frozen=True)
class Phase:
    """One phase of concurrent flows: per group, its slowest flow's s/byte and latency.
    Only the pairs that can be the slowest for some message size are kept."""

    seconds_per_byte: tuple[float, ...]
    latency_s: tuple[float, ...]

    def time_s(self, bytes_per_flow: float) -> float:
        return max(bytes_per_flow * w + a for w, a in zip(self.seconds_per_byte, self.latency_s))

    @property
    def latency_max_s(self) -> float:
        return max(self.latency_s)


@dataclass(frozen=True)
class CollectiveCost:
    """One collective on one axis: time, the algorithm chosen, nccl-tests' bandwidths."""

    time_s: float
    algorithm: str
    algbw_bytes_per_s: float  # S / time
    busbw_bytes_per_s: float  # algbw times the collective's bus factor


def phase(topology: Topology, profile: AnalyticProfile, src: np.ndarray, dst: np.ndarray,
          group: np.ndarray) -> Phase:
    """All flows src[i] -> dst[i] at once; group[i] says which group flow i belongs to."""
    routes = topology.route(src, dst)
    efficiency = np.where(topology.kind == NVLINK, profile.intra_node_efficiency,
                          profile.inter_node_efficiency)
    load = np.bincount(routes.link, minlength=len(topology.capacity))
    per_entry = load[routes.link] / (topology.capacity[routes.link] * efficiency[routes.link])
    flows = len(src)
    worst = np.zeros(flows)
    np.maximum.at(worst, routes.flow, per_entry)
    latency = np.bincount(routes.flow, weights=topology.latency[routes.link], minlength=flows)
    groups = int(group.max()) + 1 if flows else 1
    group_worst, group_latency = np.zeros(groups), np.zeros(groups)
    np.maximum.at(group_worst, group, worst)
    np.maximum.at(group_latency, group, latency)
    pairs = np.unique(np.stack([group_worst, group_latency], axis=1), axis=0)
    return Phase(tuple(pairs[:, 0].tolist()), tuple(pairs[:, 1].tolist()))


def _ring(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each member sends to the next in its group (ring order = rank order)."""
    src = groups.ravel()
    dst = np.roll(groups, -1, axis=1).ravel()
    return src, dst, np.repeat(np.arange(len(groups)), groups.shape[1])


def _pairs(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every ordered pair of distinct members of each group."""
    count, n = groups.shape
    i, j = np.nonzero(~np.eye(n, dtype=bool))
    src = groups[:, i].ravel()
    dst = groups[:, j].ravel()
    return src, dst, np.repeat(np.arange(count), len(i))


@dataclass(frozen=True)
class GroupSplit:
    """Groups in two levels: `local` members under each label (an NVLink domain, a host) and
    `nodes` labels per group."""

    local: int
    nodes: int
    intra: np.ndarray  # (groups·nodes, local): members sharing a label
    inter: np.ndarray  # (groups·local, nodes): same position, one per label


def split_groups(labels: np.ndarray, groups: np.ndarray) -> GroupSplit | None:
    """The two-level view of `groups` by each member's label (`Topology.domain` or `.host`);
    None unless every group has the same number of members under each of its labels."""
    count, n = groups.shape
    hosts = labels[groups]
    order = np.argsort(hosts, axis=1, kind="stable")
    groups, hosts = np.take_along_axis(groups, order, 1), np.take_along_axis(hosts, order, 1)
    local = int(np.sum(hosts[0] == hosts[0, 0]))
    if n % local:
        return None
    nodes = n // local
    shaped = hosts.reshape(count, nodes, local)
    if not (shaped == shaped[:, :, :1]).all():
        return None
    intra = groups.reshape(count * nodes, local)
    inter = groups.reshape(count, nodes, local).transpose(0, 2, 1).reshape(count * local, nodes)
    return GroupSplit(local, nodes, intra, inter)


def _split(topology: Topology, groups: np.ndarray) -> GroupSplit | None:
    """The two-level view by NVLink domain, when both levels have more than one member."""
    split = split_groups(topology.domain, groups)
    return split if split is not None and split.local > 1 and split.nodes > 1 else None


class AxisNetwork:
    """The collectives of one axis of one layout on one cluster, phases cached."""

    def __init__(self, topology: Topology, profile: AnalyticProfile, groups: np.ndarray,
                 pairs: tuple[np.ndarray, np.ndarray] | None = None):
        self.topology, self.profile, self.groups = topology, profile, groups
        self.size = groups.shape[1]
        self._pairs = pairs
        self._phases: dict[str, Phase] = {}
        self._split = _split(topology, groups) if self.size > 2 else None
        domains = topology.domain[groups]
        # every group inside one NVLink domain (a node, or a multi-node NVLink rack)
        self.within_host = bool((domains == domains[:, :1]).all())

    def _phase(self, name: str) -> Phase:
        if name not in self._phases:
            flows = {
                "ring": lambda: _ring(self.groups),
                "pairs": lambda: _pairs(self.groups),
                "intra": lambda: _ring(self._split.intra),
                "inter": lambda: _ring(self._split.inter),
                "p2p": lambda: (*self._pairs, np.arange(len(self._pairs[0]))),
            }[name]()
            self._phases[name] = phase(self.topology, self.profile, *flows)
        return self._phases[name]

    def _candidates(self, kind: Collective, size: float) -> dict[str, float]:
        n = self.size
        if kind == "p2p":
            return {"p2p": self._phase("p2p").time_s(size)}
        if kind == "all_to_all":
            return {"pairwise": self._phase("pairs").time_s(size / n)}
        ring = self._phase("ring")
        if kind == "broadcast":
            return {"ring": ring.time_s(size) + (n - 2) * ring.latency_max_s}
        steps = 2 * (n - 1) if kind == "all_reduce" else n - 1
        out = {"ring": steps * ring.time_s(size / n)}
        if kind == "all_reduce":
            depth = math.ceil(math.log2(n))
            slowest = max(ring.seconds_per_byte)
            out["tree"] = 2 * size * slowest + 2 * depth * ring.latency_max_s
        if self._split is not None:
            local, nodes = self._split.local, self._split.nodes
            intra, inter = self._phase("intra"), self._phase("inter")
            if kind == "all_reduce":
                out["hierarchical"] = 2 * (local - 1) * intra.time_s(size / local) \
                    + 2 * (nodes - 1) * inter.time_s(size / n)
            else:
                out["hierarchical"] = (local - 1) * intra.time_s(size / local) \
                    + (nodes - 1) * inter.time_s(size / n)
        return out

    def cost(self, kind: Collective, size_bytes: float) -> CollectiveCost:
        """The cheapest algorithm's time for one collective of `size_bytes` on every group."""
        if (self.size == 1 and kind != "p2p") or size_bytes <= 0:
            return CollectiveCost(0.0, "none", math.inf, math.inf)
        candidates = self._candidates(kind, size_bytes)
        algorithm = min(candidates, key=candidates.get)
        time_s = candidates[algorithm]
        algbw = size_bytes / time_s if time_s > 0 else math.inf
        return CollectiveCost(time_s, algorithm, algbw, algbw * bus_factor(kind, self.size))

    def time_s(self, kind: Collective, size_bytes: float) -> float:
        return self.cost(kind, size_bytes).time_s


def bus_factor(kind: Collective, n: int) -> float:
    """nccl-tests' busbw / algbw (nccl-tests doc/PERFORMANCE.md)."""
    if kind == "all_reduce":
        return 2 * (n - 1) / n
    if kind in ("all_gather", "reduce_scatter", "all_to_all"):
        return (n - 1) / n
    return 1.0


_NETWORKS: dict[tuple, AxisNetwork] = {}


def axis_network(cluster: ClusterSpec, layout: Layout, axis: str,
                 profile: AnalyticProfile) -> AxisNetwork:
    """The cached network view of `axis` ("tp", "cp", "dp_cp", "ep", "edp", "pp_p2p").
    Layouts that place this axis alike (`placement.axis_signature`) share one entry."""
    key = (cluster, axis_signature(layout, axis), profile)
    network = _NETWORKS.get(key)
    if network is None:
        if len(_NETWORKS) > 4096:
            _NETWORKS.clear()
        topology = build_topology(cluster)
        if axis == "pp_p2p":
            network = AxisNetwork(topology, profile, axis_groups(layout, "pp"),
                                  pipeline_pairs(layout))
        else:
            network = AxisNetwork(topology, profile, axis_groups(layout, axis))
        _NETWORKS[key] = network
    return network


def clear_network_cache() -> None:
    """Forget every routed axis (benchmarks time a cold start with it)."""
    _NETWORKS.clear()
