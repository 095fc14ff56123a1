"""Fitting cost-model parameters to measured runs: bounded least squares on log step times.

Residual of run i: r_i(θ) = log(predicted_i(θ) / measured_i), the relative error (every run
weighs alike, whether it takes 50 ms or 50 s). θ is minimised over the parameters' bounds by
`scipy.optimize.least_squares` (trust-region reflective, two-point finite differences), each
prediction the full `simulator.predict` with the candidate profile (over a measured profile,
when given one: then the `measured.*` scales and the overheads are what the runs can tell).

Confidence intervals: the linearised ones of nonlinear least squares (Bates & Watts 1988,
"Nonlinear Regression Analysis and Its Applications", §2.3): cov = s²·(JᵀJ)⁻¹ with
s² = Σr²/(n - p) and J the Jacobian at the fit, θ_k ± t(0.975, n - p)·√cov_kk in internal units
(log10 for a log parameter, hence an asymmetric interval in SI units), clipped to the bounds.

Identifiability, two stated rules:
1. Before fitting, a parameter that no run depends on (moving it by a tenth of its range
   changes no prediction by 0.01%) is fixed at its base value: the runs cannot tell its value.
2. After fitting, a parameter whose interval is wider than its whole range is unbounded by
   the data: it is fixed at its base value and the rest are fitted again.
Every fixed parameter is reported with its reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from parasim.simulator.calibration.parameters import FitParameter, apply, parameters
from parasim.simulator.calibration.runs import Run
from parasim.simulator.calibration.stats import ErrorSummary
from parasim.simulator.cost.profile import AnalyticProfile
from parasim.simulator.errors import Infeasible, SpecError
from parasim.simulator.predict import predict
from parasim.simulator.profile import ProfileDB
from parasim.simulator.uncertainty import band_of

SENSITIVITY_STEP = 0.1  # rule 1: share of a parameter's internal range
SENSITIVITY_MIN = 1e-4  # rule 1: the least change of some log prediction that counts
RUNS_PER_PARAMETER = 2  # at least this many runs per parameter asked for
MAX_EVALUATIONS = 200  # least_squares' max_nfev (function evaluations, not the Jacobian's)
CONFIDENCE = 0.95


@dataclass(frozen=True, kw_only=True)
class FittedParameter:
    """One parameter's outcome: fitted with its interval, or fixed and why."""

    name: str
    value: float  # SI units
    base: float  # the starting (base profile's) value
    ci_low: float | None  # 95% confidence interval (None when fixed)
    ci_high: float | None
    status: str  # fitted | fitted, at its lower/upper bound | fixed: why
    meaning: str

    @property
    def fitted(self) -> bool:
        return self.status.startswith("fitted")


@dataclass(frozen=True, kw_only=True)
class Calibration:
    """A fit: the fitted profile (with its residual band) and how well it fits its runs."""

    profile: AnalyticProfile
    parameters: tuple[FittedParameter, ...]
    predicted_s: tuple[float, ...]  # on the runs fitted, at the fit
    measured_s: tuple[float, ...]
    error: ErrorSummary
    evaluations: int  # model evaluations over all runs, finite differences included


class _Model:
    """log(predicted / measured) of every run as a function of the free parameters."""

    def __init__(self, runs: tuple[Run, ...], base: AnalyticProfile,
                 free: tuple[FitParameter, ...], measured: ProfileDB | None):
        self.runs, self.base, self.free, self.measured = runs, base, free, measured
        self.log_measured = np.log([r.measured_step_s for r in runs])
        self.evaluations = 0

    def profile(self, x) -> AnalyticProfile:
        return apply(self.base, self.free, list(x))

    def predicted_s(self, profile: AnalyticProfile) -> np.ndarray:
        self.evaluations += 1
        return np.array([predict(r.job, profile=profile, measured=self.measured).step_time_s
                         for r in self.runs])

    def residuals(self, x) -> np.ndarray:
        return np.log(self.predicted_s(self.profile(x))) - self.log_measured

    def start(self) -> np.ndarray:
        """The base values, moved 1% of the range inside when on (or past) a bound."""
        out = []
        for p in self.free:
            lo, hi = p.internal_bounds
            margin = 0.01 * (hi - lo)
            out.append(min(max(p.to_internal(p.value(self.base)), lo + margin), hi - margin))
        return np.array(out)


def calibrate(runs: tuple[Run, ...], base: AnalyticProfile, names: tuple[str, ...],
              source: str, max_evaluations: int = MAX_EVALUATIONS,
              measured: ProfileDB | None = None) -> Calibration:
    """Fit the named parameters of `base` (over the `measured` profile's op times, if any) to
    `runs` (module docstring). SpecError for too few runs; Infeasible when the fit does not
    converge."""
    asked = parameters(names)
    needed = RUNS_PER_PARAMETER * len(asked)
    if len(runs) < needed:
        raise SpecError("--runs", f"{len(runs)} runs", f"too few to fit {len(asked)} "
                        f"parameters", f"at least {needed} runs ({RUNS_PER_PARAMETER} per "
                        "parameter), or fewer --params")
    fixed = _unidentifiable(runs, base, asked, measured)
    evaluations = len(asked) + 1
    while True:
        free = tuple(p for p in asked if p.name not in fixed)
        if not free:
            raise Infeasible("calibration: no parameter can be fitted from these runs ("
                             + "; ".join(f"{k}: {v}" for k, v in fixed.items()) + ")")
        model = _Model(runs, base, free, measured)
        solution = _solve(model, max_evaluations)
        evaluations += model.evaluations
        widths = _half_widths(solution.jac, solution.fun, len(runs))
        unbounded = _unbounded(free, solution.jac, widths)
        if not unbounded:
            break
        for p in unbounded:
            fixed[p.name] = "its confidence interval is wider than its bounds (unbounded)"
    return _result(model, solution, widths, asked, fixed, source, evaluations)


