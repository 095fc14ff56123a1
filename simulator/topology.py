"""The cluster as a network: GPUs, NVSwitch, NICs, leaf/spine/core switches, and routes.

Two kinds of topology share one interface (`route`, per-link capacity and latency arrays):

- `FabricTopology`, built from a `ClusterSpec`: hosts whose GPUs meet at an NVSwitch, NICs to
  a fabric that is a fat-tree (NICs of consecutive hosts share a leaf), rail-optimized (NIC i of
  every host in a block on leaf (block, i); NVIDIA DGX SuperPOD reference architecture) or
  rail-only (one switch per rail spanning all hosts, no spine: traffic between rails is first
  forwarded over NVLink inside the source host; Wang et al. 2023, "Optimized Network
  Architectures for Large Language Model Training with Billions of Parameters", arXiv:2307.12169;
  a rail is modelled as non-blocking whatever its size, as a rail-sized Clos would be).
  Leaves have `switch_radix` ports split down:up by the leaf tier's oversubscription; up to
  `switch_radix` leaves hang under one spine layer, beyond that pods of radix/2 leaves meet at a
  core layer (a three-tier folded Clos, Al-Fares et al. 2008). Parallel links between two tiers
  are bundled into one link of their summed bandwidth. Routes are computed from coordinates,
  vectorised, so 16,384 GPUs route in milliseconds; `graph()` gives the networkx graph.
- `GraphTopology`, read from a node-link JSON file for clusters parasim does not know: routes
  are shortest paths by latency.

Links are directed (full duplex): link 2k is an edge one way, 2k+1 the other.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from parasim.simulator.errors import SpecError
from parasim.simulator.hardware import ClusterSpec

if TYPE_CHECKING:  # networkx is imported where a graph is built: estimates route without it
    import networkx as nx

NVLINK, NETWORK = 0, 1  # link kinds: NCCL reaches a different share of each link's rate


@dataclass
class Routes:
    """Flows and the links they cross, as a sparse flow x link incidence (COO)."""

    flow: np.ndarray  # index of the flow of each entry
    link: np.ndarray  # directed link id of each entry


class Topology:
    """Directed links with capacities and latencies, and routes between GPUs."""

    num_gpus: int
    host: np.ndarray  # host index of every GPU
    domain: np.ndarray  # NVLink domain of every GPU (its host, unless domains span nodes)
    capacity: np.ndarray  # bytes/s of every directed link
    latency: np.ndarray  # seconds of every directed link
    kind: np.ndarray  # NVLINK or NETWORK per link

    def route(self, src: np.ndarray, dst: np.ndarray) -> Routes:
        raise NotImplementedError

    def graph(self) -> nx.Graph:
        raise NotImplementedError

    def link_name(self, link: int) -> str:
        raise NotImplementedError


# Built fabrics -------------------------------------------------------------------------------


@dataclass
class _Tiers:
    """Link ids by tier: each array is indexed by the owner (GPU, NIC, leaf, pod)."""

    gpu_up: np.ndarray = field(default_factory=lambda: np.empty(0, int))  # GPU -> NVSwitch
    gpu_down: np.ndarray = field(default_factory=lambda: np.empty(0, int))
    nic_up: np.ndarray = field(default_factory=lambda: np.empty(0, int))  # NIC -> leaf
    nic_down: np.ndarray = field(default_factory=lambda: np.empty(0, int))
    leaf_up: np.ndarray = field(default_factory=lambda: np.empty(0, int))  # leaf -> spine
    leaf_down: np.ndarray = field(default_factory=lambda: np.empty(0, int))
    pod_up: np.ndarray = field(default_factory=lambda: np.empty(0, int))  # spine -> core
    pod_down: np.ndarray = field(default_factory=lambda: np.empty(0, int))


class FabricTopology(Topology):
    """A cluster built from its spec; see the module docstring for the shapes."""

    def __init__(self, cluster: ClusterSpec):
        self.cluster = cluster
        self._links: list[tuple[str, str, float, float, int]] = []  # (a, b, bytes/s, s, kind)
        self._place_gpus()
        self._wire()
        self.capacity = np.array([l[2] for l in self._links] or [1.0])
        self.latency = np.array([l[3] for l in self._links] or [0.0])
        self.kind = np.array([l[4] for l in self._links] or [NVLINK])

    # Coordinates: which host, NIC, rail, leaf and pod every GPU reaches the fabric through.

    def _place_gpus(self) -> None:
        hosts, local, gpn, nic_of, nic_rate, nic_host, nic_rail = [], [], [], [], [], [], []
        domains = []
        host = domain = 0
        for group in self.cluster.node_groups:
            g, n = group.gpus_per_node, group.nics_per_node
            logical = min(g, n)  # several NICs per GPU are bundled into one logical NIC
            rate = group.inter_node.bytes_per_s * n / logical
            nodes_per_domain = group.domain_gpus // g
            for node in range(group.num_nodes):
                base = len(nic_rate)
                for i in range(g):
                    hosts.append(host)
                    domains.append(domain + node // nodes_per_domain)
                    local.append(i)
                    gpn.append(g)
                    nic_of.append(base + i * logical // g)
                nic_rate += [rate] * logical
                nic_host += [host] * logical
                nic_rail += list(range(logical))
                host += 1
            domain += group.num_nodes // nodes_per_domain
        self.num_gpus, self.num_hosts = len(hosts), host
        self.host, self.local = np.array(hosts), np.array(local)
        self.domain, self.num_domains = np.array(domains), domain
        self.gpus_per_host = np.array(gpn)
        self.nic_of_gpu = np.array(nic_of)
        self.nic_rate, self.nic_host = np.array(nic_rate), np.array(nic_host)
        self.nic_rail = np.array(nic_rail)
        self.nic_plane = self.nic_rail % self.cluster.planes
        self.host_first_gpu = np.searchsorted(self.host, np.arange(host))
        self.rail_of_gpu = self.nic_rail[self.nic_of_gpu]
        self.plane_of_gpu = self.nic_plane[self.nic_of_gpu]
        # the first GPU of each (host, rail) and (host, plane): where forwarding relays a flow
        self.rail_gpu = _first_gpu(self.host, self.rail_of_gpu, host)
        self.plane_gpu = _first_gpu(self.host, self.plane_of_gpu, host)
        self._place_nics()

    def _place_nics(self) -> None:
        """Leaves and pods of every NIC. With planes, each plane is a fabric of its own (its
        own leaves, spines and core) built the same way from the NICs on it."""
        c = self.cluster
        radix = c.switch_radix
        leaf_over = c.oversubscription[0]
        self.leaf_down_ports = max(1, int(radix * leaf_over / (1 + leaf_over)))
        self.leaf_up_ports = max(1, radix - self.leaf_down_ports)
        if c.topology == "rail-only":
            leaf = self.nic_rail.copy()  # one switch per rail, spanning all hosts
        elif c.topology == "rail-optimized":
            block = self.nic_host // self.leaf_down_ports
            leaf = block * (self.nic_rail.max() + 1) + self.nic_rail
        else:  # consecutive NICs of one plane share a leaf
            leaf = _rank_within(self.nic_plane) // self.leaf_down_ports
        stride = int(leaf.max()) + 1
        leaves, self.nic_leaf = np.unique(self.nic_plane * stride + leaf,
                                          return_inverse=True)  # no empty leaves
        self.num_leaves = len(leaves)
        self.leaf_plane = leaves // stride  # leaf ids run plane by plane
        per_plane = np.bincount(self.leaf_plane)
        self.has_spine = c.topology != "rail-only" and bool((per_plane > 1).any())
        leaves_per_pod = np.where(per_plane[self.leaf_plane] <= radix, radix, max(1, radix // 2))
        local_pod = _rank_within(self.leaf_plane) // leaves_per_pod
        stride = int(local_pod.max()) + 1
        pods, self.leaf_pod = np.unique(self.leaf_plane * stride + local_pod,
                                        return_inverse=True)
        self.num_pods = len(pods)
        self.pod_plane = pods // stride
        self.has_core = self.has_spine and bool((np.bincount(self.pod_plane) > 1).any())

    # Links.

    def _add(self, a: str, b: str, bytes_per_s: float, latency_s: float, kind: int) -> int:
        if not bytes_per_s > 0:
            raise SpecError("cluster", f"{a}-{b}", "a link without bandwidth", "bandwidth > 0")
        self._links.append((a, b, bytes_per_s, latency_s, kind))
        self._links.append((b, a, bytes_per_s, latency_s, kind))
        return len(self._links) - 2

    def _wire(self) -> None:
        c, t = self.cluster, _Tiers()
        groups = [c.group_of_rank(int(g)) for g in self.host_first_gpu]
        up = [self._add(f"gpu{g}", f"nvswitch{self.domain[g]}",
                        groups[self.host[g]].intra_node.bytes_per_s,
                        groups[self.host[g]].intra_node.latency_s / 2, NVLINK)
              for g in range(self.num_gpus)]
        t.gpu_up = np.array(up, dtype=int)
        t.gpu_down = t.gpu_up + 1
        nic_latency = np.array([groups[h].inter_node.latency_s / 2 for h in self.nic_host])
        up = [self._add(f"nic{n}", f"leaf{self.nic_leaf[n]}", self.nic_rate[n], nic_latency[n],
                        NETWORK) for n in range(len(self.nic_rate))]
        t.nic_up = np.array(up, dtype=int)
        t.nic_down = t.nic_up + 1
        if self.has_spine:
            down = np.bincount(self.nic_leaf, weights=self.nic_rate, minlength=self.num_leaves)
            over = c.oversubscription[0]
            up = [self._add(f"leaf{l}", f"spine{self.leaf_pod[l]}", down[l] / over, 0.0, NETWORK)
                  for l in range(self.num_leaves)]
            t.leaf_up = np.array(up, dtype=int)
            t.leaf_down = t.leaf_up + 1
            if self.has_core:
                pod_down = np.bincount(self.leaf_pod, weights=down / over, minlength=self.num_pods)
                over2 = c.oversubscription[1] if len(c.oversubscription) > 1 else 1.0
                core = ["core"] if c.planes == 1 else [f"core{k}" for k in range(c.planes)]
                up = [self._add(f"spine{p}", core[self.pod_plane[p]], pod_down[p] / over2, 0.0,
                                NETWORK) for p in range(self.num_pods)]
                t.pod_up = np.array(up, dtype=int)
                t.pod_down = t.pod_up + 1
        self.tiers = t

    def link_name(self, link: int) -> str:
        a, b = self._links[link][:2]
        return f"{a}->{b}"

    # Routes.

    def route(self, src: np.ndarray, dst: np.ndarray) -> Routes:
        """Each flow src[i] -> dst[i]: NVLink inside an NVLink domain (a node, or a rack of
        nodes behind NVLink switches); else NIC, leaf, (spine, (core)) of the destination's
        plane, first forwarded over NVLink to the source host's GPU on that plane."""
        src, dst = np.asarray(src, dtype=int), np.asarray(dst, dtype=int)
        flows = np.arange(len(src))
        parts: list[tuple[np.ndarray, np.ndarray]] = []
        t = self.tiers
        same_domain = self.domain[src] == self.domain[dst]
        if self.cluster.topology == "rail-only":
            src = self._forward(src, dst, same_domain, parts, flows, self.rail_of_gpu,
                                self.rail_gpu)
        elif self.cluster.planes > 1:
            src = self._forward(src, dst, same_domain, parts, flows, self.plane_of_gpu,
                                self.plane_gpu)
        remote = ~same_domain & (src != dst)
        inside = same_domain & (src != dst)
        parts += [(flows[inside], t.gpu_up[src[inside]]), (flows[inside], t.gpu_down[dst[inside]])]
        f, s, d = flows[remote], src[remote], dst[remote]
        nic_s, nic_d = self.nic_of_gpu[s], self.nic_of_gpu[d]
        parts += [(f, t.nic_up[nic_s]), (f, t.nic_down[nic_d])]
        if self.has_spine:
            leaf_s, leaf_d = self.nic_leaf[nic_s], self.nic_leaf[nic_d]
            cross = leaf_s != leaf_d
            parts += [(f[cross], t.leaf_up[leaf_s[cross]]), (f[cross], t.leaf_down[leaf_d[cross]])]
            if self.has_core:
                pod_s, pod_d = self.leaf_pod[leaf_s], self.leaf_pod[leaf_d]
                far = pod_s != pod_d
                parts += [(f[far], t.pod_up[pod_s[far]]), (f[far], t.pod_down[pod_d[far]])]
        return Routes(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))

    def _forward(self, src, dst, same_domain, parts, flows, lane, lane_gpu) -> np.ndarray:
        """A flow leaving the NVLink domain on another rail (rail-only) or plane (multi-plane)
        than the destination's first crosses NVLink to the GPU of its own host on the
        destination's rail / plane (NCCL's PXN; DeepSeek's multi-plane fat tree,
        arXiv:2505.09343 §5.1: traffic between planes is forwarded inside the node)."""
        hop = ~same_domain & (lane[src] != lane[dst])
        if not hop.any():
            return src
        relay = lane_gpu[self.host[src[hop]], lane[dst[hop]]]
        if (relay < 0).any():
            raise SpecError("cluster.topology", self.cluster.topology, "a host lacks the "
                            "destination's rail or plane (node groups with different NIC "
                            "counts)", "node groups with equal NICs per node, or fat-tree "
                            "with planes: 1")
        parts += [(flows[hop], self.tiers.gpu_up[src[hop]]), (flows[hop], self.tiers.gpu_down[relay])]
        src = src.copy()
        src[hop] = relay
        return src

    def graph(self) -> nx.Graph:
        """The networkx graph: nodes with `kind`, edges with `bytes_per_s` and `latency_s`."""
        import networkx as nx

        g = nx.Graph()
        for i in range(0, len(self._links), 2):
            a, b, rate, latency, kind = self._links[i]
            g.add_edge(a, b, bytes_per_s=rate, latency_s=latency,
                       link="nvlink" if kind == NVLINK else "network")
        for gpu in range(self.num_gpus):
            g.add_edge(f"gpu{gpu}", f"nic{self.nic_of_gpu[gpu]}", bytes_per_s=float(
                self.nic_rate[self.nic_of_gpu[gpu]]), latency_s=0.0, link="pcie")
        for node in g.nodes:
            g.nodes[node]["kind"] = _kind_of(node)
            if node.startswith("gpu"):
                rank = int(node[3:])
                g.nodes[node].update(rank=rank, host=int(self.host[rank]),
                                     domain=int(self.domain[rank]))
        return g


