"""Where each parallel group lands: the global ranks of every tp / cp / dp / pp / ep group.

Ranks are laid out by the layout's order, innermost axis first (Megatron-Core's
`RankGenerator`): with tp-cp-ep-dp-pp, rank = tp_i + tp·(cp_i + cp·(dp_i + dp·pp_i)). Expert
layers use a second decomposition with cp folded into dp and ep carved out of it:
tp-ep-edp-pp, edp = dp·cp/ep. Global rank r runs on GPU r of the topology.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from parasim.simulator.layout import Layout

AXES = ("tp", "cp", "dp", "pp", "dp_cp", "ep", "edp")
AXIS_NAMES = {"tp": "tensor", "cp": "context", "dp": "data", "pp": "pipeline",
              "dp_cp": "gradient (dp x cp)", "ep": "expert", "edp": "expert data"}


def _dense_sizes(layout: Layout) -> dict[str, int]:
    return {"tp": layout.tp, "cp": layout.cp, "dp": layout.dp, "pp": layout.pp}


def _expert_order(layout: Layout) -> tuple[list[str], dict[str, int]]:
    """Megatron-Core's expert decomposition: cp folded into dp, ep carved out of it."""
    return _expert_axes(layout.order, layout.tp, layout.cp, layout.dp, layout.pp, layout.ep)


def _expert_axes(order: str, tp: int, cp: int, dp: int, pp: int, ep: int
                 ) -> tuple[list[str], dict[str, int]]:
    axes = order.split("-")
    if "ep" not in axes:
        axes.insert(axes.index("tp") + 1, "ep")
    axes = ["edp" if a == "dp" else a for a in axes if a != "cp"]
    return axes, {"tp": tp, "ep": ep, "edp": dp * cp // ep, "pp": pp}


def _groups(order: list[str], sizes: dict[str, int], members: tuple[str, ...]) -> np.ndarray:
    """(groups, size) array of ranks: the ranks that differ only in the `members` axes."""
    ranks = np.arange(int(np.prod([sizes[a] for a in order]))).reshape(
        [sizes[a] for a in reversed(order)])
    axis_of = {a: len(order) - 1 - i for i, a in enumerate(order)}
    inner_last = [axis_of[a] for a in reversed([a for a in order if a in members])]
    moved = np.moveaxis(ranks, inner_last, list(range(ranks.ndim - len(members), ranks.ndim)))
    return moved.reshape(-1, int(np.prod([sizes[a] for a in members])))


@lru_cache(maxsize=256)
def axis_groups(layout: Layout, axis: str) -> np.ndarray:
    """Every group of `axis` as a row of global ranks, members in ring order (by rank)."""
    assert layout.dp is not None and axis in AXES, axis
    if axis in ("ep", "edp"):
        order, sizes = _expert_order(layout)
        return _groups(order, sizes, (axis,))
    order = [a for a in layout.order.split("-") if a != "ep"]
    members = ("cp", "dp") if axis == "dp_cp" else (axis,)
    return _groups(order, _dense_sizes(layout), members)


def pipeline_pairs(layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    """(sender, receiver) of every send between neighbouring pipeline stages."""
    groups = axis_groups(layout, "pp")
    return groups[:, :-1].ravel(), groups[:, 1:].ravel()


def axis_signature(layout: Layout, axis: str) -> tuple:
    """What determines `axis`'s groups: the world size and the (size, stride) of each member
    axis. Layouts with equal signatures place this axis identically (a tp group of 8
    neighbouring ranks is the same whatever pp and dp are), so their costs can be shared."""
    assert layout.dp is not None
    return _signature(layout.order, layout.tp, layout.cp, layout.dp, layout.pp, layout.ep, axis)


@lru_cache(maxsize=65536)  # asked for every block of every layout a search costs
def _signature(order: str, tp: int, cp: int, dp: int, pp: int, ep: int, axis: str) -> tuple:
    if axis in ("ep", "edp"):
        names, sizes = _expert_axes(order, tp, cp, dp, pp, ep)
    else:
        names = [a for a in order.split("-") if a != "ep"]
        sizes = {"tp": tp, "cp": cp, "dp": dp, "pp": pp}
    members = {"dp_cp": ("cp", "dp"), "pp_p2p": ("pp",)}.get(axis, (axis,))
    stride, strides = 1, {}
    for name in names:
        strides[name] = stride
        stride *= sizes[name]
    return (stride, axis, tuple((sizes[m], strides[m]) for m in members))
