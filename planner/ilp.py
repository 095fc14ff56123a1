"""The layer-to-stage split of a pipeline, chosen by a mixed-integer program (PuLP + CBC).

A pipeline of P ranks runs P·vpp virtual stages; stage v lives on rank v mod P. The program
places L transformer blocks on the stages:

    variables   x_v ∈ Z, min_layers ≤ x_v ≤ L     blocks on virtual stage v
                T ≥ 0 (continuous)               time of the slowest rank, one micro-batch

    rank time   t_r = Σ_{v ≡ r mod P} (x_v · layer_time_s + stage_time_s[v])

    (layers)        Σ_v x_v = L
    (memory_r)      Σ_{v ≡ r} (x_v · (layer_state_bytes + in_flight[r] · layer_activation_bytes)
                           + stage_bytes[v]) ≤ capacity_bytes[r]              for each rank r
    (bottleneck_r)  T ≥ t_r                                                   for each rank r

    (order_v)       x_v ≥ x_{v+P}                       for v, v+P on one rank (vpp > 1)
    (balance_r)     x_{r+(vpp−1)P} ≥ x_r − 1            for each rank r (vpp > 1)

    minimize        m·T + (Σ_r t_r − T) / vpp

The objective is the step time of 1F1B (vpp = 1) and interleaved 1F1B: m micro-batches through
the slowest rank, plus the fill and drain of the others, which interleaving shortens vpp-fold.
For P equal ranks (t_r = t) it is the closed form (m + (P − 1)/vpp) · t of Narayanan et al.
2021, "Efficient Large-Scale Language Model Training on GPU Clusters Using Megatron-LM", §2.2
(bubble fraction (P − 1)/(vpp·m)). Σ_r t_r is fixed by (layers), so the objective is
(m − 1/vpp)·T plus a constant: the program minimises the slowest rank, and the fill and drain
term only sets the reported time. Memory depends only on the number of blocks on a rank, so a
rank r can hold at most k_r = ⌊(capacity_bytes[r] − Σ_{v≡r} stage_bytes[v]) / block bytes⌋
blocks, and the program is feasible iff P·vpp·min_layers ≤ L, vpp·min_layers ≤ k_r for every
rank and Σ_r k_r ≥ L; `_infeasibility_reason` names the condition that fails.

(order_v) and (balance_r) do not change the optimum: time and memory depend on a rank's chunks
only through their sum y_r, and any y_r ≥ vpp·min_layers splits into vpp chunks that differ by at
most one, largest first, each ≥ min_layers. They break the vpp!-fold symmetry of each rank's
chunks, without which CBC cannot close the gap for P = 16, vpp = 2 within 10 s, and they make the
chunks of a rank even.

Memory rows are written in GiB so that CBC's absolute tolerances see numbers near 1. The solution
is decoded (x_v rounded, integrality and Σ x_v = L asserted), checked with `fits`, and its time is
recomputed with `pipeline_time_s`, not read from the solver.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import pulp

from simulator.errors import Infeasible, SpecError

GiB = 2**30
_INTEGRALITY_TOLERANCE = 1e-6


@dataclass(frozen=True, kw_only=True)
class SplitProblem:
    """One pipeline's split: L blocks over P·vpp virtual stages (stage v on rank v mod P)."""

    layers: int  # L transformer blocks to place
    ranks: int  # P pipeline ranks
    vpp: int = 1  # virtual stages per rank; stage v lives on rank v % P
    microbatches: int  # m micro-batches per step
    layer_time_s: float  # one block, one micro-batch, forward+backward(+recompute)
    layer_state_bytes: float  # one block's weights+gradients+optimizer states on one rank
    layer_activation_bytes: float  # one block's stored activations for one micro-batch
    in_flight: tuple[float, ...]  # per rank: micro-batches of all its layers held at the peak
    stage_time_s: tuple[float, ...]  # per virtual stage: extra time per micro-batch (embed, head)
    stage_bytes: tuple[float, ...]  # per virtual stage: extra bytes (embedding/head states, acts)
    capacity_bytes: tuple[float, ...]  # per rank: usable memory
    min_layers: int = 1  # per virtual stage

    def __post_init__(self) -> None:
        for name in ("layers", "ranks", "vpp", "microbatches"):
            _check(name, getattr(self, name), getattr(self, name) >= 1, "must be at least 1")
        _check("min_layers", self.min_layers, 0 <= self.min_layers <= self.layers,
               f"must lie in 0..layers={self.layers}")
        for name in ("layer_time_s", "layer_state_bytes", "layer_activation_bytes"):
            _check(name, getattr(self, name), getattr(self, name) >= 0, "must not be negative")
        for name, length in (("in_flight", self.ranks), ("capacity_bytes", self.ranks),
                             ("stage_time_s", self.stages), ("stage_bytes", self.stages)):
            values = tuple(float(value) for value in getattr(self, name))
            _check(name, values, len(values) == length, f"needs one value each for {length}")
            _check(name, values, min(values) >= 0, "must not be negative")
            object.__setattr__(self, name, values)

    @property
    def stages(self) -> int:
        """P·vpp virtual stages."""
        return self.ranks * self.vpp

    def stages_on(self, rank: int) -> range:
        """The virtual stages v ≡ rank (mod P)."""
        return range(rank, self.stages, self.ranks)

    def block_bytes(self, rank: int) -> float:
        """One block's bytes on `rank`: states + in_flight[rank] micro-batches of activations."""
        return self.layer_state_bytes + self.in_flight[rank] * self.layer_activation_bytes


