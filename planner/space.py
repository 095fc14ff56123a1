"""The candidate layouts of a job: every combination the model and cluster allow.

Degrees tp, cp, pp, ep, vpp, the micro-batch size, the schedule, the ZeRO stage and recompute
are enumerated; any field the user fixed under `parallel:` is held fixed. A combination that
cannot run is rejected with the reason, counted by reason: divisibility (the job's own checks,
`simulator.job.resolve_layout`), a tensor-parallel group larger than a node's NVLink domain,
or model states alone over the device memory (a lower bound: activations only add).
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from functools import partial

from parasim.simulator.checks import divisors
from parasim.simulator.cost.profile import analytic_profile
from parasim.simulator.errors import SpecError
from parasim.simulator.hardware import MAX_GPUS, MAX_PLAN_GPUS
from parasim.simulator.job import Job, resolve_key, resolve_layout
from parasim.simulator.layout import CP_STYLES, DUAL_SCHEDULES, Layout, Offload, check_field
from parasim.simulator.memory import held_params, rank_model_states
from parasim.simulator.offload import node_dp
from parasim.simulator.params import StageParams
from parasim.simulator.placement import axis_groups

MICRO_BATCHES = (1, 2, 4, 8)
CONTEXT_PARALLEL = (1, 2, 4, 8)
LONG_SEQUENCE = 8192  # context parallelism is searched from this length on (Megatron-Core's
#                       guidance: CP for long sequences; below it the KV ring exposes more
#                       than it saves), unless the job fixes cp
VIRTUAL_STAGES = (1, 2, 4)
# ZeRO-0 is left out unless fixed: ZeRO-1 (Megatron's distributed optimizer) moves the same
# bytes (reduce-scatter + all-gather = all-reduce) with less memory, so it never loses.
ZERO_STAGES = (1, 3)
RECOMPUTES = ("none", "selective", "full")
SEARCHED = ("tp", "cp", "cp_style", "pp", "ep", "vpp", "micro_batch_size", "schedule",
            "zero_stage", "recompute", "sequence_parallel")


MAX_COMBINATIONS = 250_000  # layouts one search may enumerate: twice the largest catalog
#                             model's (DeepSeek-V3 at 8k sequences, 124,416), about a minute


@dataclass(frozen=True)
class Space:
    """The layouts worth scoring, and how many were rejected, by reason."""

    layouts: tuple[Layout, ...]
    rejected: Counter  # reason (real numbers; a range lo..hi where they vary) -> count
    errors: dict = field(default_factory=dict)  # the same reasons -> the first SpecError

    @property
    def considered(self) -> int:
        return len(self.layouts) + sum(self.rejected.values())


class Reasons:
    """Rejections counted by kind (the reason with its numbers taken out), each shown with
    its numbers: the value where every rejection of the kind has the same, else the range
    `lo..hi` (`tp·cp·pp = 1..8·1·3 does not divide the cluster's 16 GPUs`)."""

    NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.])")

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.values: dict[str, list[set[str]]] = {}
        self.first: dict[str, SpecError | None] = {}
        self.kinds: dict[str, str] = {}  # each text added so far -> its kind

    def add(self, text: str, error: SpecError | None = None) -> None:
        kind = self.kinds.get(text)
        if kind is None:  # a new text (most recur: thousands of rejections, a few reasons)
            kind = self.kinds[text] = self.NUMBER.sub("#", text)
            numbers = self.NUMBER.findall(text)
            slots = self.values.setdefault(kind, [set() for _ in numbers])
            for slot, number in zip(slots, numbers):
                slot.add(number)
            self.first.setdefault(kind, error)
        self.counts[kind] += 1

    def label(self, kind: str) -> str:
        parts = kind.split("#")
        out = [parts[0]]
        for slot, rest in zip(self.values[kind], parts[1:]):
            ordered = sorted(slot, key=float)
            out.append(ordered[0] if len(ordered) == 1 else f"{ordered[0]}..{ordered[-1]}")
            out.append(rest)
        return "".join(out)

    def counter(self) -> Counter:
        return Counter({self.label(kind): n for kind, n in self.counts.items()})

    def errors(self) -> dict:
        return {self.label(kind): e for kind, e in self.first.items() if e is not None}


def _choices(job: Job, fixed: dict) -> dict[str, tuple]:
    model, training, world = job.model, job.training, job.cluster.world_size
    options = {
        "tp": tuple(divisors(model.num_attention_heads)),
        "cp": tuple(c for c in CONTEXT_PARALLEL if c == 1 or (
            training.seq_length >= LONG_SEQUENCE and training.seq_length % (2 * c) == 0)),
        "pp": tuple(d for d in divisors(world) if d <= model.num_layers),
        "ep": tuple(divisors(model.num_experts)) if model.is_moe else (1,),
        "vpp": VIRTUAL_STAGES,
        "micro_batch_size": MICRO_BATCHES,
        "zero_stage": ZERO_STAGES,
        "recompute": RECOMPUTES,
    }
    if "recompute_modules" in fixed:  # chosen modules: the recompute they belong to
        options["recompute"] = ("selective",)
    if fixed.get("zero_pp"):  # ZeRO++ is a form of ZeRO-3
        options["zero_stage"] = (3,)
    for name, value in fixed.items():
        if name in options:
            options[name] = (value,)
    per_stage = _per_stage_lists(job, fixed)
    if per_stage is not None:
        name, count = per_stage
        options["pp"] = tuple(p for p in options["pp"] if count % p == 0
                              and count // p in options["vpp"])
        options["vpp"] = tuple(sorted({count // p for p in options["pp"]}))
        if not options["pp"]:
            raise SpecError(f"parallel.{name}", list(fixed[name]), f"has {count} entries, one "
                            "per virtual stage, but no pipeline of this job has pp·vpp = "
                            f"{count}", "a list of pp·vpp counts, pp dividing the cluster's "
                            f"{world} GPUs and at most num_layers={model.num_layers}, vpp in "
                            + ", ".join(map(str, VIRTUAL_STAGES)))
    return options


def _per_stage_lists(job: Job, fixed: dict) -> tuple[str, int] | None:
    """(name, length) of the fixed per-virtual-stage lists (`stages`,
    `full_recompute_layers`), checked against the model and each other; None when neither is
    fixed. Their length fixes pp·vpp."""
    stages, blocks = fixed.get("stages"), fixed.get("full_recompute_layers")
    layers = job.model.num_layers
    if stages is not None and sum(stages) != layers:
        raise SpecError("parallel.stages", list(stages),
                        f"sums to {sum(stages)}, not num_layers={layers}",
                        f"positive layer counts, one per virtual stage, summing to {layers}")
    if stages is not None and blocks is not None and len(stages) != len(blocks):
        raise SpecError("parallel.full_recompute_layers", list(blocks),
                        f"has {len(blocks)} entries but stages has {len(stages)}",
                        "one block count per virtual stage, as many as stages")
    if stages is not None:
        return "stages", len(stages)
    return ("full_recompute_layers", len(blocks)) if blocks is not None else None


def enumerate_space(job: Job, fixed: dict) -> Space:
    """Every layout of `job`'s model on its cluster, `fixed` fields held; SpecError when the
    cluster or the space is larger than the planner searches (`check_size`)."""
    options = _choices(job, fixed)
    check_size(job, options, fixed)
    held = {k: v for k, v in fixed.items() if k not in SEARCHED + ("zero_pp",)}
    if "recompute_modules" in held:  # chosen modules: built under the recompute they belong to
        held["recompute"] = "selective"
    check = _Checks(job, Layout(**held), fixed)
    layouts, reasons = [], Reasons()
    names = list(options)
    for values in itertools.product(*(options[n] for n in names)):
        chosen = dict(zip(names, values))
        for schedule, style in itertools.product(_schedules(chosen["vpp"], chosen["pp"], fixed,
                                                            chosen["ep"]),
                                                 _cp_styles(chosen["cp"], fixed)):
            layout, reason, error = check({**chosen, "cp_style": style}, schedule)
            if reason:
                reasons.add(reason, error)
            else:
                layouts.append(layout)
    return Space(tuple(layouts), reasons.counter(), reasons.errors())


def check_size(job: Job, options: dict[str, tuple], fixed: dict) -> None:
    """SpecError, at once, for a cluster or a space of layouts larger than a search can cover
    in its stated time (MAX_PLAN_GPUS, MAX_COMBINATIONS), saying what to fix."""
    world = job.cluster.world_size
    if world > MAX_PLAN_GPUS:
        raise SpecError("cluster.num_nodes", job.cluster.num_nodes,
                        f"gives {world:,} GPUs, too many to search: plan searches clusters of "
                        f"up to {MAX_PLAN_GPUS:,} GPUs", f"plan on at most {MAX_PLAN_GPUS:,} "
                        "GPUs (fewer nodes) and scale dp; `estimate` predicts a fixed layout "
                        f"on up to {MAX_GPUS:,}")
    sizes = {name: len(values) for name, values in options.items()}
    count = math.prod(sizes.values())
    if "cp_style" not in fixed:  # both styles of every cp > 1
        count += count * sum(c > 1 for c in options["cp"]) // sizes["cp"]
    if count > MAX_COMBINATIONS:
        widest = sorted((n for n in sizes if sizes[n] > 1), key=lambda n: -sizes[n])
        raise SpecError("parallel", None, f"leaves {count:,} combinations to search ("
                        + " x ".join(f"{n} {sizes[n]}" for n in widest) + "), more than "
                        f"plan searches ({MAX_COMBINATIONS:,})", "fix some of them, e.g. "
                        + " ".join(f"--set parallel.{n}=..." for n in widest[:2]))


def _schedules(vpp: int, pp: int, fixed: dict, ep: int = 1) -> tuple[str, ...]:
    """Without a pipeline every schedule is the same step: only 1F1B is kept. With one,
    one chunk per rank: 1F1B and ZB-H1, and with expert parallelism, whose all-to-alls
    DualPipe's F&B pairs hide, DualPipeV and (pp even) DualPipe, their two chunks implied
    (`search` drops one no faster than its 1F1B twin, which holds less memory). A dense
    model gains from them only the bubble, which ZB-H1 and interleaving also shrink: fix
    `schedule` to search them there."""
    if "schedule" in fixed:
        return (fixed["schedule"],)
    if pp == 1:
        return ("1f1b",) if vpp == 1 else ()
    if vpp > 1:
        return ("interleaved",)
    dual = ("dualpipev",) + (("dualpipe",) if pp % 2 == 0 else ()) if ep > 1 else ()
    return ("1f1b", "zero-bubble") + dual


def _cp_styles(cp: int, fixed: dict) -> tuple[str, ...]:
    """Without context parallelism both styles are the same step: only ring is kept."""
    if "cp_style" in fixed:
        return (fixed["cp_style"],)
    return CP_STYLES if cp > 1 else ("ring",)


class _Checks:
    """Each combination of one job checked: the resolved layout, or the reason it cannot run
    (and the SpecError it came from). What combinations share is worked out once: the
    refusal of a tp beyond the NVLink domain, the resolution of each `job.resolve_key` and the
    states-fit bound of each `_states_key`."""

    memo = dict  # what the memos are (tests swap in one that forgets, to check the keys)

    def __init__(self, job: Job, base: Layout, fixed: dict) -> None:
        self.job, self.base, self.fixed = job, base, fixed
        self.domain = job.cluster.node_groups[0].domain_gpus  # a node, or a multi-node rack
        self.too_wide: dict[int, SpecError] = self.memo()  # tp -> its refusal
        self.resolved: dict[tuple, Layout | SpecError] = self.memo()  # resolve_key -> the
        #                                                               first's resolution
        self.fitting: dict[tuple, bool] = self.memo()  # _states_key -> _states_fit
        self.holding: dict[tuple, StageParams] = self.memo()  # _held_key -> _held_params

    def __call__(self, chosen: dict, schedule: str
                 ) -> tuple[Layout | None, str, SpecError | None]:
        fixed = self.fixed
        if chosen["tp"] > self.domain:
            error = self.too_wide.get(chosen["tp"])
            if error is None:
                error = self.too_wide[chosen["tp"]] = SpecError(
                    "parallel.tp", chosen["tp"], "tensor parallelism beyond one NVLink domain "
                    f"({self.domain} GPUs)", f"tp <= {self.domain}")
            return None, f"{error.field}: {error.why}", error
        sequence_parallel = fixed.get("sequence_parallel", chosen["tp"] > 1)
        try:
            layout = self.base.evolve(schedule=schedule, sequence_parallel=sequence_parallel,
                                      zero_pp=fixed.get("zero_pp", False), **chosen)
        except SpecError as err:
            return None, _reason(err), err
        resolved = self.resolve(layout)
        if isinstance(resolved, SpecError):
            return None, _reason(resolved), resolved
        layout = resolved
        if not self.fits(layout):
            offloaded = _with_optimizer_offload(self.job, layout, fixed, self.fits)
            if offloaded is None:
                return None, "model states alone exceed device memory", None
            layout = offloaded
        return layout, "", None

    def resolve(self, layout: Layout) -> Layout | SpecError:
        """`resolve_layout`, or the SpecError it raises, once per `resolve_key`: the others
        of a key are given its dp (resolve_layout changes nothing else)."""
        key = resolve_key(layout)
        first = self.resolved.get(key)
        if first is None:
            try:
                first = resolve_layout(self.job.model, self.job.cluster, self.job.training,
                                       layout)
            except SpecError as err:
                first = err
            self.resolved[key] = first
            return first
        if isinstance(first, SpecError):
            return first
        return layout if layout.dp == first.dp else layout.with_dp(first.dp)

    def fits(self, layout: Layout) -> bool:
        """`_states_fit`, once per `_states_key`."""
        key = _states_key(layout)
        fit = self.fitting.get(key)
        if fit is None:
            fit = self.fitting[key] = _states_fit(self.job, layout, self.held)
        return fit

    def held(self, layout: Layout, rank: int) -> StageParams:
        """`_held_params`, once per `_held_key`."""
        key = _held_key(layout, rank)
        params = self.holding.get(key)
        if params is None:
            params = self.holding[key] = _held_params(self.job, layout, rank)
        return params


def _reason(error: SpecError) -> str:
    """A rejection's reason: the error's field and why, up to its first parenthesis."""
    return f"{error.field}: {error.why}".split(" (")[0]


def can_offload(job: Job) -> bool:
    """Whether the catalog (or the job) gives every node group the host link and the host
    memory that offloading needs; where it does not, the planner does not offload."""
    return all(g.gpu.pcie_bytes_per_s is not None and g.host_memory_bytes is not None
               for g in job.cluster.node_groups)


def _with_optimizer_offload(job: Job, layout: Layout, fixed: dict,
                            fits: Callable[[Layout], bool]) -> Layout | None:
    """The layout with its optimizer states on the host, when they alone keep its model states
    from fitting the GPU (`fits`: `_states_fit` of the job) and the job leaves parallel.offload
    open (offloading never makes a layout that fits faster, so only such layouts are given
    it)."""
    if "offload" in fixed or layout.offload.optimizer or not can_offload(job):
        return None
    offloaded = layout.evolve(offload=Offload(optimizer=True,
                                              activations=layout.offload.activations))
    return offloaded if fits(offloaded) else None


def zero_pp_twin(job: Job, layout: Layout, fixed: dict) -> Layout | None:
    """ZeRO++ of a ZeRO-3 layout whose data-parallel groups cross nodes (within a node it
    saves little: its cuts are of the bytes that leave a node) and whose states still fit
    with hpZ's secondary weights; None where the job fixes zero_pp."""
    if "zero_pp" in fixed or layout.zero_stage != 3 or layout.zero_pp:
        return None
    per_node = job.cluster.node_groups[0].gpus_per_node
    nodes = {int(r) // per_node for r in axis_groups(layout, "dp_cp")[0]}
    twin = layout.evolve(zero_pp=True)
    return twin if len(nodes) > 1 and _states_fit(job, twin) else None


def _states_fit(job: Job, layout: Layout,
                held: Callable[[Layout, int], StageParams] | None = None) -> bool:
    """Lower bound: the busiest rank's weights, gradients and optimizer states (no
    activations) against the usable memory of the smallest GPU. `held(layout, rank)`: what
    a pipeline rank holds (`_held_params`, or the planner's memo of it)."""
    held = held or partial(_held_params, job)
    capacity = analytic_profile().usable_memory_bytes(
        min(g.gpu.memory_bytes for g in job.cluster.node_groups))
    hpz = node_dp(job.cluster, layout) if layout.zero_pp else 1
    for rank in (0, layout.pp // 2, layout.pp - 1):
        if rank_model_states(held(layout, rank), job.training, layout, hpz).total_bytes \
                > capacity:
            return False
    return True


def _held_params(job: Job, layout: Layout, rank: int) -> StageParams:
    """`memory.held_params` of pipeline rank `rank` under `layout`."""
    return held_params(job.model, replace(job, layout=layout).stage_layers, layout, rank)


def _two_chunks(layout: Layout) -> str:
    """The schedule where it sets what a rank holds (DualPipe's and DualPipeV's two chunks,
    `layout.rank_stages`), else ''."""
    return layout.schedule if layout.schedule in DUAL_SCHEDULES else ""


def _states_key(layout: Layout) -> tuple:
    """What `_states_fit` reads of a resolved layout: the degrees (dp and cp only as dp·cp,
    the ZeRO shards), the ZeRO stage, the split into virtual stages, the schedule only as
    DualPipe's or DualPipeV's two chunks (`_two_chunks`, `memory.stage_holders`), optimizer
    offload, and ZeRO++ with what places its node-local partition (`offload.node_dp`). Not
    the micro-batch size, recompute, cp_style, sequence parallelism or the overlaps: layouts
    differing only there share it."""
    zero_pp = (layout.order, layout.cp, layout.dp) if layout.zero_pp else None
    return (layout.tp, layout.pp, layout.ep, layout.dp * layout.cp, layout.zero_stage,
            layout.num_virtual_stages, layout.stages, _two_chunks(layout),
            layout.offload.optimizer, zero_pp)


def _held_key(layout: Layout, rank: int) -> tuple:
    """What `_held_params` reads: the split into virtual stages, pp, the two-chunk schedules,
    the rank."""
    return layout.stages, layout.num_virtual_stages, layout.pp, _two_chunks(layout), rank


def fixed_fields(parallel: object) -> dict:
    """The `parallel:` fields the user set (held fixed by the search), each checked on its own
    (`simulator.layout.check_field`); SpecError for a section that is not a mapping or a field
    parasim does not know."""
    if parallel is None:
        return {}
    known = [f.name for f in fields(Layout)]
    if not isinstance(parallel, dict):
        raise SpecError("parallel", parallel, "must be a mapping of the fields to hold fixed",
                        ", ".join(known))
    unknown = set(parallel) - set(known)
    if unknown:
        key = min(unknown, key=str)
        raise SpecError(f"parallel.{key}", parallel[key], "unknown parallel field",
                        ", ".join(known))
    fixed = {k: (tuple(v) if isinstance(v, list) else v) for k, v in parallel.items()
             if v is not None}  # null: not fixed
    for name, value in fixed.items():
        check_field(name, value)
    return fixed
