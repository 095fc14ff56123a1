"""The split ILP against oracles: brute force (split, recompute per block, placement) on
seeded cost tables, the 1F1B / interleaved closed form, and a rank-sum bound for a problem
too large to enumerate."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import numpy as np
import pytest

from parasim.planner.ilp import GiB, Placement, Split, SplitProblem, fits, pipeline_time_s, solve_split
from parasim.simulator.errors import Infeasible, SpecError

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


def modes_of(problem: SplitProblem, layers: tuple[int, ...]):
    """Every way to put each stage's blocks in the problem's modes."""
    per_stage = [list(compositions(n, len(problem.modes), 0)) for n in layers]
    yield from itertools.product(*per_stage)


def oracle_time_and_fit(problem: SplitProblem, o: int, blocks) -> tuple[float, bool]:
    """Pipeline time and (memory_r), written out again independently of `planner.ilp`."""
    P, placement, full = problem.ranks, problem.placements[o], problem.full_mode
    times, fit = [], True
    for r in range(P):
        chunks = range(r, len(blocks), P)
        times.append(sum(n * placement.layer_time_s[r][k] + 0.0
                         for v in chunks for k, n in enumerate(blocks[v]))
                     + sum(placement.stage_time_s[v] for v in chunks))
        used = sum(n * (problem.layer_state_bytes + problem.in_flight[r]
                        * problem.layer_activation_bytes[k])
                   for v in chunks for k, n in enumerate(blocks[v]))
        used += sum(problem.stage_bytes[v] for v in chunks)
        if full is not None and any(blocks[v][full] for v in chunks):
            used += problem.rebuild_bytes
        fit = fit and used <= placement.capacity_bytes[r]
    slowest = max(times)
    return problem.microbatches * slowest + (sum(times) - slowest) / problem.vpp, fit


def brute_force(problem: SplitProblem) -> float | None:
    """The least pipeline time over every placement, split and mode choice that fits."""
    best = None
    for o in range(len(problem.placements)):
        for layers in compositions(problem.layers, problem.stages, problem.min_layers):
            for blocks in modes_of(problem, layers):
                time_s, fit = oracle_time_and_fit(problem, o, blocks)
                if fit and (best is None or time_s < best):
                    best = time_s
    return best


def random_problem(seed: int) -> SplitProblem:
    """A seeded cost table: heavier end stages, capacities from loose to too tight; half the
    problems may recompute blocks in full (slower, lighter), some choose between two
    placements (node groups of other speed and memory)."""
    rng = np.random.default_rng(seed)
    P, vpp = SHAPES[rng.choice(len(SHAPES), p=[0.2, 0.2, 0.2, 0.2, 0.05, 0.1, 0.05])]
    two_modes = rng.random() < 0.5
    n, L = P * vpp, int(rng.integers(P * vpp, 9 if two_modes else 13))
    layer_time_s = float(rng.uniform(0.5, 2.0))
    state, activation = rng.uniform(0.5, 2) * GiB, rng.uniform(0.05, 0.5) * GiB
    in_flight = rng.integers(1, n + 1, P).astype(float)
    stage_bytes = rng.uniform(0, 0.5, n) * GiB
    stage_bytes[[0, -1]] += rng.uniform(0, 2, 2) * GiB
    even = [L / P * (state + in_flight[r] * activation) + stage_bytes[r::P].sum() for r in range(P)]
    placements = [_random_placement(rng, P, n, layer_time_s, even, two_modes)
                  for _ in range(1 if rng.random() < 0.6 else 2)]
    modes = ("none", "full") if two_modes else ("none",)
    acts = (activation, activation * rng.uniform(0.05, 0.3)) if two_modes else (activation,)
    return SplitProblem(layers=L, ranks=P, vpp=vpp, microbatches=int(rng.integers(1, 17)),
                        modes=modes, layer_state_bytes=state, layer_activation_bytes=acts,
                        rebuild_bytes=float(activation * rng.uniform(0, 1)) if two_modes else 0,
                        in_flight=tuple(in_flight), stage_bytes=tuple(stage_bytes),
                        placements=tuple(placements), min_layers=int(rng.choice([0, 1, 1, 2])))


def _random_placement(rng, P: int, n: int, layer_time_s: float, even: list[float],
                      two_modes: bool) -> Placement:
    speed = rng.uniform(0.7, 1.3, P)  # per rank: its node group's pace
    times = [(layer_time_s * s, layer_time_s * s * rng.uniform(1.2, 1.4)) if two_modes
             else (layer_time_s * s,) for s in speed]
    stage_time_s = rng.uniform(0, 0.2, n) * layer_time_s
    stage_time_s[0] += rng.uniform(0, 2) * layer_time_s  # embedding
    stage_time_s[-1] += rng.uniform(0, 3) * layer_time_s  # LM head and loss
    room = rng.uniform(1.1, 1.8, P)  # capacity over the even split's need
    room[rng.integers(P)] = rng.uniform(0.6, 1.05)  # one tight rank: memory may bind
    if rng.random() < 0.15:
        room = rng.uniform(0.5, 0.95, P)  # everything tight: likely infeasible
    return Placement(layer_time_s=tuple(times), stage_time_s=tuple(stage_time_s),
                     capacity_bytes=tuple(np.array(even) * room))


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
    assert sum(solution.layers) == problem.layers and fits(problem, solution.split)
    time_s, fit = oracle_time_and_fit(problem, solution.split.placement, solution.split.blocks)
    assert fit and solution.objective_s == pytest.approx(time_s, rel=1e-12)
    assert solution.objective_s == pytest.approx(best, rel=1e-9)


def unlimited(problem: SplitProblem) -> SplitProblem:
    return replace(problem, placements=tuple(replace(p, capacity_bytes=(math.inf,) * problem.ranks)
                                             for p in problem.placements))


def test_seeded_problems_exercise_every_case():
    """The seeds cover infeasible problems, problems where memory moves the optimum, where
    some blocks are recomputed in full and where the second placement wins."""
    infeasible = binding = recomputed = second = 0
    for seed in SEEDS:
        problem = random_problem(seed)
        best = brute_force(problem)
        infeasible += best is None
        binding += best is not None and best > brute_force(unlimited(problem)) * (1 + 1e-9)
        if best is not None:
            split = solve_split(problem).split
            recomputed += any(split.of_mode(problem.full_mode))
            second += split.placement == 1
    assert infeasible >= 4 and binding >= 5 and recomputed >= 3 and second >= 2, (
        infeasible, binding, recomputed, second)


def equal_problem(P: int, vpp: int, L: int, m: int, layer_time_s: float) -> SplitProblem:
    n = P * vpp
    placement = Placement(layer_time_s=((layer_time_s,),) * P, stage_time_s=(0.0,) * n,
                          capacity_bytes=(80.0 * GiB,) * P)
    return SplitProblem(layers=L, ranks=P, vpp=vpp, microbatches=m, layer_state_bytes=GiB,
                        layer_activation_bytes=(0.1 * GiB,),
                        in_flight=tuple(float(P - r) for r in range(P)),
                        stage_bytes=(0.0,) * n, placements=(placement,))


def changed(problem: SplitProblem, **fields) -> SplitProblem:
    """The problem with its one placement's fields replaced."""
    return replace(problem, placements=(replace(problem.placements[0], **fields),))