@dataclass(frozen=True)
class SplitSolution:
    """The chosen split and what it costs."""

    layers: tuple[int, ...]  # per virtual stage, summing to L
    objective_s: float  # pipeline time of this split, recomputed by `pipeline_time_s`
    solve_time_s: float  # wall time of building and solving the program
    status: str  # "optimal", or "feasible" when CBC stopped at the time limit


def _check(field: str, value: object, ok: bool, why: str) -> None:
    if not ok:
        raise SpecError(f"SplitProblem.{field}", value, why)


# --- the cost and the constraints, for any split ---------------------------------------------


def _check_split(problem: SplitProblem, layers: tuple[int, ...]) -> None:
    if len(layers) != problem.stages or sum(layers) != problem.layers:
        raise SpecError("layers", list(layers),
                        f"needs {problem.stages} stage sizes summing to {problem.layers}")


def rank_times_s(problem: SplitProblem, layers: tuple[int, ...]) -> list[float]:
    """t_r = Σ_{v ≡ r mod P} (x_v · layer_time_s + stage_time_s[v]), per rank."""
    _check_split(problem, layers)
    return [sum(layers[v] * problem.layer_time_s + problem.stage_time_s[v]
                for v in problem.stages_on(r)) for r in range(problem.ranks)]


def pipeline_time_s(problem: SplitProblem, layers: tuple[int, ...]) -> float:
    """m·T + (Σ_r t_r − T)/vpp with T = max_r t_r: the program's objective for any split
    (1F1B / interleaved; Narayanan et al. 2021 §2.2)."""
    times = rank_times_s(problem, layers)
    slowest = max(times)
    return problem.microbatches * slowest + (sum(times) - slowest) / problem.vpp


def rank_bytes(problem: SplitProblem, layers: tuple[int, ...]) -> list[float]:
    """Σ_{v≡r} (x_v · (layer_state_bytes + in_flight[r]·layer_activation_bytes) + stage_bytes[v]),
    per rank."""
    _check_split(problem, layers)
    return [sum(layers[v] * problem.block_bytes(r) + problem.stage_bytes[v]
                for v in problem.stages_on(r)) for r in range(problem.ranks)]


def fits(problem: SplitProblem, layers: tuple[int, ...]) -> bool:
    """(memory_r) on every rank, and min_layers on every stage."""
    used = rank_bytes(problem, layers)
    return (min(layers) >= problem.min_layers
            and all(u <= c for u, c in zip(used, problem.capacity_bytes)))


# --- the program --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Program:
    prob: pulp.LpProblem
    x: list[pulp.LpVariable]  # x_v
    T: pulp.LpVariable


def _build(problem: SplitProblem) -> _Program:
    """Variables, constraint groups and objective, as in the module docstring."""
    prob = pulp.LpProblem("pipeline_split", pulp.LpMinimize)
    x = [pulp.LpVariable(f"x_{v}", lowBound=problem.min_layers, upBound=problem.layers,
                         cat=pulp.LpInteger) for v in range(problem.stages)]
    T = pulp.LpVariable("T", lowBound=0)
    t = [pulp.lpSum(x[v] * problem.layer_time_s + problem.stage_time_s[v]
                    for v in problem.stages_on(r)) for r in range(problem.ranks)]
    # (layers) Σ_v x_v = L
    prob += pulp.lpSum(x) == problem.layers, "layers"
    # (memory_r) Σ_{v≡r} (x_v·(state + in_flight[r]·act) + stage_bytes[v]) ≤ capacity[r], in GiB
    for r in range(problem.ranks):
        used = pulp.lpSum(x[v] * (problem.block_bytes(r) / GiB) + problem.stage_bytes[v] / GiB
                          for v in problem.stages_on(r))
        prob += used <= problem.capacity_bytes[r] / GiB, f"memory_r{r}"
    # (bottleneck_r) T ≥ t_r
    for r in range(problem.ranks):
        prob += T >= t[r], f"bottleneck_r{r}"
    # (order_v) x_v ≥ x_{v+P}; (balance_r) x_{r+(vpp−1)P} ≥ x_r − 1
    _add_chunk_symmetry_breaking(problem, prob, x)
    # minimize m·T + (Σ_r t_r − T)/vpp
    prob += problem.microbatches * T + (pulp.lpSum(t) - T) * (1 / problem.vpp), "pipeline_time"
    return _Program(prob, x, T)


