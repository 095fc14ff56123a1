"""Search: every candidate layout ranked by a closed-form step, the best scored in full.

1. `planner.space` enumerates the layouts the model and cluster allow and rejects, by
   reason, those that cannot run.
2. Each survivor gets a cheap closed-form step time (per-stage costs of the cost model, the
   pipeline's m·T + (Σ t - T)/vpp, the data-parallel tail) and its peak memory; layouts that do
   not fit are rejected. Branch and bound: the layouts are estimated in the order of a lower
   bound on that step (one block's passes spread evenly over the pipeline,
   `step_time.closed_form_lower_bound_s`, a few dictionary lookups); once `full` estimates are
   known, the layouts whose bound exceeds the `full`-th best are dropped unestimated: none
   could enter the shortlist, which is the one estimating every layout gives.
   A layout that fits only with every block recomputed in full stays (its estimate is that
   of full recompute): the ILP may recompute fewer blocks. Only when no layout fits are they
   tried with the optimizer states and/or the activations offloaded to the host.
3. The `full` best by that estimate, with the ZeRO++ twin of each ZeRO-3 one whose
   data-parallel groups cross nodes (the `full` best again), get from the ILP
   (`planner.ilp`) their layer-to-stage split, the blocks of each stage to recompute in full,
   and on mixed clusters the order in which the node groups take the pipeline ranks; both the
   ILP's answer and the default split are scored by the full simulator (`simulator.predict`);
   the better counts.
4. The objective orders the results: step time, or dollars or joules of the whole run with
   its failures when the job sets training.tokens (else of one step); the top K and the
   Pareto front of time against dollars per step are kept.
5. Ties (`break_ties`): with a calibrated profile, the layouts whose prediction intervals
   (simulator/uncertainty.py) overlap the best's are indistinguishable by the model; of those
   the one with the most memory headroom is chosen. `ranked` stays in objective order.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import Counter
from dataclasses import dataclass, fields, is_dataclass, replace
from typing import Literal

from parasim.planner.ilp import FULL, Placement, Split, SplitProblem, SplitSolution, solve_split
from parasim.planner.overlaps import applies, best_overlaps
from parasim.planner.space import (
    MAX_PLAN_GPUS,
    Space,
    can_offload,
    enumerate_space,
    zero_pp_twin,
)
from parasim.simulator.cost.profile import AnalyticProfile, default_profile
from parasim.simulator.economics import step_economics
from parasim.simulator.errors import Infeasible
from parasim.simulator.hardware import ClusterSpec
from parasim.simulator.job import Job
from parasim.simulator.layout import (
    DUAL_SCHEDULES,
    Layout,
    Offload,
    rank_stages,
    recomputed_modules,
)
from parasim.simulator.memory import (
    block_activation_bytes,
    in_flight_microbatches,
    rank_model_states,
)
from parasim.simulator.offload import node_dp
from parasim.simulator.params import StageParams, block_params, replicated_block_params
from parasim.simulator.predict import (
    predict,
    rank_capacity_bytes,
    rank_devices,
    rank_memory,
    rank_params,
)
from parasim.simulator.results import StepPrediction
from parasim.simulator.step_time import (
    StepContext,
    block_time_s,
    closed_form_lower_bound_s,
    closed_form_step_s,
    rank_precision_groups,
    stage_cost,
    step_context,
)

Objective = Literal["time", "cost", "energy"]
FULLY_SCORED = 24  # layouts the full simulator scores, best estimates first
MAX_PLACEMENTS = 24  # orders of the node groups the ILP chooses from (4! = 24)


@dataclass(frozen=True)
class Scored:
    """One layout, its prediction, and its value under each objective."""

    layout: Layout
    prediction: StepPrediction
    dollars_per_step: float
    joules_per_step: float
    cluster: ClusterSpec  # the job's cluster, its node groups in the order that takes the ranks

    def value(self, objective: Objective) -> float:
        """Step time; dollars or facility joules of the whole run with its failures when the
        job sets training.tokens (goodput depends on the layout's checkpoint size and the
        cluster), else of one step."""
        run = self.prediction.run
        if objective == "cost":
            return run.cost_usd if run is not None else self.dollars_per_step
        if objective == "energy":
            return run.energy_j if run is not None else self.joules_per_step
        return self.prediction.step_time_s


@dataclass(frozen=True)
class SearchResult:
    """What `parasim plan` reports."""

    ranked: tuple[Scored, ...]  # best first, by the objective
    pareto: tuple[Scored, ...]  # no other is both faster and cheaper
    considered: int
    rejected: Counter
    ilp_solves: int
    solve_time_s: float
    chosen: Scored  # the plan: ranked[0], or a tie with more memory headroom
    tied: tuple[Scored, ...] = ()  # the layouts whose intervals overlap ranked[0]'s
    ties_note: str = ""  # how ties were treated, in words


def economics(job: Job, prediction: StepPrediction) -> tuple[float, float]:
    """(dollars, facility joules) of one step without failures: the job's GPU-hour price
    (catalog or cluster.price_per_gpu_hour; on-demand or reserved per cluster.pricing) and the
    power model of `simulator.energy` (power × time over the step's phases, hosts, fabric,
    PUE). The whole run's cost is `prediction.run` (closed forms; no Monte Carlo here)."""
    return step_economics(job, prediction)