def even(layers: tuple[int, ...]) -> Split:
    return Split.of_layers(layers)


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
    problem = changed(equal_problem(4, 1, 16, 16, 1.0), stage_time_s=(0.0, 0.0, 0.0, 3.0))
    solution = solve_split(problem)
    assert solution.layers[-1] == 2 and min(solution.layers[:-1]) >= 4
    assert solution.objective_s == pytest.approx(16 * 5 + (16 + 3 - 5), rel=1e-12)
    assert solution.objective_s < pipeline_time_s(problem, even((4, 4, 4, 4)))


def test_tight_memory_on_rank_0_moves_layers_away():
    base = equal_problem(4, 1, 16, 8, 1.0)
    rank0 = 2.5 * base.block_bytes(0, 0)  # room for 2 blocks
    problem = changed(base, capacity_bytes=(rank0, *base.placements[0].capacity_bytes[1:]))
    solution = solve_split(problem)
    assert solution.layers[0] == 2 and sorted(solution.layers[1:]) == [4, 5, 5]
    assert not fits(problem, even((4, 4, 4, 4))) and fits(problem, solution.split)


def with_full_recompute(problem: SplitProblem, slowdown: float, stored: float) -> SplitProblem:
    """Blocks may also be recomputed in full: `slowdown` times slower, `stored` of the
    activations kept, one block's activations rebuilt transiently."""
    base = problem.placements[0]
    placement = replace(base, layer_time_s=tuple((t, t * slowdown) for (t,) in base.layer_time_s))
    act = problem.layer_activation_bytes[0]
    return replace(problem, modes=("none", "full"), layer_activation_bytes=(act, act * stored),
                   rebuild_bytes=act, placements=(placement,))


