"""The layer-to-stage split of a pipeline, each stage's recompute and which node group serves
which stages, chosen by one mixed-integer program (PuLP + CBC).

A pipeline of P ranks runs P·vpp virtual stages; stage v lives on rank v mod P. The program
places L transformer blocks on the stages, gives each block a recompute mode k ∈ K (the
layout's mode, and "full" when that is not already it), and picks one placement o ∈ O of the
cluster's node groups on the pipeline ranks (one placement on a homogeneous cluster):

    variables   y_o ∈ {0, 1}                       placement o is used
                x_{o,v,k} ∈ Z, 0 ≤ x ≤ L           blocks of stage v in mode k, under o
                u_{o,r} ∈ {0, 1}                   rank r holds a block recomputed in full
                T ≥ 0 (continuous)                 time of the slowest rank, one micro-batch

    rank time   t_r = Σ_o Σ_{v ≡ r} (Σ_k x_{o,v,k} · τ_{o,r,k} + y_o · stage_time_s[o][v])

    (placement)     Σ_o y_o = 1
    (layers)        Σ_{o,v,k} x_{o,v,k} = L
    (used_{o,v})    min_layers · y_o ≤ Σ_k x_{o,v,k} ≤ L · y_o
    (rebuilt_{o,r}) Σ_{v ≡ r} x_{o,v,full} ≤ k_{o,r} · u_{o,r}      (k: most blocks r can hold)
    (memory_{o,r})  Σ_{v ≡ r} (Σ_k x_{o,v,k} · (state + in_flight[r] · act_k) + y_o · stage_bytes[v])
                      + u_{o,r} · rebuild_bytes ≤ capacity_bytes[o][r]
    (bottleneck_r)  T ≥ t_r

    (order_{o,v})   Σ_k x_{o,v,k} ≥ Σ_k x_{o,v+P,k},  x_{o,v,full} ≥ x_{o,v+P,full}   (vpp > 1)
    (balance_{o,r}) Σ_k x_{o,r+(vpp−1)P,k} ≥ Σ_k x_{o,r,k} − y_o                     (vpp > 1)

    minimize        m·T + (Σ_r t_r − T) / vpp

τ_{o,r,k} is one block's forward, backward and recomputation (mode k) with its exposed
communication, for one micro-batch, on the GPUs that serve rank r under placement o; act_k its
stored activations (Korthikanti et al. 2022: full recompute keeps only the block's input);
rebuild_bytes the activations one fully recomputed block rebuilds for its backward. The
objective is the step time of 1F1B (vpp = 1) and interleaved 1F1B: m micro-batches through
the slowest rank, plus the fill and drain of the others, which interleaving shortens vpp-fold.
For P equal ranks (t_r = t) it is the closed form (m + (P − 1)/vpp) · t of Narayanan et al.
2021, "Efficient Large-Scale Language Model Training on GPU Clusters Using Megatron-LM", §2.2
(bubble fraction (P − 1)/(vpp·m)). Full recompute costs time and saves memory, so the program
recomputes only where memory binds; a placement puts the fastest or largest GPUs where the
work or the in-flight activations are (the first ranks hold the most micro-batches).

(order) and (balance) do not change the optimum: time and memory depend on a rank's chunks
only through its totals per mode, and any totals with n_r ≥ vpp·min_layers blocks split into
vpp chunks that differ by at most one, largest first, with the full blocks filled into the
chunks in order (non-increasing). They break the vpp!-fold symmetry of each rank's chunks,
without which CBC cannot close the gap for P = 16, vpp = 2 within 10 s.

The bound first. Replacing a block's mode by the fastest one never slows a rank, and dropping
the memory rows only enlarges the feasible set, so the program with every block in the fastest
mode and unlimited memory bounds the optimum from below; when its answer fits in memory it is
optimal, and the full program (slower to prove: the recompute modes make many ties) is solved
only when memory binds.

Memory rows are written in GiB so that CBC's absolute tolerances see numbers near 1. The
solution is decoded (rounded, integrality and Σ = L asserted), checked with `fits`, and its
time is recomputed with `pipeline_time_s`, not read from the solver.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import pulp

from parasim.simulator.errors import Infeasible, SpecError
from parasim.simulator.layout import RECOMPUTES

GiB = 2**30
FULL = "full"
_INTEGRALITY_TOLERANCE = 1e-6


@dataclass(frozen=True, kw_only=True)
class Placement:
    """The pipeline ranks under one assignment of node groups: what a block costs on each."""

    layer_time_s: tuple[tuple[float, ...], ...]  # τ[rank][mode]: one block, one micro-batch
    stage_time_s: tuple[float, ...]  # per virtual stage: extra time per micro-batch (embed, head)
    capacity_bytes: tuple[float, ...]  # per rank: usable memory
    label: str = ""  # how the plan names it, e.g. the node groups in rank order


@dataclass(frozen=True, kw_only=True)
class SplitProblem:
    """One pipeline's split: L blocks over P·vpp virtual stages (stage v on rank v mod P)."""

    layers: int  # L transformer blocks to place
    ranks: int  # P pipeline ranks
    vpp: int = 1  # virtual stages per rank; stage v lives on rank v % P
    microbatches: int  # m micro-batches per step
    modes: tuple[str, ...] = ("none",)  # K: the recompute modes a block may take
    layer_state_bytes: float  # one block's weights+gradients+optimizer states on one rank
    layer_activation_bytes: tuple[float, ...]  # act_k: one block's stored activations, per mode
    rebuild_bytes: float = 0.0  # transient: the activations a fully recomputed block rebuilds
    in_flight: tuple[float, ...]  # per rank: micro-batches of all its layers held at the peak
    # per virtual stage: the bytes beyond its blocks' per-block terms (embedding and head states
    # and activations, working buffers); negative where its blocks weigh less than
    # layer_state_bytes says (the dense first blocks of an MoE model)
    stage_bytes: tuple[float, ...]
    placements: tuple[Placement, ...]  # O: the assignments of node groups to choose from
    min_layers: int = 1  # per virtual stage

    def __post_init__(self) -> None:
        for name in ("layers", "ranks", "vpp", "microbatches"):
            _check(name, getattr(self, name), getattr(self, name) >= 1, "must be at least 1")
        _check("min_layers", self.min_layers, 0 <= self.min_layers <= self.layers,
               f"must lie in 0..layers={self.layers}")
        _check("modes", self.modes, bool(self.modes) and len(set(self.modes)) == len(self.modes)
               and set(self.modes) <= set(RECOMPUTES), f"distinct modes among {RECOMPUTES}")
        _check("layer_state_bytes", self.layer_state_bytes, self.layer_state_bytes >= 0,
               "must not be negative")
        _check("rebuild_bytes", self.rebuild_bytes, self.rebuild_bytes >= 0, "must not be negative")
        _check("placements", self.placements, bool(self.placements), "needs at least one")
        self._set_vector("layer_activation_bytes", len(self.modes))
        self._set_vector("in_flight", self.ranks)
        self._set_vector("stage_bytes", self.stages, signed=True)
        for o, placement in enumerate(self.placements):
            _check(f"placements[{o}].layer_time_s", placement.layer_time_s,
                   len(placement.layer_time_s) == self.ranks and all(
                       len(row) == len(self.modes) and min(row) >= 0
                       for row in placement.layer_time_s),
                   f"needs {self.ranks} rows of {len(self.modes)} non-negative times")
            for name, length in (("stage_time_s", self.stages), ("capacity_bytes", self.ranks)):
                values = getattr(placement, name)
                _check(f"placements[{o}].{name}", values,
                       len(values) == length and min(values) >= 0,
                       f"needs {length} non-negative values")

    def _set_vector(self, name: str, length: int, signed: bool = False) -> None:
        values = tuple(float(value) for value in getattr(self, name))
        _check(name, values, len(values) == length, f"needs one value each for {length}")
        _check(name, values, signed or min(values) >= 0, "must not be negative")
        object.__setattr__(self, name, values)

    @property
    def stages(self) -> int:
        """P·vpp virtual stages."""
        return self.ranks * self.vpp

    def stages_on(self, rank: int) -> range:
        """The virtual stages v ≡ rank (mod P)."""
        return range(rank, self.stages, self.ranks)

    def block_bytes(self, rank: int, mode: int) -> float:
        """One block's bytes on `rank` in mode k: states + in_flight[rank]·act_k."""
        return self.layer_state_bytes + self.in_flight[rank] * self.layer_activation_bytes[mode]

    @property
    def full_mode(self) -> int | None:
        """The index of "full" among the modes, if a block may take it."""
        return self.modes.index(FULL) if FULL in self.modes else None


