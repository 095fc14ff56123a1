"""Layout: how a training run is split over the GPUs.

world = tp·cp·dp·pp. Expert parallelism carves `ep` ranks out of dp·cp for the expert layers, as
Megatron-Core does (its expert-data-parallel size is dp·cp/ep). The rank order names the axes
innermost first: with the default tp-cp-ep-dp-pp, tensor-parallel peers are neighbouring ranks
(one node) and pipeline stages are the outermost blocks of ranks.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Literal

from parasim.simulator.checks import require_bool, require_choice, require_count
from parasim.simulator.errors import SpecError

Schedule = Literal["gpipe", "1f1b", "interleaved", "zero-bubble", "dualpipe", "dualpipev"]
SCHEDULES = ("gpipe", "1f1b", "interleaved", "zero-bubble", "dualpipe", "dualpipev")
# DeepSeek's bidirectional schedules (simulator/dualpipe.py): each rank holds two model chunks
DUAL_SCHEDULES = ("dualpipe", "dualpipev")
Recompute = Literal["none", "selective", "full"]
RECOMPUTES = ("none", "selective", "full")
CpStyle = Literal["ring", "ulysses"]
CP_STYLES = ("ring", "ulysses")
# What selective recompute may repeat, in Megatron-Core's names (--recompute-modules):
# core_attn softmax(QK^T)V; layernorm the norms (their outputs are not kept); mla_up_proj
# MLA's up-projections (per-head queries, keys and values are not kept, only the latents);
# moe_act the experts' activation function (its output, fc2's input, is not kept).
RECOMPUTE_MODULES = ("core_attn", "layernorm", "mla_up_proj", "moe_act")
DEFAULT_RECOMPUTE_MODULES = frozenset({"core_attn"})
OFFLOADS = ("optimizer", "activations")  # what parallel.offload may move to host memory
DENSE_AXES = ("tp", "cp", "dp", "pp")
DEFAULT_ORDER = "tp-cp-ep-dp-pp"


@dataclass(frozen=True, kw_only=True)
class Offload:
    """What lives in host memory between its uses (`parallel.offload`, simulator/offload.py)."""

    optimizer: bool = False  # fp32 master weights, Adam moments and the update on the CPU
    #                          (ZeRO-Offload, Ren et al. 2021; Megatron --optimizer-cpu-offload)
    activations: bool = False  # stored activations copied to host after each block's forward
    #                            and back before its backward (Megatron --cpu-offloading)

    def __post_init__(self) -> None:
        for name in OFFLOADS:
            require_bool(f"parallel.offload.{name}", getattr(self, name))

    @property
    def any(self) -> bool:
        return self.optimizer or self.activations


NO_OFFLOAD = Offload()


def offload_of(value: object) -> Offload:
    """`parallel.offload` as written (a mapping of OFFLOADS to booleans) or an Offload."""
    if isinstance(value, Offload):
        return value
    if not isinstance(value, dict):
        raise SpecError("parallel.offload", value, "must be a mapping",
                        "e.g. {optimizer: true, activations: false}")
    unknown = set(value) - set(OFFLOADS)
    if unknown:
        key = min(unknown, key=str)
        raise SpecError(f"parallel.offload.{key}", value[key], "unknown offload field",
                        ", ".join(OFFLOADS))
    return Offload(**value)


@dataclass(frozen=True, kw_only=True)
class Layout:
    """Parallel degrees and the choices that go with them."""

    tp: int = 1  # tensor-parallel degree
    pp: int = 1  # pipeline-parallel degree (ranks)
    dp: int | None = None  # data-parallel degree; None = world / (tp·pp·cp)
    cp: int = 1  # context-parallel degree (sequence split inside attention)
    cp_style: CpStyle = "ring"  # ring: keys/values passed around the cp ring (Megatron-Core
    # p2p); ulysses: all-to-alls swap the sequence split for a head split (DeepSpeed-Ulysses)
    ep: int = 1  # expert-parallel degree, carved out of dp·cp
    vpp: int = 1  # virtual stages (model chunks) per pipeline rank
    micro_batch_size: int = 1  # sequences per micro-batch
    schedule: Schedule = "1f1b"  # pipeline schedule
    sequence_parallel: bool = False  # shard norms/dropout activations over tp (Korthikanti 2022)
    recompute: Recompute = "none"  # activation recomputation
    recompute_modules: tuple[str, ...] | None = None  # selective: what it repeats (None:
    # core_attn, Megatron-LM's --recompute-activations); any of RECOMPUTE_MODULES
    zero_stage: int = 0  # 0 none, 1 optimizer states, 2 + gradients, 3 + weights (over dp·cp)
    order: str = DEFAULT_ORDER  # rank order, innermost axis first
    stages: tuple[int, ...] | None = None  # layers per virtual stage; None = even, ends lighter
    full_recompute_layers: tuple[int, ...] | None = None  # per virtual stage: its first N blocks
    # recomputed in full, the others under `recompute` (Megatron-LM's --recompute-method block)
    # Framework defaults (README "Overlap defaults"): PyTorch DDP and FSDP reduce gradients in
    # buckets during the backward, FSDP prefetches the next layer's weights, and Megatron-Core's
    # distributed optimizer does both (--overlap-grad-reduce, --overlap-param-gather).
    overlap_grad_reduce: bool = True  # DP gradient reduction in buckets during the backward
    overlap_param_gather: bool = True  # ZeRO weight all-gathers prefetched behind compute
    tp_comm_overlap: bool = False  # TP collectives hidden behind the GEMMs (Megatron userbuffers)
    cp_comm_overlap: bool = True  # ring attention passes key/value blocks while computing
    ep_comm_overlap: bool = False  # expert all-to-alls behind the block's other compute
    offload: Offload = NO_OFFLOAD  # optimizer states / activations in host memory (PCIe)
    zero_pp: bool = False  # ZeRO++ (Wang et al. 2023) on ZeRO-3: int8 weight gathers, a
    #                        secondary weight partition per node, int4 gradient all-to-alls

    def __post_init__(self) -> None:
        for f in fields(self):
            _check_value(f.name, getattr(self, f.name))
        self._settle()

    def evolve(self, **changes: object) -> Layout:
        """`dataclasses.replace(self, **changes)` at a fraction of its cost, for the planner's
        ~10^5 layouts a search: the same checks in the same order, less those of the unchanged
        fields, which passed when this layout was built and cannot have changed since."""
        unknown = changes.keys() - _FIELD_SET
        if unknown:
            raise TypeError(f"Layout has no field {min(unknown)!r}")
        current = vars(self)
        try:
            for name, value in changes.items():
                if value is not current[name]:  # the same object passed already
                    _check_value(name, value)
        except SpecError:  # where two are wrong, the first in field order, as __post_init__
            for name in _FIELD_NAMES:
                if name in changes:
                    _check_value(name, changes[name])
            raise
        new = object.__new__(Layout)
        values = vars(new)
        values.update(current)
        values.update(changes)
        new._settle()
        return new

    def _settle(self) -> None:
        """The fields given as a list or a mapping made tuples and an Offload, then the
        checks between fields."""
        object.__setattr__(self, "offload", offload_of(self.offload))
        self._check_schedule()
        if self.zero_pp and self.zero_stage != 3:
            raise SpecError("parallel.zero_pp", True, f"ZeRO++ changes ZeRO-3's collectives, "
                            f"but zero_stage is {self.zero_stage}",
                            "zero_stage: 3, or zero_pp: false")
        if self.stages is not None and not isinstance(self.stages, tuple):
            object.__setattr__(self, "stages", tuple(self.stages))
        if self.recompute_modules is not None:
            object.__setattr__(self, "recompute_modules", tuple(self.recompute_modules))
            if self.recompute != "selective":
                raise SpecError("parallel.recompute_modules", list(self.recompute_modules),
                                f"chooses what selective recompute repeats, but recompute is "
                                f"{self.recompute}", "recompute: selective, or leave "
                                "recompute_modules out")
        if self.full_recompute_layers is None:
            return
        if not isinstance(self.full_recompute_layers, tuple):
            object.__setattr__(self, "full_recompute_layers", tuple(self.full_recompute_layers))
        if self.recompute == "full":
            raise SpecError("parallel.full_recompute_layers", list(self.full_recompute_layers),
                            "chooses blocks to recompute in full, but recompute is already full",
                            "recompute: none or selective, or leave full_recompute_layers out")

    def _check_schedule(self) -> None:
        if self.vpp > 1 and self.schedule != "interleaved":
            raise SpecError("parallel.vpp", self.vpp,
                            f"needs the interleaved schedule, not {self.schedule}",
                            "vpp: 1, or schedule: interleaved")
        if self.schedule == "interleaved" and self.pp < 2:
            raise SpecError("parallel.schedule", self.schedule,
                            "interleaves the stages of a pipeline, but pp is 1", "pp >= 2")
        if self.schedule == "interleaved" and self.vpp < 2:
            raise SpecError("parallel.schedule", self.schedule,
                            "interleaves virtual stages, but vpp is 1", "vpp >= 2, or 1f1b")
        if self.schedule in DUAL_SCHEDULES:
            _check_dual(self)

    @property
    def num_virtual_stages(self) -> int:
        """Pipeline stages the layers are split into: pp·vpp; DualPipeV's V holds 2·pp
        stages; DualPipe's pp stages, each held twice (`rank_stages`)."""
        return 2 * self.pp if self.schedule == "dualpipev" else self.pp * self.vpp

    @property
    def chunks_per_rank(self) -> int:
        """Model chunks each pipeline rank holds: vpp, or two under DualPipe(V)."""
        return 2 if self.schedule in DUAL_SCHEDULES else self.vpp

    def with_dp(self, dp: int) -> Layout:
        return self.evolve(dp=dp)

    @property
    def ranks_per_replica(self) -> int:
        """GPUs holding one copy of the model: tp·cp·pp (cp splits the sequence, not weights)."""
        return self.tp * self.cp * self.pp

    @property
    def world_size(self) -> int:
        assert self.dp is not None, "resolve the layout against a cluster first"
        return self.tp * self.cp * self.dp * self.pp