def search(job: Job, fixed: dict, objective: Objective = "time", top: int = 5,
           full: int = FULLY_SCORED, progress=None,
           profile: AnalyticProfile | None = None) -> SearchResult:
    """The best layouts of `job` for `objective`; `fixed` fields of `parallel:` held; the
    cost model's constants from `profile` (default profiles/analytic.yaml)."""
    start = time.perf_counter()
    profile = profile or default_profile()
    space = enumerate_space(job, fixed)
    rejected = Counter(space.rejected)
    estimates = _estimates(job, space, rejected, progress, profile, fixed, full)
    if not estimates:
        raise Infeasible(_no_fit_reason(space, rejected))
    shortlist = sorted(estimates, key=lambda e: e[0])[:full]
    shortlist = sorted(shortlist + _zero_pp_estimates(job, shortlist, profile, fixed),
                       key=lambda e: e[0])[:full]
    scored, solves, known = [], 0, {}
    for _, layout, as_is in shortlist:
        if as_is:  # the overlap flags, on what will be scored (planner.overlaps)
            layout = best_overlaps(layout, fixed,
                                   lambda lay: _estimate(job, lay, profile, known))
        best, used_ilp = _score(job, layout, bool({"stages", "full_recompute_layers"} & set(fixed)),
                                profile, as_is, "ep_comm_overlap" in fixed)
        solves += used_ilp
        if best is not None:
            scored.append(best)
        else:
            rejected["does not fit (simulated peak memory)"] += 1
    if not scored:
        raise Infeasible(_no_fit_reason(space, rejected))
    ranked = tuple(sorted(scored, key=lambda s: s.value(objective)))
    chosen, tied, note = break_ties(ranked, objective, profile)
    return SearchResult(ranked[:max(top, 1)], pareto_front(scored), space.considered, rejected,
                        solves, time.perf_counter() - start, chosen, tied, note)


def interval(scored: Scored, objective: Objective) -> tuple[float, float]:
    """The objective's prediction interval: its value times the step time's interval factors
    (time, dollars and joules all scale with the step time)."""
    low, high = scored.prediction.step_band
    return scored.value(objective) * low, scored.value(objective) * high


def headroom(scored: Scored) -> float:
    """The least share of usable memory left free over the pipeline ranks."""
    return min(1 - m.peak_bytes / m.capacity_bytes for m in scored.prediction.stages)


