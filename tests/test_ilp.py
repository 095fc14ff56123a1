"""The split ILP against oracles: brute force on seeded cost tables, the 1F1B / interleaved
closed form, and a rank-sum bound for a problem too large to enumerate."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import numpy as np
import pytest

from planner.ilp import GiB, SplitProblem, fits, pipeline_time_s, solve_split
from simulator.errors import Infeasible, SpecError

SEEDS = range(30)
SHAPES = [(2, 1), (3, 1), (4, 1), (2, 2), (1, 1), (1, 2), (1, 4)]  # (P, vpp), P·vpp ≤ 4


def compositions(total: int, parts: int, least: int):
    """Every tuple of `parts` integers ≥ `least` summing to `total` (stars and bars)."""
    spare = total - parts * least
    if spare < 0:
        return
    for bars in itertools.combinations(range(spare + parts - 1), parts - 1):
        edges = (-1, *bars, spare + parts - 1)
        yield tuple(least + b - a - 1 for a, b in zip(edges, edges[1:]))


def memory_ok(problem: SplitProblem, layers: tuple[int, ...]) -> bool:
    """(memory_r), written out again independently of `planner.ilp.fits`."""
    P = problem.ranks
    for r in range(P):
        activations = problem.in_flight[r] * problem.layer_activation_bytes
        per_block = problem.layer_state_bytes + activations
        used = sum(layers[v] * per_block + problem.stage_bytes[v] for v in range(r, len(layers), P))
        if used > problem.capacity_bytes[r]:
            return False
    return True


def brute_force(problem: SplitProblem) -> float | None:
    """The least pipeline time over every split that fits; None if none does."""
    times = [pipeline_time_s(problem, split)
             for split in compositions(problem.layers, problem.stages, problem.min_layers)
             if memory_ok(problem, split)]
    return min(times, default=None)


def random_problem(seed: int) -> SplitProblem:
    """A seeded cost table: heavier end stages, capacities from loose to too tight."""
    rng = np.random.default_rng(seed)
    P, vpp = SHAPES[rng.choice(len(SHAPES), p=[0.2, 0.2, 0.2, 0.2, 0.05, 0.1, 0.05])]
    n, L = P * vpp, int(rng.integers(P * vpp, 13))
    layer_time_s = float(rng.uniform(0.5, 2.0))
    stage_time_s = rng.uniform(0, 0.2, n) * layer_time_s
    stage_time_s[0] += rng.uniform(0, 2) * layer_time_s  # embedding
    stage_time_s[-1] += rng.uniform(0, 3) * layer_time_s  # LM head and loss
    state, activation = rng.uniform(0.5, 2) * GiB, rng.uniform(0.05, 0.5) * GiB
    in_flight = rng.integers(1, n + 1, P).astype(float)
    stage_bytes = rng.uniform(0, 0.5, n) * GiB
    stage_bytes[[0, -1]] += rng.uniform(0, 2, 2) * GiB
    even = [L / P * (state + in_flight[r] * activation) + stage_bytes[r::P].sum() for r in range(P)]
    room = rng.uniform(1.1, 1.8, P)  # capacity over the even split's need
    room[rng.integers(P)] = rng.uniform(0.6, 1.05)  # one tight rank: memory may bind
    if rng.random() < 0.15:
        room = rng.uniform(0.5, 0.95, P)  # everything tight: likely infeasible
    capacity = np.array(even) * room
    return SplitProblem(layers=L, ranks=P, vpp=vpp, microbatches=int(rng.integers(1, 17)),
                        layer_time_s=layer_time_s, layer_state_bytes=state,
                        layer_activation_bytes=activation, in_flight=tuple(in_flight),
                        stage_time_s=tuple(stage_time_s), stage_bytes=tuple(stage_bytes),
                        capacity_bytes=tuple(capacity), min_layers=int(rng.choice([0, 1, 1, 2])))


@pytest.mark.parametrize("seed", SEEDS)
def test_ilp_matches_brute_force(seed):
    problem = random_problem(seed)
    best = brute_force(problem)
    if best is None:
        with pytest.raises(Infeasible, match="cannot be split|do not fit"):
            solve_split(problem)
        return
    solution = solve_split(problem)
    assert solution.status == "optimal"
    assert sum(solution.layers) == problem.layers and fits(problem, solution.layers)
    recomputed = pipeline_time_s(problem, solution.layers)
    assert solution.objective_s == pytest.approx(recomputed, rel=1e-12)
    assert solution.objective_s == pytest.approx(best, rel=1e-9)


def test_seeded_problems_exercise_every_case():
    """The seeds cover infeasible problems and problems where memory moves the optimum."""
    infeasible = binding = 0
    for seed in SEEDS:
        problem = random_problem(seed)
        best = brute_force(problem)
        unlimited = brute_force(replace(problem, capacity_bytes=(math.inf,) * problem.ranks))
        infeasible += best is None
        binding += best is not None and best > unlimited * (1 + 1e-9)
    assert infeasible >= 5 and binding >= 5, (infeasible, binding)


def equal_problem(P: int, vpp: int, L: int, m: int, layer_time_s: float) -> SplitProblem:
    n = P * vpp
    return SplitProblem(layers=L, ranks=P, vpp=vpp, microbatches=m, layer_time_s=layer_time_s,
                        layer_state_bytes=GiB, layer_activation_bytes=0.1 * GiB,
                        in_flight=tuple(float(P - r) for r in range(P)), stage_time_s=(0.0,) * n,
                        stage_bytes=(0.0,) * n, capacity_bytes=(80.0 * GiB,) * P)


@pytest.mark.parametrize("P, vpp, L, m",
                         [(4, 1, 16, 8), (4, 2, 32, 8), (2, 3, 12, 5), (8, 2, 64, 32)])
def test_equal_stages_give_the_closed_form(P, vpp, L, m):
    """Each rank runs t = vpp·(L/(P·vpp))·layer_time = (L/P)·layer_time per micro-batch;
    1F1B / interleaved takes (m + (P−1)/vpp)·t (Narayanan et al. 2021 §2.2)."""
    layer_time_s = 0.3
    solution = solve_split(equal_problem(P, vpp, L, m, layer_time_s))
    t = vpp * (L / (P * vpp)) * layer_time_s
    assert solution.objective_s == pytest.approx((m + (P - 1) / vpp) * t, rel=1e-12)
    per_rank = [sum(solution.layers[r::P]) for r in range(P)]
    assert per_rank == [L // P] * P
    assert solution.layers == (L // (P * vpp),) * (P * vpp)  # (order_v), (balance_r): even chunks


def test_heavy_lm_head_moves_layers_off_the_last_stage():
    """Head = 3 blocks: T = 5 blocks is the least makespan, with 2 blocks beside the head."""
    base = equal_problem(4, 1, 16, 16, 1.0)
    problem = replace(base, stage_time_s=(0.0, 0.0, 0.0, 3.0))
    solution = solve_split(problem)
    assert solution.layers[-1] == 2 and min(solution.layers[:-1]) >= 4
    assert solution.objective_s == pytest.approx(16 * 5 + (16 + 3 - 5), rel=1e-12)
    assert solution.objective_s < pipeline_time_s(problem, (4, 4, 4, 4))


def test_tight_memory_on_rank_0_moves_layers_away():
    base = equal_problem(4, 1, 16, 8, 1.0)
    rank0 = 2.5 * base.block_bytes(0)  # room for 2 blocks
    problem = replace(base, capacity_bytes=(rank0, *base.capacity_bytes[1:]))
    solution = solve_split(problem)
    assert solution.layers[0] == 2 and sorted(solution.layers[1:]) == [4, 5, 5]
    assert not fits(problem, (4, 4, 4, 4)) and fits(problem, solution.layers)


def test_infeasible_reasons_name_the_constraint():
    base = equal_problem(4, 1, 16, 8, 1.0)
    with pytest.raises(Infeasible, match="4 virtual stages × min_layers=5 need 20 layers"):
        solve_split(replace(base, min_layers=5))
    rank2 = 0.5 * base.block_bytes(2)
    with pytest.raises(Infeasible, match="lightest split needs 1.20 GiB on rank 2, 0.60 GiB"):
        solve_split(replace(base, capacity_bytes=(80 * GiB, 80 * GiB, rank2, 80 * GiB)))
    small = tuple(3.5 * base.block_bytes(r) for r in range(4))
    with pytest.raises(Infeasible, match="holds at most 12 of 16 layers"):
        solve_split(replace(base, capacity_bytes=small))


def test_bad_input_is_a_spec_error():
    base = equal_problem(4, 1, 16, 8, 1.0)
    with pytest.raises(SpecError, match="stage_time_s"):
        replace(base, stage_time_s=(0.0,) * 3)
    with pytest.raises(SpecError, match="summing to 16"):
        pipeline_time_s(base, (4, 4, 4, 3))


def least_makespan_s(problem: SplitProblem) -> float:
    """Oracle for large problems: time and memory depend only on each rank's block count y_r,
    so the least max_r t_r is the least T = c_r + y·layer_time at which the ranks, each taking
    at most ⌊(T − c_r)/layer_time⌋ blocks, hold all L (memory does not bind here)."""
    P, lt = problem.ranks, problem.layer_time_s
    extra = [sum(problem.stage_time_s[r::P]) for r in range(P)]
    floor = problem.vpp * problem.min_layers
    for T in sorted(c + y * lt for c in extra for y in range(floor, problem.layers + 1)):
        room = [math.floor((T - c) / lt + 1e-9) for c in extra]
        if min(room) >= floor and sum(room) >= problem.layers:
            return T
    raise AssertionError("no makespan")


def test_large_problem_is_solved_to_optimality_quickly():
    """L = 126, P = 16, vpp = 2 (Llama-3-405B-like): 32 integer variables."""
    P, vpp = 16, 2
    base = equal_problem(P, vpp, 126, 64, 0.01)
    extras = [0.0] * (P * vpp)
    extras[0], extras[-1] = 0.02, 0.035
    problem = replace(base, stage_time_s=tuple(extras))
    solution = solve_split(problem)
    assert solution.status == "optimal" and solution.solve_time_s < 2.0
    T = least_makespan_s(problem)
    total = 126 * 0.01 + 0.055
    assert solution.objective_s == pytest.approx(64 * T + (total - T) / vpp, rel=1e-9)
