"""Failures, checkpoints and restarts over a whole run: closed forms and a Monte Carlo check.

The model (Daly 2006, "A higher order estimate of the optimum checkpoint interval for restart
dumps", Future Generation Computer Systems 22(3)): failures of the job form a Poisson process
of rate 1/M at all times (computing, writing a checkpoint, restarting); the run is cut into
segments of useful work, each closed by a blocking checkpoint write of δ seconds; a failure
loses the segment in progress and costs a restart of R seconds, which may itself fail. Pure
functions; nothing here reads files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import pdtr

from parasim.simulator.checks import require_int, require_positive
from parasim.simulator.errors import SpecError

MAX_DRAWS = 5_000_000  # Monte Carlo: above this many failure times, their sums are drawn by the CLT


def system_mtbf_s(num_nodes: int, node_mtbf_s: float, num_gpus: int = 0,
                  gpu_mtbf_s: float | None = None) -> float:
    """MTBF of a job that stops when any of its parts fails (a series system of exponential
    parts: the rates add): 1 / (nodes / M_node + GPUs / M_gpu)."""
    rate = num_nodes / node_mtbf_s + (num_gpus / gpu_mtbf_s if gpu_mtbf_s else 0.0)
    return 1.0 / rate


def young_interval_s(checkpoint_s: float, mtbf_s: float) -> float:
    """Young 1974 ("A first order approximation to the optimum checkpoint interval", CACM
    17(9)): the work between checkpoints that minimises the expected waste, sqrt(2·δ·M)."""
    return math.sqrt(2.0 * checkpoint_s * mtbf_s)


def daly_interval_s(checkpoint_s: float, mtbf_s: float) -> float:
    """Daly 2006, eq. 37: sqrt(2δM)·[1 + sqrt(δ/2M)/3 + (δ/2M)/9] - δ for δ < 2M, else M."""
    if checkpoint_s >= 2.0 * mtbf_s:
        return mtbf_s
    x = checkpoint_s / (2.0 * mtbf_s)
    return math.sqrt(2.0 * checkpoint_s * mtbf_s) * (1 + math.sqrt(x) / 3 + x / 9) - checkpoint_s


def restart_expected_s(restart_s: float, mtbf_s: float) -> float:
    """Expected time to complete a restart of R seconds that failures may interrupt (each
    interruption starts it again): M·(e^{R/M} - 1) (Daly 2006, §3)."""
    return mtbf_s * math.expm1(restart_s / mtbf_s)


def segment_expected_s(length_s: float, restart_s: float, mtbf_s: float) -> float:
    """Expected wall time to complete one segment of `length_s` (work and its checkpoint)
    under failures: (M + E[restart])·(e^{L/M} - 1) = M·e^{R/M}·(e^{L/M} - 1) (Daly 2006, eq. 13
    for one segment). Exact for the model above; tends to L as M grows."""
    return (mtbf_s + restart_expected_s(restart_s, mtbf_s)) * math.expm1(length_s / mtbf_s)


def spare_restart_s(restart_s: float, repair_s: float, spare_nodes: int | None, num_nodes: int,
                    node_mtbf_s: float) -> float:
    """Restart time with a fixed pool: a failed node goes to repair; the job restarts at once
    on a healthy spare, or waits for a repair when all spares are out. Nodes in repair form an
    M/G/∞ queue, Poisson with mean a = nodes·repair/M_node (Palm's theorem); a failure finds
    no spare when S or more are in repair (PASTA): restart + P[Poisson(a) ≥ S]·repair (the
    full repair time: an upper bound on the wait). None: the facility replaces nodes at once."""
    if spare_nodes is None:
        return restart_s
    load = (num_nodes + spare_nodes) * repair_s / node_mtbf_s
    below = float(pdtr(spare_nodes - 1, load)) if spare_nodes else 0.0  # P[Poisson(a) < S]
    return restart_s + (1.0 - below) * repair_s


@dataclass(frozen=True, kw_only=True)
class FailureModel:
    """What a failure costs: the job's MTBF, its checkpoint write and its restart."""

    mtbf_s: float  # M: mean time between interruptions of the whole job
    checkpoint_s: float  # δ: blocking write of one checkpoint
    restart_s: float  # R: relaunch and checkpoint read after an interruption

    def __post_init__(self) -> None:
        require_positive("mtbf_s", self.mtbf_s)
        assert self.checkpoint_s >= 0 and self.restart_s >= 0, self


@dataclass(frozen=True, kw_only=True)
class Segments:
    """A run cut at its checkpoints: `full` segments of `interval_steps` steps, then one of
    `last_steps` (0: none), every one closed by a checkpoint."""

    step_s: float  # time of one training step
    interval_steps: int  # steps between checkpoints
    full: int  # segments of interval_steps steps
    last_steps: int  # steps of the final, shorter segment (0 when the steps divide evenly)

    @property
    def count(self) -> int:
        return self.full + (self.last_steps > 0)

    @property
    def useful_s(self) -> float:
        return (self.full * self.interval_steps + self.last_steps) * self.step_s

    def kinds(self) -> list[tuple[int, float]]:
        """(how many, work seconds) of each kind of segment."""
        kinds = [(self.full, self.interval_steps * self.step_s)]
        if self.last_steps:
            kinds.append((1, self.last_steps * self.step_s))
        return [(n, w) for n, w in kinds if n]


def split_run(steps: int, step_s: float, interval_steps: int) -> Segments:
    """`steps` steps with a checkpoint every `interval_steps` and one at the end."""
    require_int("training.checkpoint_interval_steps", interval_steps)
    interval = min(interval_steps, steps)
    return Segments(step_s=step_s, interval_steps=interval, full=steps // interval,
                    last_steps=steps % interval)


def interval_steps(step_s: float, model: FailureModel) -> int:
    """Young's interval in whole steps (checkpoints are taken between steps), at least one."""
    return max(1, round(young_interval_s(model.checkpoint_s, model.mtbf_s) / step_s))


@dataclass(frozen=True, kw_only=True)
class RunReliability:
    """The expected course of a run under failures; `wall_s` is the sum of its parts."""

    useful_s: float  # the training steps themselves
    checkpoints_s: float  # every checkpoint write that completed
    rework_s: float  # work and checkpoint writes lost to failures
    restarts_s: float  # restarts, including restarts that failed
    interval_steps: int  # steps between checkpoints
    interval_s: float  # work between checkpoints
    checkpoints: int  # checkpoints written (one per segment)
    model: FailureModel  # M, δ, R

    @property
    def wall_s(self) -> float:
        return self.useful_s + self.checkpoints_s + self.rework_s + self.restarts_s

    @property
    def lost_s(self) -> float:
        """Time lost to failures: rework and restarts."""
        return self.rework_s + self.restarts_s

    @property
    def goodput(self) -> float:
        """Useful fraction of the wall time."""
        return self.useful_s / self.wall_s

    @property
    def interruptions(self) -> float:
        """Expected failures: rate × expected wall time (Wald's identity; the run's end is a
        stopping time of the Poisson process)."""
        return self.wall_s / self.model.mtbf_s


MAX_FAILURE_EXPONENT = 30.0  # L/M above this: e^30 ≈ 1e13 failures per segment on average


def _require_finishes(length_s: float, model: FailureModel) -> None:
    """SpecError for a run that would never finish: a segment (or a restart) e^30 times longer
    than the job's MTBF fails about e^(L/M) times before it completes once."""
    worst = max(length_s, model.restart_s)
    if worst / model.mtbf_s > MAX_FAILURE_EXPONENT:
        what = "a checkpoint interval" if worst == length_s else "a restart"
        raise SpecError("job MTBF (s)", float(f"{model.mtbf_s:.3g}"),
                        f"{what} of {worst:.3g} s fails about e^{worst / model.mtbf_s:.0f} "
                        "times before it completes: the run would never finish",
                        "a larger cluster.node_mtbf_hours, faster checkpoints "
                        "(cluster.checkpoint_write_GBps_per_node), a shorter restart "
                        "(cluster.restart_minutes) or fewer nodes")


def expected_run(segments: Segments, model: FailureModel) -> RunReliability:
    """The exact expectation of the model (segment_expected_s summed over the segments),
    split into useful work, checkpoints, rework and restarts."""
    m, delta = model.mtbf_s, model.checkpoint_s
    for _count, work_s in segments.kinds():
        _require_finishes(work_s + delta, model)
    wall = failures = 0.0
    for count, work_s in segments.kinds():
        wall += count * segment_expected_s(work_s + delta, model.restart_s, m)
        failures += count * math.expm1((work_s + delta) / m)  # failed attempts: 1/p - 1 each
    restarts = failures * restart_expected_s(model.restart_s, m)
    checkpoints_s = segments.count * delta
    return RunReliability(
        useful_s=segments.useful_s, checkpoints_s=checkpoints_s,
        rework_s=wall - segments.useful_s - checkpoints_s - restarts, restarts_s=restarts,
        interval_steps=segments.interval_steps,
        interval_s=segments.interval_steps * segments.step_s, checkpoints=segments.count,
        model=model)


# Monte Carlo ----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class MonteCarlo:
    """Wall times of simulated runs (seeded): the risk around the closed form's mean."""

    runs: int  # simulated runs
    seed: int  # numpy Generator seed
    mean_s: float  # mean wall time
    std_err_s: float  # standard error of the mean
    p10_s: float  # 10th percentile of the wall time
    p50_s: float  # median
    p90_s: float  # 90th percentile


def monte_carlo(segments: Segments, model: FailureModel, runs: int, seed: int = 0) -> MonteCarlo:
    """Simulate `runs` runs with the failure process of `expected_run` (numpy Generator,
    seeded): per kind of segment, the failed attempts before all its segments succeed are
    negative binomial; each failed attempt loses a truncated-exponential time and needs a
    restart, whose own failed attempts are negative binomial too."""
    require_int("--monte-carlo", runs)
    rng = np.random.default_rng(seed)
    wall = np.zeros(runs)
    for count, work_s in segments.kinds():
        wall += _segment_kind(rng, count, work_s + model.checkpoint_s, model, runs)
    p10, p50, p90 = np.percentile(wall, [10, 50, 90])
    std_err = float(wall.std(ddof=1) / math.sqrt(runs)) if runs > 1 else 0.0
    return MonteCarlo(runs=runs, seed=seed, mean_s=float(wall.mean()), std_err_s=std_err,
                      p10_s=float(p10), p50_s=float(p50), p90_s=float(p90))


def _segment_kind(rng: np.random.Generator, count: int, length_s: float, model: FailureModel,
                  runs: int) -> np.ndarray:
    """Wall time of `count` segments of `length_s` in each of `runs` runs."""
    m, restart = model.mtbf_s, model.restart_s
    if length_s / m > 30:
        raise SpecError("--monte-carlo", runs, f"a checkpoint interval of {length_s:.3g} s fails "
                        f"e^{length_s / m:.0f} times on average: the run would not finish",
                        "a larger MTBF or faster checkpoints")
    failures = rng.negative_binomial(count, math.exp(-length_s / m), size=runs)
    retries = rng.negative_binomial(np.maximum(failures, 1), math.exp(-restart / m))
    retries = np.where(failures > 0, retries, 0)
    return (count * length_s + _truncated_sums(rng, failures, length_s, m)
            + failures * restart + _truncated_sums(rng, retries, restart, m))


def _truncated_sums(rng: np.random.Generator, counts: np.ndarray, limit_s: float,
                    mtbf_s: float) -> np.ndarray:
    """Per run, the sum of `counts` failure times, each exponential(M) given that it falls
    before `limit_s` (inverse transform); by the central limit theorem past MAX_DRAWS."""
    if limit_s <= 0:
        return np.zeros(len(counts))
    total = int(counts.sum())
    if total > MAX_DRAWS:
        mean, var = truncated_exponential_moments(limit_s, mtbf_s)
        return counts * mean + np.sqrt(counts * var) * rng.standard_normal(len(counts))
    u = rng.random(total)
    times = -mtbf_s * np.log1p(u * math.expm1(-limit_s / mtbf_s))
    owner = np.repeat(np.arange(len(counts)), counts)
    return np.bincount(owner, weights=times, minlength=len(counts))


def truncated_exponential_moments(limit_s: float, mtbf_s: float) -> tuple[float, float]:
    """Mean and variance of an exponential(M) time conditioned on falling before a:
    E[X] = M - a·e^{-a/M}/q, E[X²] = (2M² - e^{-a/M}(a² + 2aM + 2M²))/q, q = 1 - e^{-a/M}."""
    a, m = limit_s, mtbf_s
    q, tail = -math.expm1(-a / m), math.exp(-a / m)
    mean = m - a * tail / q
    second = (2 * m * m - tail * (a * a + 2 * a * m + 2 * m * m)) / q
    return mean, max(second - mean * mean, 0.0)