def break_ties(ranked: tuple[Scored, ...], objective: Objective, profile: AnalyticProfile
               ) -> tuple[Scored, tuple[Scored, ...], str]:
    """(chosen, tied, note): the layouts whose interval overlaps the best's (its low end at
    most the best's high end) tie with it; the most memory headroom wins. Only with a
    calibrated profile: an uncalibrated interval is mostly the model's bias, which every
    layout shares, and would tie layouts several times apart."""
    best = ranked[0]
    if not profile.band.calibrated:
        return best, (), ("not looked for: the profile's interval is not calibrated (a fitted "
                          "profile, --profile, breaks ties by memory headroom)")
    high = interval(best, objective)[1]
    tied = tuple(s for s in ranked[1:] if interval(s, objective)[0] <= high)
    chosen = max((best, *tied), key=headroom)
    if not tied:
        return best, (), "none: no other layout's interval overlaps the best's"
    return chosen, tied, (f"{len(tied)} layout(s) overlap the best's interval; chose the one "
                          f"with the most memory headroom ({headroom(chosen):.0%} free)")


def _estimates(job: Job, space: Space, rejected: Counter, progress,
               profile: AnalyticProfile, fixed: dict | None = None, keep: int = FULLY_SCORED
               ) -> list[tuple[float, Layout, bool]]:
    """(closed-form step time, layout, whether its default split fits as it is) of every
    layout whose default split fits in memory. One that fits only with every block recomputed
    in full stays, estimated at that (an upper bound): the ILP may recompute fewer blocks.
    Offloading is searched only where no layout fits without it (`_offloaded_estimates`)."""
    known, fixed = {}, fixed or {}
    offload_open = "offload" not in fixed and can_offload(job)
    plain = [layout for layout in space.layouts if not (offload_open and layout.offload.any)]
    out, failed = _plain_estimates(job, plain, rejected, progress, profile, known, keep)
    moved = [layout for layout in space.layouts if offload_open and layout.offload.any]
    if out or not offload_open:
        if failed:
            rejected["does not fit (activations)"] += len(failed)
        if moved:
            rejected["model states alone exceed device memory (fit with the optimizer "
                     "offloaded, which is searched only where nothing fits without)"] += len(moved)
        return out
    return _offloaded_estimates(job, moved + failed, rejected, profile, known)


def _plain_estimates(job: Job, layouts: list[Layout], rejected: Counter, progress,
                     profile: AnalyticProfile, known: dict, keep: int
                     ) -> tuple[list[tuple[float, Layout, bool]], list[Layout]]:
    """`_estimates` of `layouts` as they are (or with full recompute); also the layouts that
    do not fit either way. Branch and bound: the layouts are taken in the order of a lower
    bound on their estimate (`step_time.closed_form_lower_bound_s`); once `keep` estimates are
    known and the next bound exceeds the `keep`-th best of them, no layout left can enter the
    shortlist, and the rest are dropped unestimated. The shortlist is the one estimating every
    layout gives (`tests/test_search_pruning.py`); only the rejection counts of dropped layouts
    are not known."""
    bounds = [_lower_bound(job, layout, profile) for layout in layouts]
    bound_of = dict(zip(layouts, bounds))
    out, failed, ring_faster, best = [], [], {}, []  # best: the `keep` least, negated (heapq)
    order = sorted(range(len(layouts)), key=bounds.__getitem__)
    pruned = (f"cannot enter the {keep} best estimates: a lower bound on its step (its blocks' "
              "work spread evenly over the pipeline) is slower")
    for done, index in enumerate(order):
        if progress is not None:
            progress(done + 1, len(layouts))
        if len(best) == keep and bounds[index] > -best[0] * (1 + 1e-9):  # 1e-9: the sums'
            # rounding, which orders the bound's terms differently from the estimate's
            rejected[pruned] += len(order) - done
            if progress is not None:
                progress(len(layouts), len(layouts))
            break
        layout = layouts[index]
        if layout.cp_style == "ulysses" and _ring_is_faster(job, layout, profile, ring_faster):
            rejected["cp_style ulysses: its all-to-alls cost more than the ring's exposed "
                     "transfers (same memory)"] += 1
            continue
        estimate, as_is = _estimate_or_full(job, layout, profile, known)
        if layout.schedule in DUAL_SCHEDULES and estimate is not None and len(best) == keep \
                and estimate > -best[0]:
            rejected[pruned] += 1  # its own estimate is the bound: no need of its twin's
            continue
        if layout.schedule in DUAL_SCHEDULES and _twin_is_as_fast(job, layout, estimate,
                                                                  profile, known, bound_of):
            rejected[f"schedule {layout.schedule}: no faster than its 1F1B twin, which holds "
                     "less memory"] += 1
            continue
        if estimate is None:
            failed.append(layout)
            continue
        out.append((index, (estimate, layout, as_is)))
        heapq.heappush(best, -estimate)
        if len(best) > keep:
            heapq.heappop(best)
    return [entry for _, entry in sorted(out, key=lambda e: e[0])], failed


