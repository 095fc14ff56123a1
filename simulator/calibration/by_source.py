"""Calibration on measured runs from many sources: one fit per GPU generation, judged
leave-one-source-out.

The honest error of a model fitted on public measurements is the error on a source it has not
seen: for each source in turn, the parameters are fitted on every other source and the held-out
source's runs are predicted with the full simulator (leave-one-group-out cross-validation,
Hastie, Tibshirani & Friedman, "The Elements of Statistical Learning", 2nd ed., §7.10). Each
GPU generation (`profiles/analytic.yaml` `generations`) gets its own fitted constants: A100,
H100-class and B200 GEMMs and attention kernels reach different shares of their peaks. The
prediction interval of a generation is the 10th-90th percentile band of its runs'
out-of-source residuals (an 80% interval), so it is as wide as the data says; a generation
without runs keeps the uncalibrated constants and says so.

The same fit is made against a baseline that knows nothing but FLOPs: the step time at one
constant MFU per generation, fitted on the same folds (the geometric mean of the training runs'
measured MFU, which minimises the squared log error).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from parasim.simulator.calibration import linearized
from parasim.simulator.calibration.parameters import FitParameter
from parasim.simulator.cost.profile import AnalyticProfile
from parasim.simulator.job import Job
from parasim.simulator.predict import predict
from parasim.simulator.uncertainty import ResidualBand, band_of

INTERVAL_PERCENT = 80  # the prediction interval's nominal coverage


@dataclass(frozen=True)
class SourcedRun:
    """One measured run: where it comes from and what it measured."""

    source: str  # the fold it belongs to
    generation: str  # the GPU generation whose constants it calibrates
    job: Job
    measured_step_s: float
    model_flop_per_step: float  # for the constant-MFU baseline
    peak_flop_per_s: float  # the cluster's summed peak at the job's precision


@dataclass(frozen=True)
class HeldOut:
    """A run predicted by a model fitted without its source."""

    run: SourcedRun
    predicted_s: float  # the full simulator, fitted on the other sources
    baseline_s: float  # the constant-MFU baseline fitted on the other sources
    low_s: float  # the 80% interval from the other sources' out-of-source residuals
    high_s: float
    own_s: float | None = None  # fitted on its own source's runs (`fitted_on_itself`)


def predict_times(runs: Sequence[SourcedRun], profile: AnalyticProfile) -> list[float]:
    return [predict(r.job, profile=profile).step_time_s for r in runs]


def fit_generations(runs: Sequence[SourcedRun], base: AnalyticProfile,
                    params: Sequence[FitParameter]
                    ) -> tuple[AnalyticProfile, dict[str, linearized.Linearization]]:
    """`base` with each generation's constants fitted on its runs (refit to convergence), and
    each generation's linearisation at its fit (for the leave-one-source-out folds)."""
    fitted, lins = base, {}
    for name in sorted({r.generation for r in runs}):
        mine = [r for r in runs if r.generation == name]
        start = base.for_gpu(next(iter(base.generation(name).gpus)))
        constants, lins[name] = linearized.refit(
            lambda profile, mine=mine: predict_times(mine, profile), start, params,
            np.array([r.measured_step_s for r in mine]),
            linearized.source_weights([r.source for r in mine]))
        fitted = fitted.with_generation(name, constants)
    return fitted, lins


def leave_one_source_out(fit_runs: Sequence[SourcedRun], test_runs: Sequence[SourcedRun],
                         fitted: AnalyticProfile, lins: dict[str, linearized.Linearization],
                         base: AnalyticProfile) -> list[HeldOut]:
    """Every test run predicted by the fit of its generation on the other sources' fit runs
    (`lins`: the fit runs linearised at the all-source fit, so each fold is a cheap linear
    fit), with the full simulator; the constant-MFU baseline on the same folds; intervals from
    the other sources' out-of-source residuals. A source that is its generation's only one is
    predicted with the uncalibrated `base` (no other source of that generation to learn
    from), and its baseline MFU comes from every other source."""
    predicted, baseline = {}, {}
    for source in sorted({r.source for r in test_runs}):
        for name in sorted({r.generation for r in test_runs}):
            held = [r for r in test_runs if r.source == source and r.generation == name]
            if not held:
                continue
            mine = [r for r in fit_runs if r.generation == name]
            train = np.array([i for i, r in enumerate(mine) if r.source != source], dtype=int)
            profile = _fold_profile(fitted, name, lins[name], mine, train) \
                if len(train) and name in lins else base
            for r, t in zip(held, predict_times(held, profile)):
                predicted[id(r)] = t
            mfu = constant_mfu([mine[i] for i in train] if len(train) else
                               [r for r in fit_runs if r.source != source])
            for r in held:
                baseline[id(r)] = r.model_flop_per_step / (mfu * r.peak_flop_per_s)
    return _with_intervals(test_runs, predicted, baseline)