def test_full_recompute_only_where_memory_binds():
    """Rank 0 holds 4 micro-batches: 4 blocks need 4·(1 + 4·0.1) = 5.6 GiB. With 5.0 GiB it
    recomputes the fewest blocks that fit, (4 − f)·1.4 + f·1.04 + 0.1 ≤ 5, f = 2, and no other
    rank recomputes anything (it only costs time)."""
    base = equal_problem(4, 1, 16, 8, 1.0)
    problem = with_full_recompute(changed(base, capacity_bytes=(5.0 * GiB, *(80 * GiB,) * 3)),
                                  slowdown=1.33, stored=0.1)
    solution = solve_split(problem)
    full = solution.split.of_mode(problem.full_mode)
    assert full[1:] == (0, 0, 0) and full[0] >= 1
    assert solution.layers == (4, 4, 4, 4) or solution.layers[0] < 4
    assert solution.objective_s <= pipeline_time_s(problem, Split.of_layers(
        (2, 5, 5, 4), modes=2)) + 1e-12  # better than moving the layers away
    assert solution.objective_s == pytest.approx(brute_force(problem), rel=1e-9)


def test_placement_puts_the_large_gpus_where_the_activations_are():
    """Two node groups, 5 and 6 GiB: rank r holds 4 − r micro-batches, so 4 blocks need
    5.6, 5.2, 4.8 and 4.4 GiB. Serving the first stages from the larger group fits the even
    split; the other order does not."""
    base = equal_problem(4, 1, 16, 8, 1.0)
    small, large = 5.0 * GiB, 6.0 * GiB
    big_first = replace(base.placements[0], capacity_bytes=(large, large, small, small),
                        label="large first")
    big_last = replace(base.placements[0], capacity_bytes=(small, small, large, large),
                       label="small first")
    problem = replace(base, placements=(big_last, big_first))
    solution = solve_split(problem)
    assert solution.split.placement == 1 and solution.layers == (4, 4, 4, 4)
    assert not fits(problem, Split(0, even((4, 4, 4, 4)).blocks))


def test_infeasible_reasons_name_the_constraint():
    base = equal_problem(4, 1, 16, 8, 1.0)
    with pytest.raises(Infeasible, match="4 virtual stages × min_layers=5 need 20 layers"):
        solve_split(replace(base, min_layers=5))
    rank2 = 0.5 * base.block_bytes(2, 0)
    with pytest.raises(Infeasible, match="lightest split needs 1.20 GiB on rank 2, 0.60 GiB"):
        solve_split(changed(base, capacity_bytes=(80 * GiB, 80 * GiB, rank2, 80 * GiB)))
    small = tuple(3.5 * base.block_bytes(r, 0) for r in range(4))
    with pytest.raises(Infeasible, match="holds at most 12 of 16 layers"):
        solve_split(changed(base, capacity_bytes=small))


def test_bad_input_is_a_spec_error():
    base = equal_problem(4, 1, 16, 8, 1.0)
    with pytest.raises(SpecError, match="stage_time_s"):
        changed(base, stage_time_s=(0.0,) * 3)
    with pytest.raises(SpecError, match="modes"):
        replace(base, modes=("none", "none"))
    with pytest.raises(SpecError, match="summing to 16"):
        pipeline_time_s(base, even((4, 4, 4, 3)))


def least_makespan_s(problem: SplitProblem) -> float:
    """Oracle for large problems: time and memory depend only on each rank's block count y_r,
    so the least max_r t_r is the least T = c_r + y·layer_time at which the ranks, each taking
    at most ⌊(T − c_r)/layer_time⌋ blocks, hold all L (memory does not bind here)."""
    P, placement = problem.ranks, problem.placements[0]
    lt = placement.layer_time_s[0][0]
    extra = [sum(placement.stage_time_s[r::P]) for r in range(P)]
    floor = problem.vpp * problem.min_layers
    for T in sorted(c + y * lt for c in extra for y in range(floor, problem.layers + 1)):
        room = [math.floor((T - c) / lt + 1e-9) for c in extra]
        if min(room) >= floor and sum(room) >= problem.layers:
            return T
    raise AssertionError("no makespan")


def test_large_problem_is_solved_to_optimality_quickly():
    """L = 126, P = 16, vpp = 2 (Llama-3-405B-like), blocks free to be recomputed in full
    (which only costs time here): 64 integer variables."""
    P, vpp = 16, 2
    base = equal_problem(P, vpp, 126, 64, 0.01)
    extras = [0.0] * (P * vpp)
    extras[0], extras[-1] = 0.02, 0.035
    problem = changed(base, stage_time_s=tuple(extras))
    solution = solve_split(with_full_recompute(problem, slowdown=1.33, stored=0.1))
    assert solution.status == "optimal" and solution.solve_time_s < 2.0
    T = least_makespan_s(problem)
    total = 126 * 0.01 + 0.055
    assert solution.objective_s == pytest.approx(64 * T + (total - T) / vpp, rel=1e-9)