def _estimate_or_full(job: Job, layout: Layout, profile: AnalyticProfile, known: dict
                      ) -> tuple[float | None, bool]:
    """(the closed-form step of the layout as it is, else with every block recomputed in full,
    None where neither fits; whether as it is)."""
    estimate = _estimate(job, layout, profile, known)
    if estimate is None and layout.recompute != "full":
        return _estimate(job, all_full(layout), profile, known), False
    return estimate, estimate is not None


def _lower_bound(job: Job, layout: Layout, profile: AnalyticProfile) -> float:
    """`step_time.closed_form_lower_bound_s` of the layout on the cluster's GPUs."""
    candidate = replace(job, layout=layout)
    return closed_form_lower_bound_s(step_context(candidate, profile),
                                     [g.gpu for g in job.cluster.node_groups])


def _offloaded_estimates(job: Job, layouts: list[Layout], rejected: Counter,
                         profile: AnalyticProfile, known: dict
                         ) -> list[tuple[float, Layout, bool]]:
    """When nothing fits without offloading: the space's layouts that fit only with the
    optimizer offloaded (`space._with_optimizer_offload`), and every layout that did not fit,
    each with the fastest of its offloading variants that fits (`_offloaded`)."""
    out = []
    for layout in layouts:
        estimate = _estimate(job, layout, profile, known) if layout.offload.any else None
        if estimate is None:
            estimate, layout = _offloaded(job, layout, profile, known)
        if estimate is None:
            rejected["does not fit (activations), offloading included"] += 1
        else:
            out.append((estimate, layout, True))
    return out


def _zero_pp_estimates(job: Job, shortlist: list[tuple[float, Layout, bool]],
                       profile: AnalyticProfile, fixed: dict
                       ) -> list[tuple[float, Layout, bool]]:
    """ZeRO++ beside each ZeRO-3 layout of the shortlist whose data-parallel groups cross
    nodes (`space.zero_pp_twin`). Only there: ZeRO++ changes nothing but a ZeRO-3 layout's
    data-parallel tail and memory, and estimating a twin for each of the thousands of ZeRO-3
    layouts of a large search (its node-level collectives routed on the whole fabric) costs
    more than the search itself."""
    out, known = [], {}
    for _estimate_s, layout, _as_is in shortlist:
        twin = zero_pp_twin(job, layout, fixed)
        estimate = _estimate(job, twin, profile, known) if twin is not None else None
        if estimate is not None:
            out.append((estimate, twin, True))
    return out