def fitted_on_itself(fit_runs: Sequence[SourcedRun], held: Sequence[HeldOut],
                     base: AnalyticProfile, params: Sequence[FitParameter]) -> list[HeldOut]:
    """`held` with each run also predicted by the parameters fitted on its own source's fit
    runs alone: in-sample, so no measure of accuracy. It is the least squared log error any
    one setting of these parameters reaches on that source; where its error stays high, the
    source has structure the model cannot express, whatever the parameters are fitted on."""
    own = {}
    for source in sorted({h.run.source for h in held}):
        profile, _ = fit_generations([r for r in fit_runs if r.source == source], base, params)
        mine = [h.run for h in held if h.run.source == source]
        own.update(zip(map(id, mine), predict_times(mine, profile)))
    return [replace(h, own_s=own[id(h.run)]) for h in held]


def _fold_profile(fitted: AnalyticProfile, name: str, lin: linearized.Linearization,
                  mine: Sequence[SourcedRun], train: np.ndarray) -> AnalyticProfile:
    """The generation's constants fitted on the training rows: from the all-source fit's
    linearisation, linearised again (on the training rows alone) wherever the fold's fit moves
    away from it, as the all-source fit is (`linearized.refit`)."""
    runs = [mine[i] for i in train]
    start = fitted.for_gpu(next(iter(fitted.generation(name).gpus)))
    constants, _ = linearized.refit(
        lambda profile: predict_times(runs, profile), start, lin.params,
        np.array([r.measured_step_s for r in runs]),
        linearized.source_weights([r.source for r in mine])[train],
        lin=linearized.rows_of(lin, train))
    return fitted.with_generation(name, constants)


def constant_mfu(runs: Sequence[SourcedRun]) -> float:
    """The MFU minimising the source-balanced squared log error: a weighted geometric mean."""
    weights = linearized.source_weights([r.source for r in runs])
    logs = np.log([r.model_flop_per_step / (r.measured_step_s * r.peak_flop_per_s)
                   for r in runs])
    return float(np.exp(np.sum(weights * logs) / np.sum(weights)))


def _with_intervals(runs: Sequence[SourcedRun], predicted: dict, baseline: dict
                    ) -> list[HeldOut]:
    """Each held-out run's 80% interval: the band of the out-of-source residuals of its
    generation's OTHER sources (so no run's interval has seen its own source)."""
    logs = {id(r): math.log(r.measured_step_s / predicted[id(r)]) for r in runs}
    bands = {}  # one band per (generation, held-out source), not one per run
    for key in {(r.generation, r.source) for r in runs}:
        others = [logs[id(o)] for o in runs if o.generation == key[0] and o.source != key[1]]
        bands[key] = interval_band(others, "") if others else None
    out = []
    for r in runs:
        band, p = bands[(r.generation, r.source)], predicted[id(r)]
        low, high = (p, p) if band is None else (p * math.exp(band.log_low),
                                                 p * math.exp(band.log_high))
        out.append(HeldOut(r, p, baseline[id(r)], low, high))
    return out


def interval_band(log_ratios: Sequence[float], source: str) -> ResidualBand:
    """The 80% band: the 10th and 90th percentiles of log(measured / predicted)."""
    tail = (100 - INTERVAL_PERCENT) / 2
    return band_of(list(log_ratios), source, True, low_percent=tail, high_percent=100 - tail)


NO_DATA = ResidualBand(log_low=0.0, log_high=0.0, runs=0, source="no published run of this "
                       "GPU's generation: uncalibrated constants, no interval")


def generation_bands(held: Sequence[HeldOut], fitted: AnalyticProfile) -> AnalyticProfile:
    """The shipped profile: each generation's band from its runs' out-of-source residuals; a
    GPU of no fitted generation gets no interval, and says why."""
    fitted = replace(fitted, band=NO_DATA)
    for generation in fitted.generations:
        logs = [math.log(h.run.measured_step_s / h.predicted_s) for h in held
                if h.run.generation == generation.name]
        if not logs:
            continue
        sources = len({h.run.source for h in held if h.run.generation == generation.name})
        constants = fitted.for_gpu(next(iter(generation.gpus)))
        band = interval_band(logs, f"{INTERVAL_PERCENT}% band of {len(logs)} out-of-source "
                             f"residuals of {sources} sources (leave-one-source-out, "
                             f"{generation.name})")
        fitted = fitted.with_generation(generation.name, replace(constants, band=band))
    return fitted