def _first_gpu(host: np.ndarray, lane: np.ndarray, hosts: int) -> np.ndarray:
    """(hosts, lanes) table of the first GPU of each host on each lane; -1 where none."""
    table = np.full((hosts, int(lane.max()) + 1), -1)
    table[host[::-1], lane[::-1]] = np.arange(len(host))[::-1]
    return table


def _kind_of(name: str) -> str:
    for prefix in ("gpu", "nvswitch", "nic", "leaf", "spine", "core"):
        if name.startswith(prefix):
            return "gpu" if prefix == "gpu" else "nic" if prefix == "nic" else "switch"
    raise AssertionError(name)


# Graphs from files ---------------------------------------------------------------------------


class GraphTopology(Topology):
    """An explicit graph: GPUs (`kind: gpu`, ordered by `rank`, optional `host`), switches and
    NICs; edges with `bytes_per_s` and `latency_s`. Routes are shortest paths by latency."""

    def __init__(self, graph: nx.Graph, source: str):
        self._graph, self.source = graph, source
        gpus = [n for n, d in graph.nodes(data=True) if d.get("kind") == "gpu"]
        gpus = sorted(gpus, key=lambda n: graph.nodes[n].get("rank", gpus.index(n)))
        self.gpus = gpus
        self.num_gpus = len(gpus)
        hosts = [graph.nodes[n].get("host", n) for n in gpus]
        index = {h: i for i, h in enumerate(dict.fromkeys(hosts))}
        self.host = np.array([index[h] for h in hosts])
        self.domain = self.host  # a file's NVLink links route as its edges say
        self._edge_ids: dict[tuple[Any, Any], int] = {}
        caps, lats, kinds, self._names = [], [], [], []
        for a, b, data in graph.edges(data=True):
            for u, v in ((a, b), (b, a)):
                self._edge_ids[(u, v)] = len(caps)
                caps.append(data["bytes_per_s"])
                lats.append(data["latency_s"])
                kinds.append(NVLINK if data.get("link") == "nvlink" else NETWORK)
                self._names.append(f"{u}->{v}")
        self.capacity, self.latency, self.kind = np.array(caps), np.array(lats), np.array(kinds)
        self._path = lru_cache(maxsize=None)(self._shortest)

    def _shortest(self, a: int, b: int) -> tuple[int, ...]:
        import networkx as nx

        nodes = nx.shortest_path(self._graph, self.gpus[a], self.gpus[b], weight=_hop_weight)
        return tuple(self._edge_ids[(u, v)] for u, v in zip(nodes, nodes[1:]))

    def route(self, src: np.ndarray, dst: np.ndarray) -> Routes:
        flows, links = [], []
        for i, (a, b) in enumerate(zip(np.asarray(src).tolist(), np.asarray(dst).tolist())):
            path = self._path(a, b) if a != b else ()
            flows += [i] * len(path)
            links += path
        return Routes(np.array(flows, dtype=int), np.array(links, dtype=int))

    def graph(self) -> nx.Graph:
        return self._graph

    def link_name(self, link: int) -> str:
        return self._names[link]