def _offloaded(job: Job, layout: Layout, profile: AnalyticProfile, known: dict
               ) -> tuple[float | None, Layout]:
    """The fastest of the layout's offloading variants (its optimizer states, its activations,
    both; each keeping what the layout already offloads) that fits, with its estimate; (None,
    layout) when none does. Only asked of layouts that fit no other way: offloading never
    makes a fitting layout faster."""
    best: tuple[float | None, Layout] = (None, layout)
    for optimizer, activations in ((True, False), (False, True), (True, True)):
        variant = replace(layout, offload=Offload(
            optimizer=optimizer or layout.offload.optimizer,
            activations=activations or layout.offload.activations))
        if variant == layout:
            continue
        estimate = _estimate(job, variant, profile, known)
        if estimate is not None and (best[0] is None or estimate < best[0]):
            best = (estimate, variant)
    return best


def all_full(layout: Layout) -> Layout:
    """The layout with every block recomputed in full (no selective modules left to name)."""
    return replace(layout, recompute="full", recompute_modules=None)


def _twin_is_as_fast(job: Job, layout: Layout, estimate_s: float | None,
                     profile: AnalyticProfile, known: dict, bound_of: dict | None = None
                     ) -> bool:
    """A DualPipe(V) layout (`estimate_s` as `_estimate_or_full` gives it) cannot win where
    its 1F1B twin (the same layout, one stage per rank) is estimated at least as fast, or
    where either does not fit: DualPipe holds two copies of its stages and PP+1 micro-batches'
    stages, DualPipeV pp + 1/2 micro-batches of the rank's layers on every rank, at least
    1F1B's peak (`memory.in_flight_microbatches`), so it fits no better
    (`tests/test_search_pruning.py`): where it fits, so does the twin, and where its estimate
    is below the twin's lower bound (`bound_of`, else computed) the twin need not be
    estimated. Estimates are kept in `known`."""
    if estimate_s is None:
        return True
    twin = replace(layout, schedule="1f1b")
    bound_s = (bound_of or {}).get(twin)
    if bound_s is None:
        bound_s = _lower_bound(job, twin, profile)
    if estimate_s < bound_s * (1 - 1e-9):
        return False
    twin_s, _ = _estimate_or_full(job, twin, profile, known)
    return twin_s is None or estimate_s >= twin_s


def _ring_is_faster(job: Job, layout: Layout, profile: AnalyticProfile, known: dict) -> bool:
    """A Ulysses layout whose blocks are no faster than its ring twin's cannot win: the two
    hold the same memory and differ only in the blocks' context-parallel transfers. `known`
    keeps the answers by what a block's time depends on: not the schedule, the virtual
    stages, the ZeRO stage (or ZeRO++) or the layer split (none moves a rank or changes a
    block's work)."""
    def block_s(style: str) -> float:
        candidate = replace(job, layout=replace(layout, cp_style=style))
        ctx = step_context(candidate, profile)
        return block_time_s(ctx, ctx.job.cluster.node_groups[0].gpu)
    key = replace(layout, schedule="1f1b", vpp=1, zero_stage=0, zero_pp=False, stages=None,
                  full_recompute_layers=None)
    if key not in known:
        known[key] = block_s("ulysses") >= block_s("ring")
    return known[key]


def _estimate(job: Job, layout: Layout, profile, known: dict) -> float | None:
    """The closed-form step time of `layout` if its default split fits, else None; `known`
    keeps the answers (a layout's full-recompute twin is asked twice)."""
    if layout not in known:
        candidate = replace(job, layout=layout)
        ctx, params = step_context(candidate, profile), rank_params(candidate)
        known[layout] = closed_form_step_s(ctx, rank_devices(candidate), params) \
            if _fits(ctx, params) else None
    return known[layout]


