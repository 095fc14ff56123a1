"""ZeRO++ (Wang et al. 2023, "ZeRO++: Extremely Efficient Collective Communication for Giant
Model Training", arXiv:2306.10209): ZeRO-3's three collectives per micro-batch, made cheaper.

- qwZ (§3.1): the forward's weight all-gather sends blockwise-quantized int8 weights, half the
  16-bit bytes (the per-block scales, one fp32 per block of weights, are left out).
- hpZ (§3.2): after the forward's all-gather each GPU keeps a secondary, 16-bit partition of the
  weights over the data-parallel ranks of its node; the backward gathers from it over NVLink
  only. Memory: + weights / (data-parallel ranks per node) per GPU (`memory.rank_model_states`).
- qgZ (§3.3): the gradient reduce-scatter becomes a hierarchical all-to-all of int4 gradients:
  inside each node first (every GPU sends its whole int4 gradient, 1/4 of the 16-bit bytes, to
  its node's peers, which reduce their slices), then across nodes among the GPUs of the same
  position, each sending its node-reduced slice (1/local of it).

With M the model's 16-bit bytes, ZeRO-3 moves 3M across a node's boundary per step (forward
all-gather, backward all-gather, reduce-scatter) and ZeRO++ 0.75M (0.5M + 0 + 0.25M), the
paper's abstract and §3 ("reduces communication volume of ZeRO by 4x");
`cross_node_bytes_per_node` reproduces it from the transfers costed here (tests/test_zero_pp.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from parasim.simulator.cost.comm import AxisNetwork, split_groups
from parasim.simulator.cost.sourced import Sourced, total
from parasim.simulator.placement import axis_signature

if TYPE_CHECKING:
    from parasim.simulator.step_time import StepContext

INT8_BYTES = 1.0  # qwZ
INT4_BYTES = 0.5  # qgZ
Level = Literal["all", "intra", "inter"]


@dataclass(frozen=True)
class Transfer:
    """One collective of a micro-batch over the data-parallel group (`all`), its members on one
    node (`intra`) or one member per node (`inter`). `payload_bytes` is what each GPU holds
    after an all-gather, or sends in all from an all-to-all or reduce-scatter."""

    kind: Literal["all_gather", "reduce_scatter", "all_to_all"]
    level: Level
    payload_bytes: float
    reduces: bool  # the gradient's reduction (after the backward), not a weight gather


def zero3_transfers(params: float, weight_bytes: float, grad_bytes: float
                    ) -> tuple[Transfer, ...]:
    """Plain ZeRO-3 (Rajbhandari et al. 2020 §7.2.2): all-gather the weights for the forward and
    again for the backward, reduce-scatter the gradients."""
    gather = Transfer("all_gather", "all", params * weight_bytes, False)
    return gather, gather, Transfer("reduce_scatter", "all", params * grad_bytes, True)


def zero_pp_transfers(params: float, weight_bytes: float, local: int, nodes: int
                      ) -> tuple[Transfer, ...]:
    """ZeRO++'s collectives of one micro-batch for `params` parameters on a data-parallel group
    of `local` GPUs on each of `nodes` nodes (module docstring). A group on one node keeps qwZ
    and qgZ's first hop; a group of one GPU per node holds hpZ's secondary copy whole (no
    backward gather) and has only qgZ's second hop."""
    out = [Transfer("all_gather", "all", params * INT8_BYTES, False)]
    if local > 1:
        out.append(Transfer("all_gather", "intra", params * weight_bytes, False))
        out.append(Transfer("all_to_all", "intra", params * INT4_BYTES, True))
    if nodes > 1:
        out.append(Transfer("all_to_all", "inter", params * INT4_BYTES / local, True))
    return tuple(out)


def cross_node_bytes_per_node(transfers: tuple[Transfer, ...], local: int, nodes: int) -> float:
    """Bytes leaving one node for the others over the transfers: a ring over all local·nodes
    GPUs, placed node by node, crosses each node's boundary once and carries (n-1)/n of the
    payload over it; an inter-node all-to-all sends (nodes-1)/nodes of each GPU's payload to
    other nodes; intra-node collectives send nothing out."""
    n, out = local * nodes, 0.0
    for t in transfers:
        if t.level == "all":
            out += (n - 1) / n * t.payload_bytes
        elif t.level == "inter":
            out += local * (nodes - 1) / nodes * t.payload_bytes
    return out


def zero_pp_traffic(ctx: StepContext, axis: str, params: float) -> tuple[Sourced, Sourced]:
    """(gradient reduction, weight gathers) of one micro-batch under ZeRO++ for `params`
    parameters over `axis` (dp_cp, or edp for the experts), costed on the topology."""
    if params <= 0:
        return Sourced(), Sourced()
    net = ctx.net(axis)
    levels = _levels(ctx, axis, net)
    local, nodes = levels["intra"].size if levels["intra"] else 1, \
        levels["inter"].size if levels["inter"] else 1
    reduce, gathers = [], []
    for t in zero_pp_transfers(params, ctx.job.training.weight_bytes_per_param, local, nodes):
        if t.level == "all":
            cost = ctx.collective(axis, t.kind, t.payload_bytes)
        else:
            cost = Sourced.of(levels[t.level].time_s(t.kind, t.payload_bytes)
                              + ctx.analytic.collective_overhead_s, "analytic")
        (reduce if t.reduces else gathers).append(cost)
    return total(reduce), total(gathers)


_LEVELS: dict[tuple, dict[str, AxisNetwork | None]] = {}


def _levels(ctx: StepContext, axis: str, net: AxisNetwork) -> dict[str, AxisNetwork | None]:
    """The axis's groups split by node: `intra` (the members on one node) and `inter` (one
    member per node, same position), each None where it has one member."""
    key = (ctx.job.cluster, axis_signature(ctx.layout, axis), ctx.analytic)
    if key not in _LEVELS:
        if len(_LEVELS) > 1024:
            _LEVELS.clear()
        split = split_groups(net.topology.host, net.groups)
        if split is None:  # uneven over the nodes: every member treated as on its own node
            _LEVELS[key] = {"intra": None, "inter": net}
        else:
            _LEVELS[key] = {
                "intra": AxisNetwork(net.topology, net.profile, split.intra)
                if split.local > 1 else None,
                "inter": AxisNetwork(net.topology, net.profile, split.inter)
                if split.nodes > 1 else None}
    return _LEVELS[key]