_FIELD_NAMES = tuple(f.name for f in fields(Layout))
_FIELD_SET = frozenset(_FIELD_NAMES)
INTEGERS = ("tp", "pp", "cp", "ep", "vpp", "micro_batch_size")
FLAGS = ("sequence_parallel", "overlap_grad_reduce", "overlap_param_gather", "tp_comm_overlap",
         "cp_comm_overlap", "ep_comm_overlap", "zero_pp")


def check_field(name: str, value: object) -> None:
    """One `parallel:` field on its own (type, choice, range), without the others: what the
    planner checks of the fields a job holds fixed before it searches the rest."""
    field = f"parallel.{name}"
    if name in INTEGERS or (name == "dp" and value is not None):
        require_count(field, value)
    elif name == "schedule":
        require_choice(field, value, SCHEDULES)
    elif name == "recompute":
        require_choice(field, value, RECOMPUTES)
    elif name == "cp_style":
        require_choice(field, value, CP_STYLES)
    elif name in FLAGS:
        require_bool(field, value)
    elif name == "zero_stage":
        require_count(field, value, minimum=0, maximum=3)
    elif name == "order":
        _check_order(value)
    elif name in ("stages", "full_recompute_layers") and value is not None:
        _check_counts(name, value)
    elif name == "recompute_modules" and value is not None:
        _check_modules(value)
    elif name == "offload":
        offload_of(value)