def _fits(ctx: StepContext, params: list[StageParams]) -> bool:
    """The default split's peak memory on every rank, `predict`'s memory model with the
    closed-form in-flight counts (which the simulated schedule reproduces,
    `tests/test_schedule.py`). Of ranks alike (the same parameters and blocks in each chunk,
    the same ends, one kind of node) only the one with the most micro-batches in flight is
    checked: memory grows with them."""
    layout, job = ctx.layout, ctx.job
    last, alike = len(job.stage_layers) - 1, job.cluster.is_homogeneous
    worst: dict[tuple, tuple[int, float]] = {}
    for rank, stage in enumerate(params):
        held = rank_stages(layout, rank)
        key = (stage, tuple(rank_precision_groups(job, rank)), 0 in held, last in held,
               None if alike else rank)
        in_flight = in_flight_microbatches(layout, rank, ctx.microbatches)
        if key not in worst or in_flight > worst[key][1]:
            worst[key] = (rank, in_flight)
    return all(rank_memory(ctx, rank, params[rank], in_flight).fits
               for rank, in_flight in worst.values())


def _score(job: Job, layout: Layout, split_fixed: bool, profile: AnalyticProfile,
           as_is: bool = True, ep_overlap_fixed: bool = False) -> tuple[Scored | None, int]:
    """The full simulation of the default split (when it fits `as_is`) and of the ILP's split,
    placement and recompute (when there is a choice: pp > 1, blocks that may be recomputed in
    full, or node groups to order). Where the ILP recomputes blocks in full, a searched expert
    all-to-all overlap is dropped (Megatron-Core cannot run the two together)."""
    options = [replace(job, layout=layout)] if as_is else []
    used_ilp = 0
    choice = layout.pp > 1 or layout.recompute != "full" or not job.cluster.is_homogeneous
    if choice and not split_fixed and layout.schedule not in DUAL_SCHEDULES:  # the ILP's
        # stages are chunk·pp + rank; DualPipe(V) runs the default split
        try:
            default = replace(job, layout=layout)
            problem, orders = split_problem(default, profile)
            chosen = apply_split(job, layout, problem, orders, _solved(problem).split)
            if chosen.layout.ep_comm_overlap and not ep_overlap_fixed and \
                    not applies(chosen.layout, "ep_comm_overlap"):
                chosen = replace(chosen, layout=replace(chosen.layout, ep_comm_overlap=False))
            if (chosen.stage_layers, chosen.layout.full_recompute_layers, chosen.cluster) != \
                    (default.stage_layers, None, default.cluster):
                options.append(chosen)  # not the default split again
            used_ilp = 1
        except Infeasible:
            pass
    best = None
    for candidate in options:
        prediction = predict(candidate, profile=profile)
        if not prediction.fits:
            continue
        dollars, joules = economics(candidate, prediction)
        scored = Scored(candidate.layout, prediction, dollars, joules, candidate.cluster)
        if best is None or scored.prediction.step_time_s < best.prediction.step_time_s:
            best = scored
    return best, used_ilp


_SOLVED: dict[tuple, SplitSolution] = {}


def _solved(problem: SplitProblem) -> SplitSolution:
    """`solve_split`, once per problem: layouts that differ only where the split does not
    see it (1F1B and ZB-H1 cost a block alike, up to the order of a sum) share a program; a
    key rounds the costs to 12 digits."""
    key = _rounded(problem)
    if key not in _SOLVED:
        if len(_SOLVED) > 4096:
            _SOLVED.clear()
        _SOLVED[key] = solve_split(problem)
    return _SOLVED[key]


def _rounded(value):
    if isinstance(value, float):
        return float(f"{value:.12g}")
    if isinstance(value, (tuple, list)):
        return tuple(_rounded(v) for v in value)
    if is_dataclass(value):
        return tuple(_rounded(getattr(value, f.name)) for f in fields(value))
    return value


def node_group_orders(job: Job) -> list[tuple[int, ...]]:
    """The orders in which the cluster's node groups can take the ranks (group i's GPUs
    before group j's), the given order first; identical groups are not reordered. At most
    MAX_PLACEMENTS: with more than four node groups only the first ones are tried."""
    groups = job.cluster.node_groups
    seen, orders = set(), []
    for order in itertools.islice(itertools.permutations(range(len(groups))), MAX_PLACEMENTS):
        key = tuple(groups[i] for i in order)
        if key not in seen:
            seen.add(key)
            orders.append(order)
    return orders