def _hop_weight(_u, _v, data) -> float:
    """Latency, plus a nanosecond per hop so that equal-latency routes take the fewest hops."""
    return data["latency_s"] + 1e-9


def load_graph(path: Path, field: str = "cluster.graph") -> nx.Graph:
    """A node-link JSON graph, checked: GPUs present and ranked, numbers positive and finite,
    every GPU reachable."""
    import networkx as nx

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        graph = nx.node_link_graph(data, directed=False, multigraph=False, edges="links")
    except OSError as err:
        raise SpecError(field, str(path), f"cannot read: {err.strerror}", "a readable file") from None
    except (ValueError, KeyError, TypeError, AttributeError, nx.NetworkXError) as err:
        raise SpecError(field, str(path), f"not a node-link JSON graph: {err}",
                        '{"nodes": [{"id": ..., "kind": "gpu"}], "links": [{"source", "target", '
                        '"bytes_per_s", "latency_s"}]}') from None
    if graph.is_directed() or graph.is_multigraph():
        raise SpecError(f"{field}.directed", str(path), "links are full duplex: the graph must "
                        "be undirected, one link per pair", '"directed": false, "multigraph": false')
    check_graph(graph, str(path), field)
    return graph


def check_graph(graph: nx.Graph, source: str, field: str) -> None:
    gpus = [n for n, d in graph.nodes(data=True) if d.get("kind") == "gpu"]
    if not gpus:
        raise SpecError(field, source, "has no node of kind gpu", 'nodes with "kind": "gpu"')
    for node, data in graph.nodes(data=True):
        if data.get("kind") not in ("gpu", "switch", "nic"):
            raise SpecError(f"{field}.nodes[{node}].kind", data.get("kind"), "unknown node kind",
                            "gpu, switch, nic")
    ranks = [graph.nodes[n].get("rank", i) for i, n in enumerate(gpus)]
    if sorted(r for r in ranks if isinstance(r, int) and not isinstance(r, bool)) != list(
            range(len(gpus))):
        raise SpecError(f"{field}.nodes[*].rank", source, "GPU ranks must be the integers "
                        f"0..{len(gpus) - 1}, each once", "omit rank (file order) or number them")
    for a, b, data in graph.edges(data=True):
        for key in ("bytes_per_s", "latency_s"):
            value = data.get(key)
            minimum_ok = value is not None and not isinstance(value, bool) and isinstance(
                value, (int, float)) and math.isfinite(value) and (
                value > 0 if key == "bytes_per_s" else value >= 0)
            if not minimum_ok:
                raise SpecError(f"{field}.links[{a}-{b}].{key}", value,
                                "must be a positive number" if key == "bytes_per_s"
                                else "must be a number >= 0", "bytes per second > 0, seconds >= 0")
    import networkx as nx

    component = nx.node_connected_component(graph, gpus[0])
    for gpu in gpus[1:]:
        if gpu not in component:
            raise SpecError(f"{field}.nodes[{gpu}]", source,
                            f"GPU {gpu} has no path to GPU {gpus[0]} (the graph is disconnected)",
                            "a connected graph")