@dataclass(frozen=True)
class Split:
    """A decision: the placement, and per virtual stage its blocks in each mode."""

    placement: int  # index into SplitProblem.placements
    blocks: tuple[tuple[int, ...], ...]  # [stage][mode]

    @classmethod
    def of_layers(cls, layers: tuple[int, ...], mode: int = 0, placement: int = 0,
                  modes: int = 1) -> Split:
        """Every block of each stage in one mode."""
        return cls(placement, tuple(tuple(n if k == mode else 0 for k in range(modes))
                                    for n in layers))

    @property
    def layers(self) -> tuple[int, ...]:
        """Blocks per virtual stage."""
        return tuple(sum(row) for row in self.blocks)

    def of_mode(self, mode: int | None) -> tuple[int, ...]:
        """Blocks per virtual stage in `mode` (zeros when the problem has no such mode)."""
        return tuple(0 if mode is None else row[mode] for row in self.blocks)


@dataclass(frozen=True)
class SplitSolution:
    """The chosen split and what it costs."""

    split: Split
    objective_s: float  # pipeline time of this split, recomputed by `pipeline_time_s`
    solve_time_s: float  # wall time of building and solving the program
    status: str  # "optimal", or "feasible" when CBC stopped at the time limit

    @property
    def layers(self) -> tuple[int, ...]:
        return self.split.layers