def _check_value(name: str, value: object) -> None:
    """check_field, cached for the numbers, strings and None that most fields are: the planner
    builds ~10^5 layouts, each value is checked once."""
    if isinstance(value, (int, str)) or value is None:  # bool is an int
        _check_scalar(name, value)
    else:
        check_field(name, value)


@lru_cache(maxsize=1024, typed=True)  # typed: True is not the count 1
def _check_scalar(name: str, value: int | str | None) -> None:
    check_field(name, value)


def _check_counts(name: str, counts: object) -> None:
    """`stages` (layers per virtual stage, each >= 1) or `full_recompute_layers` (blocks per
    virtual stage, each >= 0): a list of integers."""
    if not isinstance(counts, (tuple, list)):
        example = "[7, 8, 8, 7]" if name == "stages" else "[2, 0]"
        what = "layer counts" if name == "stages" else "block counts, one per virtual stage"
        raise SpecError(f"parallel.{name}", counts, f"must be a list of {what}", f"e.g. {example}")
    for i, n in enumerate(counts):
        require_count(f"parallel.{name}[{i}]", n, minimum=1 if name == "stages" else 0)


def _check_modules(modules: object) -> None:
    valid = "a non-empty list of " + ", ".join(RECOMPUTE_MODULES)
    if not isinstance(modules, (tuple, list)) or not modules:
        raise SpecError("parallel.recompute_modules", modules, "must be a list of modules",
                        valid)
    for i, name in enumerate(modules):
        require_choice(f"parallel.recompute_modules[{i}]", name, RECOMPUTE_MODULES)