def _add_chunk_symmetry_breaking(problem: SplitProblem, prob: pulp.LpProblem,
                                 x: list[pulp.LpVariable]) -> None:
    """(order_v) x_v ≥ x_{v+P}; (balance_r) x_{r+(vpp−1)P} ≥ x_r − 1 (module docstring)."""
    for r in range(problem.ranks):
        chunks = problem.stages_on(r)
        for v, w in zip(chunks, chunks[1:]):
            prob += x[v] >= x[w], f"order_v{v}"
        if problem.vpp > 1:
            prob += x[chunks[-1]] >= x[chunks[0]] - 1, f"balance_r{r}"


def solve_split(problem: SplitProblem, time_limit_s: float = 10.0) -> SplitSolution:
    """The split of least `pipeline_time_s` that `fits`; `Infeasible` (with the reason) if none."""
    start = time.perf_counter()
    program = _build(problem)
    program.prob.solve(pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit_s))
    solve_time_s = time.perf_counter() - start
    status = _checked_status(problem, program.prob, time_limit_s)
    layers = _decode(problem, program.x)
    assert fits(problem, layers), f"decoded split {layers} breaks a memory constraint"
    objective_s = pipeline_time_s(problem, layers)
    solver_objective_s = pulp.value(program.prob.objective)
    assert objective_s <= solver_objective_s * (1 + 1e-6) + 1e-12, (objective_s, solver_objective_s)
    return SplitSolution(layers, objective_s, solve_time_s, status)


def _checked_status(problem: SplitProblem, prob: pulp.LpProblem, time_limit_s: float) -> str:
    """"optimal" or "feasible" (time limit, best split so far); else raise `Infeasible`."""
    if prob.sol_status == pulp.LpSolutionOptimal:
        return "optimal"
    if prob.sol_status == pulp.LpSolutionIntegerFeasible:
        return "feasible"
    reason = _infeasibility_reason(problem)
    if reason is not None:
        raise Infeasible(reason)
    assert prob.status != pulp.LpStatusInfeasible, "CBC says infeasible; the direct bounds do not"
    raise Infeasible(f"CBC found no split within {time_limit_s:g} s "
                     f"(status {pulp.LpStatus[prob.status]})")


def _decode(problem: SplitProblem, x: list[pulp.LpVariable]) -> tuple[int, ...]:
    """Round x_v; assert integrality, bounds and Σ x_v = L."""
    values = [x_v.value() for x_v in x]
    layers = tuple(round(value) for value in values)
    assert all(abs(value - n) <= _INTEGRALITY_TOLERANCE for value, n in zip(values, layers)), values
    assert min(layers) >= problem.min_layers and sum(layers) == problem.layers, layers
    return layers


# --- why no split exists -----------------------------------------------------------------------


def max_blocks(problem: SplitProblem, rank: int) -> int:
    """k_r: the most blocks `rank` can hold beside its stages' extras (L if blocks cost nothing)."""
    extras = sum(problem.stage_bytes[v] for v in problem.stages_on(rank))
    spare = problem.capacity_bytes[rank] - extras
    if spare < 0:
        return -1
    per_block = problem.block_bytes(rank)
    return problem.layers if per_block == 0 else min(problem.layers, math.floor(spare / per_block))


def _infeasibility_reason(problem: SplitProblem) -> str | None:
    """Which condition of feasibility fails (module docstring), or None if a split exists."""
    P, vpp, L, k = problem.ranks, problem.vpp, problem.layers, problem.min_layers
    if problem.stages * k > L:
        return (f"the layers cannot be split: {problem.stages} virtual stages × min_layers={k} "
                f"need {problem.stages * k} layers, the model has {L}")
    blocks = [max_blocks(problem, r) for r in range(P)]
    for r in range(P):
        if blocks[r] < vpp * k:
            need = sum(k * problem.block_bytes(r) + problem.stage_bytes[v]
                       for v in problem.stages_on(r))
            return (f"the layers do not fit: even the lightest split needs {need / GiB:.2f} GiB "
                    f"on rank {r}, {problem.capacity_bytes[r] / GiB:.2f} GiB usable")
    if sum(blocks) < L:
        held = ", ".join(f"rank {r}: {n}" for r, n in enumerate(blocks))
        return (f"the layers do not fit: the ranks' memory holds at most {sum(blocks)} of "
                f"{L} layers ({held})")
    return None