def reordered(job: Job, order: tuple[int, ...]) -> Job:
    """The job with its node groups taking the ranks in `order`."""
    groups = job.cluster.node_groups
    return replace(job, cluster=replace(job.cluster, node_groups=tuple(groups[i] for i in order)))


def split_problem(job: Job, profile: AnalyticProfile | None = None
                  ) -> tuple[SplitProblem, list[tuple[int, ...]]]:
    """The ILP's cost table from the cost model: per-block time in each recompute mode on each
    rank's GPUs under each order of the node groups, block states and activations, the ends'
    embedding and LM head, each rank's in-flight micro-batches and memory."""
    layout, model, profile = job.layout, job.model, profile or default_profile()
    modes = (layout.recompute,) if layout.recompute == FULL else (layout.recompute, FULL)
    orders = node_group_orders(job)
    ctx = step_context(job, profile)
    dense, expert = block_params(model, model.is_moe)
    one_layer = StageParams(dense=dense, expert=expert, embedding=0, lm_head=0,
                            replicated=replicated_block_params(model, model.is_moe))
    in_flight = tuple(in_flight_microbatches(layout, r, ctx.microbatches) for r in range(layout.pp))
    state_bytes = rank_model_states(one_layer, job.training, layout,
                                    node_dp(job.cluster, layout) if layout.zero_pp else 1
                                    ).total_bytes
    activation_bytes = tuple(block_activation_bytes(model, ctx.shard, model.is_moe, mode,
                                                    recomputed_modules(layout))
                             for mode in modes)
    rebuild_bytes = block_activation_bytes(model, ctx.shard, model.is_moe, "none")
    extra_bytes = [0.0] * layout.num_virtual_stages
    for rank, held in enumerate(_held_beyond_blocks(job, ctx, in_flight, state_bytes,
                                                    activation_bytes[0], rebuild_bytes)):
        extra_bytes[rank] = held  # on the rank's first virtual stage, which it always holds
    problem = SplitProblem(
        layers=model.num_layers, ranks=layout.pp, vpp=layout.vpp,
        microbatches=ctx.microbatches, modes=modes,
        layer_state_bytes=state_bytes, layer_activation_bytes=activation_bytes,
        rebuild_bytes=rebuild_bytes, in_flight=in_flight,
        stage_bytes=tuple(extra_bytes),
        placements=tuple(_placement(reordered(job, order), modes, profile) for order in orders))
    return problem, orders


def _held_beyond_blocks(job: Job, ctx: StepContext, in_flight: tuple[float, ...],
                        state_bytes: float, activation_bytes: float, rebuild_bytes: float
                        ) -> list[float]:
    """Per rank, the bytes `predict`'s memory model (`rank_memory`) holds beyond the ILP's
    per-block terms: the embedding's and LM head's states and activations, the working
    buffers (ZeRO-3's gathered weights), anything it adds. Its memory of the default split
    less the per-block terms of that split; none of it depends on the split, so the ILP's
    memory equals `rank_memory` for every split (one memory model, `tests/test_plan.py`).
    Negative where the rank's blocks weigh less than the per-block terms (an MoE model's
    dense first blocks, which the program prices as MoE blocks: exact at the default
    split)."""
    layout, params = job.layout, rank_params(job)
    rebuilt = rebuild_bytes if layout.recompute == FULL else 0.0
    held = []
    for rank in range(layout.pp):
        layers = sum(job.stage_layers[v] for v in range(rank, layout.num_virtual_stages,
                                                        layout.pp))
        total = rank_memory(ctx, rank, params[rank], in_flight[rank]).peak_bytes
        held.append(total - layers * (state_bytes + in_flight[rank] * activation_bytes)
                    - rebuilt)
    return held