def _check_dual(layout: Layout) -> None:
    """DualPipe needs an even pp (it pairs rank r with pp-1-r; deepseek-ai/DualPipe
    dualpipe.py `assert num_ranks % 2 == 0`); both need a pipeline. Their two chunks per rank
    are implied: vpp > 1 is refused with the interleaved schedule's check."""
    if layout.pp < 2 or (layout.schedule == "dualpipe" and layout.pp % 2):
        need = "an even pp >= 2" if layout.schedule == "dualpipe" else "pp >= 2"
        raise SpecError("parallel.pp", layout.pp, f"{layout.schedule} needs {need}", need)


def rank_stages(layout: Layout, rank: int) -> tuple[int, ...]:
    """The pipeline stages pipeline rank `rank` holds, in chunk order: rank, rank+pp, ...
    (interleaved); DualPipe: r and pp-1-r, the two directions' copies (DeepSeek-V3 report,
    arXiv:2412.19437 §3.2.1, Figure 5); DualPipeV: r and 2·pp-1-r, the V (deepseek-ai/DualPipe
    README, "DualPipeV")."""
    if layout.schedule == "dualpipe":
        return (rank, layout.pp - 1 - rank)
    if layout.schedule == "dualpipev":
        return (rank, 2 * layout.pp - 1 - rank)
    return tuple(range(rank, layout.num_virtual_stages, layout.pp))


def recomputed_modules(layout: Layout) -> frozenset[str]:
    """What a selectively recomputed block repeats (core attention unless chosen)."""
    return frozenset(layout.recompute_modules or DEFAULT_RECOMPUTE_MODULES)


def _check_order(order: object) -> None:
    axes = order.split("-") if isinstance(order, str) else []
    dense = [a for a in axes if a != "ep"]
    if sorted(dense) != sorted(DENSE_AXES) or axes.count("ep") > 1:
        raise SpecError("parallel.order", order,
                        "must name tp, cp, dp and pp once each (ep optional), innermost first",
                        f"e.g. {DEFAULT_ORDER}")


@lru_cache(maxsize=4096)
def default_stage_layers(num_layers: int, num_stages: int) -> tuple[int, ...]:
    """Split layers over virtual stages evenly; where they do not divide, the first and last
    stages (which also hold the embedding and the LM head) get one layer fewer, then the second
    and second-to-last, and so on. Llama 3 405B: 126 layers on 16 stages = 7, 8 x 14, 7
    (Llama 3 paper, arXiv:2407.21783 §3.3.2)."""
    assert 1 <= num_stages <= num_layers
    ceiling = -(-num_layers // num_stages)
    split = [ceiling] * num_stages
    excess = ceiling * num_stages - num_layers
    ends = [i // 2 if i % 2 == 0 else num_stages - 1 - i // 2 for i in range(num_stages)]
    for stage in ends[:excess]:
        split[stage] -= 1
    return tuple(split)

def recompute_text(layout) -> str:
    """`selective`, or `none + full for [11, 9] blocks per stage` (the block method)."""
    if layout.recompute_modules:
        return f"selective ({', '.join(layout.recompute_modules)})"
    if not layout.full_recompute_layers:
        return layout.recompute
    return f"{layout.recompute} + full for {list(layout.full_recompute_layers)} blocks per stage"


def cp_text(layout) -> str:
    """`cp 1`, or `cp 8 (ring)` / `cp 8 (ulysses)`: the style only where there is a split."""
    return f"cp {layout.cp}" + (f" ({layout.cp_style})" if layout.cp > 1 else "")


def overlap_text(layout) -> str:
    """The overlaps that differ from the framework defaults, in words ('' when none do):
    `TP overlap, EP overlap`, `no grad-reduce overlap`."""
    words = []
    if layout.tp_comm_overlap and layout.tp > 1:
        words.append("TP overlap")
    if layout.ep_comm_overlap and layout.ep > 1:
        words.append("EP overlap")
    if not layout.overlap_grad_reduce and layout.dp * layout.cp > 1:
        words.append("no grad-reduce overlap")
    if not layout.overlap_param_gather and layout.zero_stage >= 1:
        words.append("no param-gather overlap")
    if not layout.cp_comm_overlap and layout.cp > 1 and layout.cp_style == "ring":
        words.append("no CP overlap")
    return ", ".join(words)


def offload_text(layout) -> str:
    """`offload optimizer, activations` (what the layout keeps in host memory), or ``."""
    moved = [name for name in OFFLOADS if getattr(layout.offload, name)]
    return "offload " + ", ".join(moved) if moved else ""