def _check(field: str, value: object, ok: bool, why: str) -> None:
    if not ok:
        raise SpecError(f"SplitProblem.{field}", value, why)


# --- the cost and the constraints, for any split ---------------------------------------------


def _check_split(problem: SplitProblem, split: Split) -> None:
    shape_ok = len(split.blocks) == problem.stages and all(
        len(row) == len(problem.modes) and min(row) >= 0 for row in split.blocks)
    if not shape_ok or sum(split.layers) != problem.layers or not \
            0 <= split.placement < len(problem.placements):
        raise SpecError("split", split,
                        f"needs {problem.stages} stages × {len(problem.modes)} modes of blocks "
                        f"summing to {problem.layers}, and a placement index")


def rank_times_s(problem: SplitProblem, split: Split) -> list[float]:
    """t_r = Σ_{v ≡ r} (Σ_k x_{v,k} · τ_{r,k} + stage_time_s[v]) under the split's placement."""
    _check_split(problem, split)
    placement = problem.placements[split.placement]
    return [sum(sum(n * tau for n, tau in zip(split.blocks[v], placement.layer_time_s[r]))
                + placement.stage_time_s[v] for v in problem.stages_on(r))
            for r in range(problem.ranks)]


def pipeline_time_s(problem: SplitProblem, split: Split) -> float:
    """m·T + (Σ_r t_r − T)/vpp with T = max_r t_r: the program's objective for any split
    (1F1B / interleaved; Narayanan et al. 2021 §2.2)."""
    times = rank_times_s(problem, split)
    slowest = max(times)
    return problem.microbatches * slowest + (sum(times) - slowest) / problem.vpp


