"""Fitting thousands of runs fast: each run's step time linearised in the fitted parameters.

A fit over the published corpus (a few thousand runs, leave-one-source-out: one fit per source)
cannot afford the full simulator at every step of the optimiser. Instead each run's predicted
step time T_i and its slope in each parameter are computed once with the full simulator, at
a point θ0 (finite differences), and the fit minimises the residuals of the linear model

    T_i(u) = T_i(θ0) + Σ_j ∂T_i/∂u_j · (u_j − u_j(θ0)),

in coordinates u in which the simulator is (nearly) linear: for an efficiency e the time of
every op it governs is proportional to 1/e (the roofline, `simulator.cost.compute`), so
u = 1/e; an added time (a per-step overhead) or a slowdown share enters as itself. Where a
max() of the roofline or an overlap switches sides the model is only locally linear, so the
point θ0 is moved to the fit and the runs linearised again (`refit`: a Gauss-Newton outer
loop, Nocedal & Wright, "Numerical Optimization", 2nd ed., §10.3) until the parameters settle.
Every error parasim reports is then computed with the full simulator at the fitted values,
never with this linear model.

The objective is the per-source balanced least squares of log(measured / predicted): each
run is weighted by 1 / (runs of its source), so that one large source does not decide the fit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

from parasim.simulator.calibration.parameters import FitParameter
from parasim.simulator.cost.profile import AnalyticProfile
from parasim.simulator.errors import Infeasible

RELATIVE_STEP = 0.05  # finite-difference step: 5% of an inverse efficiency
ABSOLUTE_STEP = {"overhead.step_s": 0.05, "overhead.op_s": 2e-6, "overhead.collective_s": 2e-5,
                 "overlap.slowdown": 0.05}
LOG_STEP = 0.1  # ... of a parameter fitted in log10
MIN_TIME_S = 1e-6  # the linear model's time is kept above this (a log is taken)

Predictor = Callable[[AnalyticProfile], Sequence[float]]  # the full simulator on the runs


def inverse(p: FitParameter) -> bool:
    """An efficiency: time is proportional to its inverse."""
    return p.name.endswith("efficiency")


def coordinate(p: FitParameter, value: float) -> float:
    """1/e for an efficiency, log10 for a parameter spanning decades, else the value."""
    if inverse(p):
        return 1.0 / value
    return math.log10(value) if p.log else value


def value_of(p: FitParameter, u: float) -> float:
    if inverse(p):
        return 1.0 / u
    return 10.0 ** u if p.log else u


def _bounds(p: FitParameter) -> tuple[float, float]:
    low, high = coordinate(p, p.lower), coordinate(p, p.upper)
    return min(low, high), max(low, high)


@dataclass(frozen=True)
class Linearization:
    """The runs' step times and their slopes at one point of the parameters."""

    params: tuple[FitParameter, ...]
    at: np.ndarray  # coordinates u of the point
    predicted_s: np.ndarray  # (runs,) full-simulator step times at the point
    slope_s: np.ndarray  # (runs, params) ∂T/∂u

    def times_s(self, u: np.ndarray) -> np.ndarray:
        return np.maximum(self.predicted_s + self.slope_s @ (u - self.at), MIN_TIME_S)


def with_coordinates(profile: AnalyticProfile, params: Sequence[FitParameter],
                     u: Sequence[float]) -> AnalyticProfile:
    for p, x in zip(params, u):
        profile = p.with_value(profile, value_of(p, float(x)))
    return profile


def linearize(predict_runs: Predictor, profile: AnalyticProfile,
              params: Sequence[FitParameter]) -> Linearization:
    """Times and forward-difference slopes with the full simulator: len(params) + 1 passes."""
    at = np.array([coordinate(p, p.value(profile)) for p in params])
    base = np.asarray(predict_runs(profile), dtype=float)
    slopes = np.empty((len(base), len(params)))
    for j, p in enumerate(params):
        step = at[j] * RELATIVE_STEP if inverse(p) else LOG_STEP if p.log else \
            ABSOLUTE_STEP.get(p.name, 0.05 * p.scale)
        low, high = _bounds(p)
        step = step if at[j] + step <= high else -step
        moved = at.copy()
        moved[j] = min(max(at[j] + step, low), high)
        shifted = np.asarray(predict_runs(with_coordinates(profile, params, moved)), float)
        slopes[:, j] = (shifted - base) / (moved[j] - at[j])
    return Linearization(tuple(params), at, base, slopes)


def fit(lin: Linearization, measured_s: np.ndarray, weights: np.ndarray,
        rows: np.ndarray | None = None) -> np.ndarray:
    """The coordinates minimising Σ w_i·log(measured_i / T_i(u))² over `rows` (all by
    default), within each parameter's bounds."""
    rows = np.arange(len(measured_s)) if rows is None else rows
    sub = rows_of(lin, rows)
    root_w, log_measured = np.sqrt(weights[rows]), np.log(measured_s[rows])
    low, high = zip(*(_bounds(p) for p in lin.params))
    start = np.clip(lin.at, low, high)

    def residuals(u):
        return root_w * (log_measured - np.log(sub.times_s(u)))

    def jacobian(u):
        return -(root_w / sub.times_s(u))[:, None] * sub.slope_s

    solution = least_squares(residuals, start, jac=jacobian, bounds=(low, high),
                             x_scale="jac", max_nfev=200)
    if not solution.success and solution.status <= 0:
        raise Infeasible(f"the linearised fit did not converge: {solution.message}")
    return solution.x


def refit(predict_runs: Predictor, profile: AnalyticProfile, params: Sequence[FitParameter],
          measured_s: np.ndarray, weights: np.ndarray, rounds: int = 3,
          tolerance: float = 0.01, lin: Linearization | None = None
          ) -> tuple[AnalyticProfile, Linearization]:
    """Fit, linearise again at the fit, until no coordinate moves by more than `tolerance`
    (relative) or after `rounds`; the fitted profile and the linearisation it was last fitted
    from (within `tolerance` of the fit). `lin`: the runs already linearised at `profile`
    (saves the first pass; returned as is when the first fit does not move)."""
    lin = lin or linearize(predict_runs, profile, params)
    for _ in range(rounds):
        u = fit(lin, measured_s, weights)
        moved = np.max(np.abs(u - lin.at) / np.maximum(np.abs(lin.at), 1e-9))
        profile = with_coordinates(profile, params, u)
        if moved < tolerance:
            break
        lin = linearize(predict_runs, profile, params)
    return profile, lin


def rows_of(lin: Linearization, rows: np.ndarray) -> Linearization:
    """The linearisation of a subset of its runs."""
    return Linearization(lin.params, lin.at, lin.predicted_s[rows], lin.slope_s[rows])


def source_weights(sources: Sequence[str]) -> np.ndarray:
    """1 / (runs of the run's source): every source weighs the same in the fit."""
    names, counts = np.unique(np.asarray(sources), return_counts=True)
    per = dict(zip(names, counts))
    return np.array([1.0 / per[s] for s in sources])
