"""`parasim topo`: the cluster's network and where each parallel group of the layout lands.

Three parts, each from the simulator's own objects (nothing here models the network again):

- the graph summary: GPUs, hosts, NICs, switches by tier, links by kind and rate, leaf
  oversubscription, switch radix and the bisection bandwidth of `simulator.topology`;
- the placement: for every parallel axis of size > 1, its groups (`simulator.placement`),
  how they spread over hosts, and what its main collective costs on the graph for a
  representative message (`simulator.cost.comm`), printed as nccl-tests prints it;
- a PNG drawn with matplotlib: switch tiers above host boxes, the hosts of the first group
  of every axis highlighted (a node-link drawing for graph files).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from parasim.report import duration, table
from parasim.simulator.cost.comm import CollectiveCost, axis_network
from parasim.simulator.cost.profile import analytic_profile
from parasim.simulator.errors import SpecError
from parasim.simulator.files import save_figure
from parasim.simulator.job import Job
from parasim.simulator.placement import AXIS_NAMES, axis_groups
from parasim.simulator.step_time import message_bytes, step_context, ulysses_bytes
from parasim.simulator.topology import FabricTopology, Topology, bisection_bytes_per_s, build_topology

if TYPE_CHECKING:
    import networkx as nx
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

GiB, MiB, KiB = 2**30, 2**20, 2**10
GRADIENT_BUCKET_BYTES = GiB  # the data-parallel axes' representative all-reduce
SHOWN_AXES = ("tp", "cp", "ep", "dp", "dp_cp", "edp", "pp")  # printing order
MAX_DRAWN_HOSTS = 32  # host boxes in a fabric picture
MAX_DRAWN_LEAVES = 64  # leaf switches in a fabric picture
MAX_DRAWN_NODES = 200  # nodes of a graph file that a spring layout still draws legibly
AXIS_COLOURS = {"tp": "tab:blue", "cp": "tab:purple", "ep": "tab:olive", "dp": "tab:green",
                "dp_cp": "tab:cyan", "edp": "tab:brown", "pp": "tab:red"}


def topology_of(job: Job) -> Topology:
    """The job's cluster as a graph (`SpecError` for a bad graph file)."""
    return build_topology(job.cluster)


# Graph summary ------------------------------------------------------------------------------


def format_summary(job: Job, topology: Topology) -> str:
    """The graph summary: counts, rates, oversubscription, radix, bisection bandwidth."""
    graph = topology.graph()
    lines = [f"{job.source or 'job'}: cluster {job.cluster.name}, {_fabric_kind(job, topology)}",
             f"  GPUs        {_gpu_line(job, topology, graph)}",
             f"  switches    {_switch_line(topology, graph)}",
             f"  links       {_link_line(topology, graph)}",
             f"  rates       {_rate_line(job, topology, graph)}"]
    if isinstance(topology, FabricTopology):
        lines.append(f"  leaves      {_leaf_line(job, topology)}")
    lines.append(f"  bisection   {_bisection_line(topology)}")
    return "\n".join(lines)


def _fabric_kind(job: Job, topology: Topology) -> str:
    if isinstance(topology, FabricTopology):
        return f"{job.cluster.topology} fabric"
    return f"graph file {job.cluster.graph_file}"


def _num_hosts(topology: Topology) -> int:
    return len(np.unique(topology.host))


def _gpu_line(job: Job, topology: Topology, graph: nx.Graph) -> str:
    nics = sum(1 for _, kind in graph.nodes(data="kind") if kind == "nic")
    names = " + ".join(dict.fromkeys(g.gpu.name for g in job.cluster.node_groups))
    spread = _range(np.bincount(topology.host))
    return (f"{topology.num_gpus} {names} on {_n(_num_hosts(topology), 'host')} ({spread} per "
            f"host), {_n(nics, 'NIC node')} in the graph")