def rank_bytes(problem: SplitProblem, split: Split) -> list[float]:
    """(memory_r)'s left side: Σ_{v≡r} (Σ_k x_{v,k}·(state + in_flight[r]·act_k)
    + stage_bytes[v]), plus rebuild_bytes where a block is recomputed in full."""
    _check_split(problem, split)
    full = split.of_mode(problem.full_mode)
    return [sum(sum(n * problem.block_bytes(r, k) for k, n in enumerate(split.blocks[v]))
                + problem.stage_bytes[v] for v in problem.stages_on(r))
            + problem.rebuild_bytes * any(full[v] for v in problem.stages_on(r))
            for r in range(problem.ranks)]


def fits(problem: SplitProblem, split: Split) -> bool:
    """(memory_r) on every rank, and min_layers on every stage."""
    used = rank_bytes(problem, split)
    capacity = problem.placements[split.placement].capacity_bytes
    return min(split.layers) >= problem.min_layers and all(
        u <= c for u, c in zip(used, capacity))


# --- the program --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Program:
    prob: pulp.LpProblem
    y: list[pulp.LpVariable]  # y_o
    x: list[list[list[pulp.LpVariable]]]  # x_{o,v,k}


def _build(problem: SplitProblem) -> _Program:
    """Variables, constraint groups and objective, as in the module docstring."""
    L, P, K = problem.layers, problem.ranks, range(len(problem.modes))
    O, V = range(len(problem.placements)), range(problem.stages)
    prob = pulp.LpProblem("pipeline_split", pulp.LpMinimize)
    y = [pulp.LpVariable(f"y_{o}", cat=pulp.LpBinary) for o in O]
    x = [[[pulp.LpVariable(f"x_{o}_{v}_{k}", lowBound=0, upBound=L, cat=pulp.LpInteger)
           for k in K] for v in V] for o in O]
    T = pulp.LpVariable("T", lowBound=0)
    blocks = [[pulp.lpSum(x[o][v]) for v in V] for o in O]  # Σ_k x_{o,v,k}
    t = [pulp.lpSum(x[o][v][k] * problem.placements[o].layer_time_s[r][k]
                    for o in O for v in problem.stages_on(r) for k in K)
         + pulp.lpSum(y[o] * problem.placements[o].stage_time_s[v]
                      for o in O for v in problem.stages_on(r)) for r in range(P)]
    # (placement) Σ_o y_o = 1;  (layers) Σ x = L
    prob += pulp.lpSum(y) == 1, "placement"
    prob += pulp.lpSum(blocks[o][v] for o in O for v in V) == L, "layers"
    for o in O:
        # (used_{o,v}) min_layers·y_o ≤ Σ_k x_{o,v,k} ≤ L·y_o
        for v in V:
            prob += blocks[o][v] <= L * y[o], f"used_max_o{o}_v{v}"
            prob += blocks[o][v] >= problem.min_layers * y[o], f"used_min_o{o}_v{v}"
        _add_memory_rows(problem, prob, o, y[o], x[o])
        _add_chunk_symmetry_breaking(problem, prob, o, y[o], x[o])
    # (bottleneck_r) T ≥ t_r
    for r in range(P):
        prob += T >= t[r], f"bottleneck_r{r}"
    # minimize m·T + (Σ_r t_r − T)/vpp
    prob += problem.microbatches * T + (pulp.lpSum(t) - T) * (1 / problem.vpp), "pipeline_time"
    return _Program(prob, y, x)