def _placement(job: Job, modes: tuple[str, ...], profile) -> Placement:
    """Per rank, one block's time in each mode on its GPUs; the ends' extra time; memory."""
    layout = job.layout
    ctx, devices = step_context(job, profile), rank_devices(job)
    times = tuple(tuple(block_time_s(ctx, devices[r], mode) for mode in modes)
                  for r in range(layout.pp))
    stages = layout.num_virtual_stages
    extra_s = [0.0] * stages
    for v in {0, stages - 1}:
        cost = stage_cost(ctx, v, devices[v % layout.pp])
        passes = cost.forward.total + cost.backward.total + cost.weight.total
        extra_s[v] = max(0.0, passes.total_s - job.stage_layers[v] * times[v % layout.pp][0])
    return Placement(layer_time_s=times, stage_time_s=tuple(extra_s),
                     capacity_bytes=tuple(profile.usable_memory_bytes(rank_capacity_bytes(job, r))
                                          for r in range(layout.pp)),
                     label=" then ".join(g.gpu.name for g in job.cluster.node_groups))


def apply_split(job: Job, layout: Layout, problem: SplitProblem, orders: list[tuple[int, ...]],
                split: Split) -> Job:
    """The job with the ILP's decision: node groups in the chosen order, the layer split, and
    the blocks of each stage recomputed in full (when that is not the layout's own mode)."""
    full = split.of_mode(problem.full_mode) if layout.recompute != FULL else ()
    chosen = replace(layout, stages=split.layers,
                     full_recompute_layers=full if any(full) else None)
    return replace(reordered(job, orders[split.placement]), layout=chosen)


def pareto_front(scored: list[Scored]) -> tuple[Scored, ...]:
    """The layouts no other beats on both step time and dollars per step."""
    front = []
    for s in sorted(scored, key=lambda s: (s.prediction.step_time_s, s.dollars_per_step)):
        if not front or s.dollars_per_step < front[-1].dollars_per_step:
            front.append(s)
    return tuple(front)


def _no_fit_reason(space: Space, rejected: Counter) -> str:
    counts = "; ".join(f"{n} {reason}" for reason, n in rejected.most_common(3))
    return f"no layout of the {space.considered} considered runs ({counts})"


def smallest_fix(job: Job, fixed: dict) -> str:
    """What would make an infeasible job run: ZeRO-3 with full recompute and micro-batch 1 on
    the same GPUs, or else the fewest GPUs (doubling the nodes, up to 64 times and to the
    most plan searches, MAX_PLAN_GPUS) that fit."""
    relaxed = {**fixed, "zero_stage": 3, "recompute": "full", "micro_batch_size": 1}
    relaxed.pop("full_recompute_layers", None)  # full recompute everywhere
    relaxed.pop("recompute_modules", None)
    if _any_fits(job, relaxed):
        changed = [f"{k}={v}" for k, v in relaxed.items() if fixed.get(k) != v]
        return "set " + ", ".join(f"parallel.{c}" for c in changed)
    group = job.cluster.node_groups[0]
    largest = job.cluster.world_size
    for factor in (2, 4, 8, 16, 32, 64):
        if len(job.cluster.node_groups) != 1 or group.num_gpus * factor > MAX_PLAN_GPUS:
            break
        bigger = replace(job, cluster=replace(job.cluster, node_groups=(
            replace(group, num_nodes=group.num_nodes * factor),)))
        largest = bigger.cluster.world_size
        if _any_fits(bigger, relaxed):
            return (f"use at least {bigger.cluster.world_size} GPUs "
                    f"(cluster.num_nodes={group.num_nodes * factor}) with ZeRO-3 and full "
                    "recompute")
    return (f"a larger GPU or a smaller model: even {largest:,} GPUs with ZeRO-3 and full "
            "recompute do not fit it")


def _any_fits(job: Job, fixed: dict) -> bool:
    profile = default_profile()
    for layout in enumerate_space(job, fixed).layouts:
        candidate = replace(job, layout=layout)
        if _fits(step_context(candidate, profile), rank_params(candidate)):
            return True
    return False