# Entry point ---------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def build_topology(cluster: ClusterSpec) -> Topology:
    """The cluster's topology, built once per cluster spec."""
    if cluster.graph_file is None:
        return FabricTopology(cluster)
    graph = load_graph(Path(cluster.graph_file))
    topology = GraphTopology(graph, cluster.graph_file)
    if topology.num_gpus != cluster.world_size:
        raise SpecError("cluster.graph", cluster.graph_file,
                        f"has {topology.num_gpus} GPUs but the node groups have "
                        f"{cluster.world_size}", "as many gpu nodes as num_nodes x gpus_per_node")
    return topology


def bisection_bytes_per_s(topology: Topology) -> float:
    """Throughput when each GPU of the first half of the ranks sends to its partner in the
    second half (rank r to r + N/2) at once: N/2 flows at their bottleneck share."""
    n = topology.num_gpus
    if n < 2:
        return math.inf
    half = n // 2
    src = np.arange(half)
    routes = topology.route(src, src + half)
    load = np.bincount(routes.link, minlength=len(topology.capacity))
    share = np.full(half, np.inf)
    np.minimum.at(share, routes.flow, topology.capacity[routes.link] / load[routes.link])
    return float(np.sum(share[np.isfinite(share)]))


def _rank_within(label: np.ndarray) -> np.ndarray:
    """Each element's index among the elements with its label, in order."""
    order = np.argsort(label, kind="stable")
    ranks = np.empty(len(label), int)
    ranks[order] = np.arange(len(label)) - np.searchsorted(label[order], label[order])
    return ranks