def _add_memory_rows(problem: SplitProblem, prob: pulp.LpProblem, o: int, y_o: pulp.LpVariable,
                     x_o: list[list[pulp.LpVariable]]) -> None:
    """(rebuilt_{o,r}) and (memory_{o,r}), in GiB."""
    full = problem.full_mode
    capacity = problem.placements[o].capacity_bytes
    for r in range(problem.ranks):
        if math.isinf(capacity[r]):
            continue  # no limit (the bound of `solve_split`)
        used = pulp.lpSum(x_o[v][k] * (problem.block_bytes(r, k) / GiB)
                          for v in problem.stages_on(r) for k in range(len(problem.modes)))
        used += y_o * (sum(problem.stage_bytes[v] for v in problem.stages_on(r)) / GiB)
        if full is not None and problem.rebuild_bytes > 0:
            u = pulp.LpVariable(f"u_{o}_{r}", cat=pulp.LpBinary)
            most = max(0, max_blocks(problem, o, r))  # a tighter big-M than L (same optimum)
            prob += pulp.lpSum(x_o[v][full] for v in problem.stages_on(r)) <= most * u, \
                f"rebuilt_o{o}_r{r}"
            used += u * (problem.rebuild_bytes / GiB)
        prob += used <= capacity[r] / GiB, f"memory_o{o}_r{r}"


def _add_chunk_symmetry_breaking(problem: SplitProblem, prob: pulp.LpProblem, o: int,
                                 y_o: pulp.LpVariable, x_o: list[list[pulp.LpVariable]]) -> None:
    """(order_{o,v}) and (balance_{o,r}) of the module docstring."""
    full = problem.full_mode
    for r in range(problem.ranks):
        chunks = problem.stages_on(r)
        for v, w in zip(chunks, chunks[1:]):
            prob += pulp.lpSum(x_o[v]) >= pulp.lpSum(x_o[w]), f"order_o{o}_v{v}"
            if full is not None and len(problem.modes) > 1:
                prob += x_o[v][full] >= x_o[w][full], f"order_full_o{o}_v{v}"
        if problem.vpp > 1:
            prob += pulp.lpSum(x_o[chunks[-1]]) >= pulp.lpSum(x_o[chunks[0]]) - y_o, \
                f"balance_o{o}_r{r}"


def solve_split(problem: SplitProblem, time_limit_s: float = 10.0) -> SplitSolution:
    """The split of least `pipeline_time_s` that `fits`; `Infeasible` (with the reason) if
    none. First the bound: the same program with every block in the fastest mode and memory
    unlimited; if its split fits, it is optimal (module docstring, "The bound first")."""
    start = time.perf_counter()
    bound = _fastest_unlimited(problem)
    if bound is not None:
        split = _widened(problem, _solve(bound, time_limit_s)[0])
        if fits(problem, split):
            return SplitSolution(split, pipeline_time_s(problem, split),
                                 time.perf_counter() - start, "optimal")
    split, status = _solve(problem, time_limit_s)
    return SplitSolution(split, pipeline_time_s(problem, split), time.perf_counter() - start,
                         status)


def _solve(problem: SplitProblem, time_limit_s: float) -> tuple[Split, str]:
    """Build, solve, check the status, decode, verify."""
    program = _build(problem)
    program.prob.solve(pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit_s))
    status = _checked_status(problem, program.prob, time_limit_s)
    split = _decode(problem, program)
    assert fits(problem, split), f"decoded split {split} breaks a memory constraint"
    objective_s = pipeline_time_s(problem, split)
    solver_objective_s = pulp.value(program.prob.objective)
    assert objective_s <= solver_objective_s * (1 + 1e-6) + 1e-12, (objective_s, solver_objective_s)
    return split, status


def _fastest_unlimited(problem: SplitProblem) -> SplitProblem | None:
    """The problem with one mode, the first, and no memory limit, if the first mode is the
    fastest on every rank of every placement (else None: no bound this simple)."""
    if not all(row[0] == min(row) for p in problem.placements for row in p.layer_time_s):
        return None
    unlimited = tuple(replace(p, layer_time_s=tuple(row[:1] for row in p.layer_time_s),
                              capacity_bytes=(math.inf,) * problem.ranks)
                      for p in problem.placements)
    return replace(problem, modes=problem.modes[:1],
                   layer_activation_bytes=problem.layer_activation_bytes[:1],
                   placements=unlimited)


def _widened(problem: SplitProblem, split: Split) -> Split:
    """A one-mode split as a split of `problem` (every block in its first mode)."""
    return Split.of_layers(split.layers, placement=split.placement, modes=len(problem.modes))