def _solve(model: _Model, max_evaluations: int):
    """least_squares over the free parameters' bounds; Infeasible when it does not converge.
    (scipy is imported here, not with the module: `parasim` starts without its ~0.5 s.)"""
    from scipy.optimize import least_squares
    lower, upper = zip(*(p.internal_bounds for p in model.free))
    solution = least_squares(model.residuals, model.start(), bounds=(lower, upper),
                             method="trf", diff_step=1e-3, x_scale=1.0, ftol=1e-6, xtol=1e-6,
                             gtol=1e-8, max_nfev=max_evaluations)
    if solution.status <= 0:
        raise Infeasible(f"calibration did not converge: {solution.message} ({solution.nfev} "
                         f"evaluations, cost {solution.cost:.4g}); nothing written")
    return solution


def _unidentifiable(runs: tuple[Run, ...], base: AnalyticProfile,
                    asked: tuple[FitParameter, ...], measured: ProfileDB | None
                    ) -> dict[str, str]:
    """Rule 1: the parameters no run's prediction depends on."""
    model = _Model(runs, base, asked, measured)
    x0 = model.start()
    r0 = model.residuals(x0)
    fixed = {}
    for k, p in enumerate(asked):
        lo, hi = p.internal_bounds
        step = SENSITIVITY_STEP * (hi - lo)
        x = x0.copy()
        x[k] = x0[k] + step if x0[k] + step <= hi else x0[k] - step
        if np.max(np.abs(model.residuals(x) - r0)) < SENSITIVITY_MIN:
            fixed[p.name] = "no run depends on it (not identifiable from these runs)"
    return fixed


def _half_widths(jac: np.ndarray, residuals: np.ndarray, n: int) -> np.ndarray:
    """t(0.975, n - p)·√diag(s²(JᵀJ)⁻¹), internal units; inf where JᵀJ is singular."""
    from scipy.stats import t as student_t

    p = jac.shape[1]
    dof = n - p
    s2 = float(residuals @ residuals) / dof
    info = jac.T @ jac
    if np.linalg.matrix_rank(info) < p:
        return np.full(p, math.inf)
    cov = s2 * np.linalg.inv(info)
    return student_t.ppf(0.5 + CONFIDENCE / 2, dof) * np.sqrt(np.maximum(np.diag(cov), 0.0))


def _result(model: _Model, solution, widths: np.ndarray, asked: tuple[FitParameter, ...],
            fixed: dict[str, str], source: str, evaluations: int) -> Calibration:
    profile = model.profile(solution.x)
    predicted = model.predicted_s(profile)
    measured = np.exp(model.log_measured)
    band = band_of(np.log(measured / predicted).tolist(), source, calibrated=True)
    outcome = {p.name: _fitted(p, x, w, model.base) for p, x, w in
               zip(model.free, solution.x, widths)}
    for p in asked:
        if p.name in fixed:
            value = p.value(model.base)
            outcome[p.name] = FittedParameter(name=p.name, value=value, base=value, ci_low=None,
                                              ci_high=None, status=f"fixed: {fixed[p.name]}",
                                              meaning=p.meaning)
    return Calibration(
        profile=replace(profile, band=band),
        parameters=tuple(outcome[p.name] for p in asked),
        predicted_s=tuple(predicted.tolist()), measured_s=tuple(measured.tolist()),
        error=ErrorSummary.of(predicted.tolist(), measured.tolist()),
        evaluations=evaluations + 1)


def _fitted(p: FitParameter, x: float, width: float, base: AnalyticProfile) -> FittedParameter:
    lo, hi = p.internal_bounds
    at = " at its lower bound" if x <= lo + 1e-6 * (hi - lo) else \
        " at its upper bound" if x >= hi - 1e-6 * (hi - lo) else ""
    x, width = float(x), float(width)
    return FittedParameter(
        name=p.name, value=p.from_internal(x), base=p.value(base),
        ci_low=p.from_internal(max(x - width, lo)), ci_high=p.from_internal(min(x + width, hi)),
        status="fitted" + ("," + at if at else ""), meaning=p.meaning)


def _unbounded(free: tuple[FitParameter, ...], jac: np.ndarray, widths: np.ndarray
               ) -> list[FitParameter]:
    """Rule 2: the parameters whose interval is wider than their range; when JᵀJ is singular
    (every width infinite), the one the fit is least sensitive to, one at a time."""
    if np.isinf(widths).all():
        return [free[int(np.argmin(np.linalg.norm(jac, axis=0)))]]
    return [p for p, w in zip(free, widths) if not w < _span(p)]


def _span(p: FitParameter) -> float:
    lo, hi = p.internal_bounds
    return hi - lo