def _n(count: int, noun: str, plural: str | None = None) -> str:
    """`1 host`, `2 hosts`."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"


def _switch_line(topology: Topology, graph: nx.Graph) -> str:
    switches = sum(1 for _, kind in graph.nodes(data="kind") if kind == "switch")
    if not isinstance(topology, FabricTopology):
        return f"{switches} (tiers are not named in graph files)"
    t = topology
    spine = f"a spine layer per pod ({_n(t.num_pods, 'pod')})" if t.has_spine else "no spine"
    core = "a core layer" if t.has_core else "no core"
    planes = f" over {t.cluster.planes} independent planes" if t.cluster.planes > 1 else ""
    return (f"{_nvswitch_text(t)}, {_leaves_text(topology)}{planes}, {spine}, "
            f"{core}: {switches} switch nodes (each tier's parallel links bundled)")


def _nvswitch_text(t: FabricTopology) -> str:
    """One NVSwitch per host, or one NVLink switch fabric per multi-node NVLink domain."""
    if t.num_domains == t.num_hosts:
        return f"{t.num_hosts} NVSwitch (one per host)"
    sizes = _range(np.bincount(t.domain))
    hosts = _range(np.array([len(np.unique(t.host[t.domain == d]))
                             for d in range(t.num_domains)]))
    return (f"{t.num_domains} NVLink switch fabric{'s' if t.num_domains > 1 else ''} "
            f"({sizes}-GPU NVLink domains of {hosts} hosts each)")


def _leaves_text(t: FabricTopology) -> str:
    rails = int(t.nic_rail.max()) + 1
    if t.cluster.topology == "rail-only":
        return _n(t.num_leaves, "rail switch", "rail switches")
    leaves = _n(t.num_leaves, "leaf", "leaves")
    if t.cluster.topology == "rail-optimized":
        return f"{leaves} ({_n(t.num_leaves // rails, 'block')} x {_n(rails, 'rail')})"
    return leaves


def _edge_label(topology: Topology, a: str, b: str, data: dict) -> str:
    """nvlink / pcie, or in a built fabric the two tiers a network link joins (`leaf-spine`)."""
    link = data.get("link", "network")
    if link != "network" or not isinstance(topology, FabricTopology):
        return link
    tiers = ("nic", "leaf", "spine", "core")
    ends = sorted((a.rstrip("0123456789"), b.rstrip("0123456789")),
                  key=lambda t: tiers.index(t) if t in tiers else -1)
    return "-".join(ends)


def _link_line(topology: Topology, graph: nx.Graph) -> str:
    labels = Counter(_edge_label(topology, a, b, d) for a, b, d in graph.edges(data=True))
    parts = ", ".join(f"{n} {label}" for label, n in labels.items())
    return f"{graph.number_of_edges()} undirected: {parts}"


def _rate_line(job: Job, topology: Topology, graph: nx.Graph) -> str:
    if isinstance(topology, FabricTopology):
        return "; ".join(
            f"{_n(g.num_nodes, 'node')} of {g.gpus_per_node} {g.gpu.name}: NVLink "
            f"{g.intra_node.bytes_per_s / 1e9:g} GB/s per GPU, {_n(g.nics_per_node, 'NIC')} x "
            f"{g.inter_node.bytes_per_s * 8 / 1e9:g} Gb/s per host"
            for g in job.cluster.node_groups)
    rates: dict[str, list[float]] = {}
    for _, _, data in graph.edges(data=True):
        rates.setdefault(data.get("link", "network"), []).append(data["bytes_per_s"])
    return "; ".join(f"{label} {_range(np.array(r) / 1e9, '{:.4g}')} GB/s"
                     for label, r in rates.items())


def _leaf_line(job: Job, t: FabricTopology) -> str:
    c = job.cluster
    if c.topology == "rail-only":
        line = (f"one switch per rail (radix {c.switch_radix}), no spine: "
                f"no oversubscription applies")
        if t.num_hosts > c.switch_radix:
            line += f"; NB each rail switch reaches {t.num_hosts} hosts, more than its radix"
        return line
    over = f"leaf {c.oversubscription[0]:g}:1"
    if t.has_core:
        spine = c.oversubscription[1] if len(c.oversubscription) > 1 else 1.0
        over += f", spine {spine:g}:1"
    return (f"radix {c.switch_radix}: {t.leaf_down_ports} ports down, {t.leaf_up_ports} up; "
            f"oversubscription {over}")


def _bisection_line(topology: Topology) -> str:
    n = topology.num_gpus
    half = n // 2
    if half == 0:
        return "none (one GPU)"
    tb = bisection_bytes_per_s(topology) / 1e12
    return (f"{tb:.3g} TB/s: each GPU of the first half of the ranks (0-{half - 1}) sending to "
            f"its partner in the second half (rank r to r + {half}) at once, at line rate")


def _range(values: np.ndarray, fmt: str = "{}") -> str:
    lo, hi = values.min(), values.max()
    return fmt.format(lo) if lo == hi else f"{fmt.format(lo)}-{fmt.format(hi)}"


# Placement ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """The representative collective of an axis: what it moves, how much, on which network."""

    network_axis: str  # the `axis_network` name ("pp_p2p" for pipeline sends)
    kind: str  # the collective, as `AxisNetwork.cost` names it
    size_bytes: float
    what: str  # what the message is, for the footnote


@dataclass(frozen=True)
class AxisPlacement:
    """Where one axis's groups land and what its main collective costs."""

    axis: str
    groups: np.ndarray  # (groups, size) global ranks
    hosts_spanned: np.ndarray  # per group
    per_host: np.ndarray  # members per (group, host) run
    message: Message
    cost: CollectiveCost