def _checked_status(problem: SplitProblem, prob: pulp.LpProblem, time_limit_s: float) -> str:
    """"optimal" or "feasible" (time limit, best split so far); else raise `Infeasible`."""
    if prob.sol_status == pulp.LpSolutionOptimal:
        return "optimal"
    if prob.sol_status == pulp.LpSolutionIntegerFeasible:
        return "feasible"
    reason = infeasibility_reason(problem)
    if reason is not None:
        raise Infeasible(reason)
    assert prob.status != pulp.LpStatusInfeasible, "CBC says infeasible; the direct bounds do not"
    raise Infeasible(f"CBC found no split within {time_limit_s:g} s "
                     f"(status {pulp.LpStatus[prob.status]})")


def _rounded(variable: pulp.LpVariable) -> int:
    value = variable.value() or 0.0
    assert abs(value - round(value)) <= _INTEGRALITY_TOLERANCE, (variable.name, value)
    return round(value)


def _decode(problem: SplitProblem, program: _Program) -> Split:
    """The chosen placement and its x_{o,v,k}; integrality, bounds and Σ = L asserted."""
    chosen = [o for o, y_o in enumerate(program.y) if _rounded(y_o) == 1]
    assert len(chosen) == 1, chosen
    split = Split(chosen[0], tuple(tuple(_rounded(x) for x in row)
                                   for row in program.x[chosen[0]]))
    assert min(split.layers) >= problem.min_layers and sum(split.layers) == problem.layers, split
    return split


# --- why no split exists -----------------------------------------------------------------------


def max_blocks(problem: SplitProblem, placement: int, rank: int) -> int:
    """k_r: the most blocks `rank` can hold beside its stages' extras, every block in the mode
    that stores least (a mix holds no more: each block costs at least the least); −1 if not
    even the extras fit. L if blocks cost nothing."""
    extras = sum(problem.stage_bytes[v] for v in problem.stages_on(rank))
    spare = problem.placements[placement].capacity_bytes[rank] - extras
    best = -1
    for k, mode in enumerate(problem.modes):
        room = spare - (problem.rebuild_bytes if mode == FULL else 0.0)
        per_block = problem.block_bytes(rank, k)
        if room >= 0:
            best = max(best, problem.layers if per_block == 0 else
                       min(problem.layers, math.floor(room / per_block)))
    return best


def infeasibility_reason(problem: SplitProblem) -> str | None:
    """Why no split fits under any placement (the first placement's reason), or None."""
    L, k = problem.layers, problem.min_layers
    if problem.stages * k > L:
        return (f"the layers cannot be split: {problem.stages} virtual stages × min_layers={k} "
                f"need {problem.stages * k} layers, the model has {L}")
    reasons = [_placement_reason(problem, o) for o in range(len(problem.placements))]
    if any(reason is None for reason in reasons):
        return None
    where = f" (placement {problem.placements[0].label})" if len(reasons) > 1 else ""
    return reasons[0] + where


def _placement_reason(problem: SplitProblem, o: int) -> str | None:
    P, vpp, L, k = problem.ranks, problem.vpp, problem.layers, problem.min_layers
    capacity = problem.placements[o].capacity_bytes
    blocks = [max_blocks(problem, o, r) for r in range(P)]
    for r in range(P):
        if blocks[r] < vpp * k:
            cheapest = min(problem.block_bytes(r, m) for m in range(len(problem.modes)))
            need = sum(k * cheapest + problem.stage_bytes[v] for v in problem.stages_on(r))
            return (f"the layers do not fit: even the lightest split needs {need / GiB:.2f} GiB "
                    f"on rank {r}, {capacity[r] / GiB:.2f} GiB usable")
    if sum(blocks) < L:
        held = ", ".join(f"rank {r}: {n}" for r, n in enumerate(blocks))
        return (f"the layers do not fit: the ranks' memory holds at most {sum(blocks)} of "
                f"{L} layers ({held})")
    return None