def shown_axes(job: Job) -> list[str]:
    """Axes of size > 1, leaving out those whose groups repeat an axis already shown
    (dp_cp is dp when cp = 1; edp is dp_cp when ep = 1)."""
    lay = job.layout
    assert lay is not None and lay.dp is not None
    sizes = {"tp": lay.tp, "cp": lay.cp, "dp": lay.dp, "pp": lay.pp, "ep": lay.ep,
             "dp_cp": lay.dp * lay.cp, "edp": lay.dp * lay.cp // lay.ep}
    repeats = {"dp_cp": lay.cp == 1, "edp": lay.ep == 1}
    return [a for a in SHOWN_AXES if sizes[a] > 1 and not repeats.get(a, False)]


MESSAGES = {
    "tp": ("tp", "all_reduce", "activations b·s/cp·h"),
    "cp": ("cp", "all_gather", "one layer's keys and values, all of s"),
    "ep": ("ep", "all_to_all", "routed tokens b·s/cp·k·h (/tp with sequence parallel)"),
    "pp": ("pp_p2p", "p2p", "stage-boundary activations b·s/cp·h (/tp with sequence parallel)"),
}


def message(job: Job, axis: str) -> Message:
    """The axis's main collective with the bytes the step model charges it
    (`simulator.step_time.message_bytes`); data-parallel axes get a 1 GiB gradient bucket."""
    if axis not in MESSAGES:
        return Message(axis, "all_reduce", GRADIENT_BUCKET_BYTES, "a 1 GiB gradient bucket")
    net_axis, kind, what = MESSAGES[axis]
    ctx = step_context(job, analytic_profile())
    if axis == "cp" and job.layout.cp_style == "ulysses":
        return Message("cp", "all_to_all", ulysses_bytes(ctx)[0],
                       "queries, keys and values of b·s/cp tokens, to a head split")
    return Message(net_axis, kind, message_bytes(ctx, net_axis), what)


def _host_runs(topology: Topology, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hosts spanned by each group, and members of a group on each of its hosts."""
    hosts = np.sort(topology.host[groups], axis=1)
    starts = np.ones(hosts.shape, dtype=bool)
    starts[:, 1:] = hosts[:, 1:] != hosts[:, :-1]
    first = np.flatnonzero(starts.ravel())  # every row begins a run: runs stay inside rows
    return starts.sum(axis=1), np.diff(np.append(first, hosts.size))


def place_axis(job: Job, topology: Topology, axis: str) -> AxisPlacement:
    """One axis's groups, their spread over hosts and its collective's cost."""
    groups = axis_groups(job.layout, axis)
    spanned, per_host = _host_runs(topology, groups)
    msg = message(job, axis)
    net = axis_network(job.cluster, job.layout, msg.network_axis, analytic_profile())
    return AxisPlacement(axis, groups, spanned, per_host, msg, net.cost(msg.kind, msg.size_bytes))


def placements(job: Job, topology: Topology) -> list[AxisPlacement]:
    return [place_axis(job, topology, axis) for axis in shown_axes(job)]


def ranks_text(ranks: np.ndarray, limit: int = 6) -> str:
    """0-7; 0, 256, 512, 768; 0, 8, 16, ... 248 (evenly spaced); 0, 1, 8, 9, ... 57."""
    ranks = [int(r) for r in ranks]
    steps = set(np.diff(ranks).tolist())
    if len(ranks) > 2 and steps == {1}:
        return f"{ranks[0]}-{ranks[-1]}"
    if len(ranks) <= limit:
        return ", ".join(map(str, ranks))
    shown = ranks[:3] if len(steps) == 1 else ranks[:4]  # irregular: show more of the pattern
    return ", ".join(map(str, shown)) + f", ... {ranks[-1]}"


def _bytes(size: float) -> str:
    for scale, unit in ((GiB, "GiB"), (MiB, "MiB"), (KiB, "KiB")):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size:.0f} B"


def _placement_row(p: AxisPlacement) -> list[str]:
    count, size = p.groups.shape
    return [p.axis, AXIS_NAMES[p.axis], str(count), str(size), _range(p.per_host),
            _range(p.hosts_spanned), ranks_text(p.groups[0]), p.message.kind,
            _bytes(p.message.size_bytes), p.cost.algorithm, duration(p.cost.time_s),
            f"{p.cost.busbw_bytes_per_s / 1e9:.1f}"]


def format_placement(job: Job, places: list[AxisPlacement]) -> str:
    """The placement table and what its messages are."""
    lay = job.layout
    head = (f"placement   tp {lay.tp}, cp {lay.cp}, ep {lay.ep}, dp {lay.dp}, pp {lay.pp}; "
            f"rank order {lay.order} (innermost first)")
    if not places:
        return head + "\n  every axis has size 1: nothing to place"
    rows = table(["axis", "", "groups", "size", "per host", "hosts", "first group",
                  "collective", "message", "algorithm", "time", "busbw GB/s"],
                 [_placement_row(p) for p in places])
    notes: dict[str, list[str]] = {}
    for p in places:
        notes.setdefault(p.message.what, []).append(p.axis)
    return "\n".join([head, *("  " + line for line in rows.splitlines()),
                      "  messages: " + "; ".join(f"{', '.join(axes)}: {what}"
                                                  for what, axes in notes.items()) + ".",
                      "  every group of an axis communicates at once (contention included); "
                      "busbw as nccl-tests reports it"])


def format_topo(job: Job, topology: Topology, places: list[AxisPlacement] | None) -> str:
    """The whole text of `parasim topo`."""
    summary = format_summary(job, topology)
    if places is None:  # no parallel section: nothing to place
        return summary
    return summary + "\n" + format_placement(job, places)


# Drawing ------------------------------------------------------------------------------------


def draw_png(job: Job, topology: Topology, places: list[AxisPlacement] | None,
             path: str | Path, *, force: bool = False) -> None:
    """Draw the fabric (or the graph file) with each axis's first group highlighted, into
    `path` (atomically; an existing file only with `force`). A fabric of more hosts than a
    picture holds shows a sample, and its title and legend say how many hosts are left out."""
    first = {p.axis: p.groups[0] for p in places or []}
    if isinstance(topology, FabricTopology):
        figure = _fabric_figure(job, topology, first)
    else:
        figure = _graph_figure(job, topology, first, str(path))
    save_figure(figure, path, force=force, field="--png")


def _new_figure(width_in: float, height_in: float) -> tuple[Figure, Axes]:
    """A figure on the Agg canvas, without pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_in, height_in), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.set_axis_off()
    return figure, axes


def _title(job: Job, topology: Topology, extra: str = "") -> str:
    lay = job.layout
    layout = (f"tp {lay.tp} · cp {lay.cp} · ep {lay.ep} · dp {lay.dp} · pp {lay.pp} "
              f"({lay.order})" if lay else "no layout")
    return (f"{job.cluster.name}: {_fabric_kind(job, topology)}, {topology.num_gpus} GPUs, "
            f"{_num_hosts(topology)} hosts\n{layout}{extra}")


def _legend_handles(first: dict[str, np.ndarray], shown: dict[str, tuple[int, int]]) -> list:
    """One patch per highlighted group; `shown[axis]` = (its hosts drawn, its hosts), said
    when some are left out."""
    from matplotlib.patches import Patch

    def label(axis: str, ranks: np.ndarray) -> str:
        drawn, hosts = shown.get(axis, (0, 0))
        left_out = f" (on {hosts} hosts: {drawn} drawn, {hosts - drawn} left out)" \
            if drawn < hosts else ""
        return f"{axis} group 0: ranks {ranks_text(ranks)}{left_out}"

    return [Patch(facecolor=AXIS_COLOURS[a], label=label(a, r)) for a, r in first.items()] \
        + [Patch(facecolor="0.85", label="in none of these")]


# A fabric as layers: core, spine, leaves over host boxes.


@dataclass(frozen=True)
class _Layers:
    """What a fabric picture shows: node ids per tier and the edges between them."""

    hosts: np.ndarray
    leaves: np.ndarray
    pods: np.ndarray
    core: bool
    host_leaf: np.ndarray  # (edges, 2): host id, leaf id
    hidden_hosts: int
    hidden_leaves: int


def _chosen_hosts(t: FabricTopology, first: dict[str, np.ndarray]) -> np.ndarray:
    """The hosts of every highlighted group, an even share of the boxes each (smallest
    groups first, evenly sampled when a group has more hosts than its share), topped up
    with the first hosts of the cluster."""
    marked: set[int] = set()
    by_size = sorted((np.unique(t.host[r]) for r in first.values()), key=len)
    for k, hosts in enumerate(by_size):
        share = (MAX_DRAWN_HOSTS - len(marked)) // (len(by_size) - k)
        if len(hosts) > share:
            hosts = hosts[np.linspace(0, len(hosts) - 1, max(share, 1)).round().astype(int)]
        marked.update(hosts.tolist())
    others = np.setdiff1d(np.arange(t.num_hosts), list(marked))
    return np.union1d(list(marked), others[:max(0, MAX_DRAWN_HOSTS - len(marked))]).astype(int)


def _layers(t: FabricTopology, first: dict[str, np.ndarray]) -> _Layers:
    hosts = _chosen_hosts(t, first)
    shown_nics = np.isin(t.nic_host, hosts)
    pairs = np.unique(np.stack([t.nic_host[shown_nics], t.nic_leaf[shown_nics]], axis=1), axis=0)
    leaves = np.unique(pairs[:, 1])
    kept = leaves[:MAX_DRAWN_LEAVES]
    pairs = pairs[np.isin(pairs[:, 1], kept)]
    pods = np.unique(t.leaf_pod[kept]) if t.has_spine else np.empty(0, int)
    return _Layers(hosts, kept, pods, t.has_core, pairs, t.num_hosts - len(hosts),
                   t.num_leaves - len(kept))


def _spread(ids: np.ndarray) -> dict[int, float]:
    """x positions in [0, 1], evenly spaced and centred."""
    n = len(ids)
    return {int(i): (k + 0.5) / n for k, i in enumerate(ids)}


def _fabric_figure(job: Job, t: FabricTopology, first: dict[str, np.ndarray]) -> Figure:
    layers = _layers(t, first)
    figure, axes = _new_figure(max(9.0, 0.42 * len(layers.hosts) + 3), 6.5)
    x_host, x_leaf, x_pod = _spread(layers.hosts), _spread(layers.leaves), _spread(layers.pods)
    _draw_fabric_edges(axes, t, layers, x_host, x_leaf, x_pod)
    _draw_switches(axes, layers, x_leaf, x_pod, t.cluster.topology == "rail-only")
    _draw_hosts(axes, t, layers, x_host, first)
    top = 3.0 if layers.core else 2.0 if len(layers.pods) else 1.0
    axes.set_xlim(-0.06, 1.02)
    axes.set_ylim(-0.45, top + 0.75)
    axes.set_title(_title(job, t, _left_out_text(t, layers)), fontsize=10)
    if first:
        shown = {axis: (int(np.isin(hosts, layers.hosts).sum()), len(hosts))
                 for axis, hosts in ((a, np.unique(t.host[r])) for a, r in first.items())}
        axes.legend(handles=_legend_handles(first, shown), loc="upper right", fontsize=8,
                    framealpha=0.9)
    return figure


def _left_out_text(t: FabricTopology, layers: _Layers) -> str:
    """What the picture leaves out, for its title: hosts, leaves and their links."""
    parts = []
    if layers.hidden_hosts:
        parts.append(f"{len(layers.hosts)} of {t.num_hosts} hosts drawn, "
                     f"{layers.hidden_hosts} left out")
    if layers.hidden_leaves:
        parts.append(f"{len(layers.leaves)} of {t.num_leaves} leaves drawn, "
                     f"{layers.hidden_leaves} left out with their links")
    return "\n" + "; ".join(parts) if parts else ""


def _draw_fabric_edges(axes: Axes, t: FabricTopology, layers: _Layers, x_host, x_leaf,
                       x_pod) -> None:
    from matplotlib.collections import LineCollection

    segments = [((x_host[h], 0.32), (x_leaf[l], 1.0)) for h, l in layers.host_leaf.tolist()]
    segments += [((x_leaf[l], 1.0), (x_pod[int(t.leaf_pod[l])], 2.0))
                 for l in layers.leaves.tolist() if len(layers.pods)]
    if layers.core:
        segments += [((x_pod[p], 2.0), (0.5, 3.0)) for p in layers.pods.tolist()]
    axes.add_collection(LineCollection(segments, colors="0.55", linewidths=0.5, alpha=0.6,
                                       zorder=1))


def _draw_switches(axes: Axes, layers: _Layers, x_leaf, x_pod, rails: bool) -> None:
    tiers = [(1.0, x_leaf, "rail" if rails else "leaf"), (2.0, x_pod, "spine")]
    if layers.core:
        tiers.append((3.0, {0: 0.5}, "core"))
    for y, xs, name in tiers:
        if not xs:
            continue
        axes.scatter(list(xs.values()), [y] * len(xs), marker="s", s=90, c="0.25", zorder=3)
        if len(xs) <= 40:
            for i, x in xs.items():
                axes.annotate(f"{name}{i}", (x, y), xytext=(0, 7), textcoords="offset points",
                              ha="center", fontsize=6)
        axes.text(-0.05, y, {"leaf": "leaves", "rail": "rail\nswitches",
                             "spine": "spines"}.get(name, name),
                  ha="left", va="center", fontsize=9, style="italic")


def _draw_hosts(axes: Axes, t: FabricTopology, layers: _Layers, x_host,
                first: dict[str, np.ndarray]) -> None:
    from matplotlib.patches import Rectangle

    width = 0.8 / len(layers.hosts)
    marks = {a: set(t.host[r].tolist()) for a, r in first.items()}
    for h, x in x_host.items():
        bands = [a for a, hosts in marks.items() if h in hosts] or [None]
        height = 0.6 / len(bands)
        for k, axis in enumerate(bands):
            colour = AXIS_COLOURS[axis] if axis else "0.85"
            axes.add_patch(Rectangle((x - width / 2, -0.28 + k * height), width, height,
                                     facecolor=colour, edgecolor="none", zorder=2))
        axes.add_patch(Rectangle((x - width / 2, -0.28), width, 0.6, fill=False,
                                 edgecolor="0.2", linewidth=0.8, zorder=3))
        axes.text(x, -0.34, f"h{h}", ha="center", va="top", fontsize=7,
                  rotation=90 if len(layers.hosts) > 16 else 0)
    gpus = np.unique(np.bincount(t.host))
    axes.text(-0.05, 0.02, f"hosts\n({_range(gpus)} GPUs)", ha="left", va="center", fontsize=9,
              style="italic")
    if t.num_domains < t.num_hosts:
        _draw_domains(axes, t, x_host, width)


def _draw_domains(axes: Axes, t: FabricTopology, x_host, width: float) -> None:
    """A bar over the drawn hosts of each multi-node NVLink domain (an NVL72 rack)."""
    domain_of_host = t.domain[t.host_first_gpu]
    for d in sorted({int(domain_of_host[h]) for h in x_host}):
        xs = [x for h, x in x_host.items() if domain_of_host[h] == d]
        gpus = int(np.sum(t.domain == d))
        axes.plot([min(xs) - width / 2, max(xs) + width / 2], [0.36, 0.36], color="tab:orange",
                  linewidth=3, solid_capstyle="butt", zorder=3)
        axes.text((min(xs) + max(xs)) / 2, 0.38, f"NVLink domain {d} ({gpus} GPUs)",
                  ha="center", va="bottom", fontsize=8, color="tab:orange")


# A graph file: spring layout.


def _graph_figure(job: Job, topology: Topology, first: dict[str, np.ndarray],
                  path: str) -> Figure:
    graph = topology.graph()
    if graph.number_of_nodes() > MAX_DRAWN_NODES:
        raise SpecError("--png", path, f"the graph has {graph.number_of_nodes()} nodes, too "
                        f"many to draw legibly", f"a graph of at most {MAX_DRAWN_NODES} nodes, "
                        "or no --png")
    import networkx as nx

    position = nx.spring_layout(graph, seed=7)
    figure, axes = _new_figure(9.0, 7.0)
    _draw_graph_edges(axes, graph, position)
    _draw_graph_nodes(axes, graph, position, topology, first)
    axes.set_title(_title(job, topology), fontsize=10)
    axes.legend(loc="upper right", fontsize=8, framealpha=0.9)
    return figure


def _draw_graph_edges(axes: Axes, graph: nx.Graph, position: dict) -> None:
    from matplotlib.collections import LineCollection

    for nvlink, style, label in ((True, "-", "NVLink"), (False, "--", "other link")):
        segments = [(position[a], position[b]) for a, b, d in graph.edges(data=True)
                    if (d.get("link") == "nvlink") == nvlink]
        if segments:
            axes.add_collection(LineCollection(segments, colors="0.5", linewidths=0.8,
                                               linestyles=style, zorder=1, label=label))


def _draw_graph_nodes(axes: Axes, graph: nx.Graph, position: dict, topology: Topology,
                      first: dict[str, np.ndarray]) -> None:
    shapes = {"gpu": ("o", "0.8", "GPU"), "nic": ("^", "0.6", "NIC"), "switch": ("s", "0.3",
                                                                               "switch")}
    for kind, (marker, colour, label) in shapes.items():
        nodes = [n for n, k in graph.nodes(data="kind") if k == kind]
        if nodes:
            xy = np.array([position[n] for n in nodes])
            axes.scatter(xy[:, 0], xy[:, 1], marker=marker, s=110, c=colour, edgecolors="0.2",
                         label=label, zorder=3)
    gpus = topology.gpus  # GraphTopology: node ids in rank order
    for k, (axis, ranks) in enumerate(first.items()):
        xy = np.array([position[gpus[r]] for r in ranks.tolist()])
        axes.scatter(xy[:, 0], xy[:, 1], s=110 + 140 * (k + 1), facecolors="none",
                     edgecolors=AXIS_COLOURS[axis], linewidths=2, zorder=2,
                     label=f"{axis} group 0: ranks {ranks_text(ranks)}")
    if graph.number_of_nodes() <= 40:
        for node, (x, y) in position.items():
            axes.annotate(str(node), (x, y), xytext=(0, 13), textcoords="offset points",
                          ha="center", fontsize=7)
