"""The cost-model parameters a calibration may fit: names, bounds, and how each sets a profile.

Each is a constant of `AnalyticProfile` (profiles/analytic.yaml's sections and keys). The fit
works in internal units: log10 of the value for a parameter spanning decades, else the value
over a typical scale, so that every internal coordinate moves predictions by similar amounts.
Bounds are physical: efficiencies are shares of a peak or line rate, overheads non-negative,
scales of measured op times between half and a few times the profiled time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from parasim.simulator.cost.profile import AnalyticProfile
from parasim.simulator.errors import SpecError


@dataclass(frozen=True, kw_only=True)
class FitParameter:
    """One fittable constant of the analytic profile."""

    name: str  # analytic.yaml's section.key
    field: str  # AnalyticProfile field; `gemm.max_efficiency` style for a kernel's
    lower: float  # bounds, in SI units
    upper: float
    scale: float  # typical size: internal value = value / scale (unless log)
    log: bool = False  # internal value = log10(value)
    meaning: str = ""

    def value(self, profile: AnalyticProfile) -> float:
        kernel, _, key = self.field.rpartition(".")
        owner = getattr(profile, kernel) if kernel else profile
        return float(getattr(owner, key))

    def with_value(self, profile: AnalyticProfile, value: float) -> AnalyticProfile:
        kernel, _, key = self.field.rpartition(".")
        if kernel:
            return replace(profile, **{kernel: replace(getattr(profile, kernel), **{key: value})})
        return replace(profile, **{key: value})

    def to_internal(self, value: float) -> float:
        return math.log10(value) if self.log else value / self.scale

    def from_internal(self, x: float) -> float:
        return 10.0 ** x if self.log else x * self.scale

    @property
    def internal_bounds(self) -> tuple[float, float]:
        return self.to_internal(self.lower), self.to_internal(self.upper)


PARAMETERS = {p.name: p for p in (
    FitParameter(name="gemm.max_efficiency", field="gemm.max_efficiency", lower=0.1, upper=1.0,
                 scale=1.0, meaning="large-GEMM share of dense peak"),
    FitParameter(name="gemm.half_efficiency_flop", field="gemm.half_efficiency_flop", lower=1e6,
                 upper=1e13, scale=1.0, log=True, meaning="GEMM size at half the max efficiency"),
    FitParameter(name="gemm.shape_exponent", field="gemm.shape_exponent", lower=0.0,
                 upper=2.0, scale=1.0, meaning="efficiency x (smallest GEMM side / reference "
                 "width)^this below the reference width"),
    FitParameter(name="attention.max_efficiency", field="attention.max_efficiency", lower=0.05,
                 upper=1.0, scale=1.0, meaning="fused attention's share of dense peak"),
    FitParameter(name="attention.half_efficiency_flop", field="attention.half_efficiency_flop",
                 lower=1e6, upper=1e15, scale=1.0, log=True,
                 meaning="attention size at half the max efficiency"),
    FitParameter(name="attention.shape_exponent", field="attention.shape_exponent", lower=0.0,
                 upper=2.0, scale=1.0, meaning="efficiency x (head dim / 128)^this below 128"),
    FitParameter(name="memory.bandwidth_efficiency", field="memory_bandwidth_efficiency",
                 lower=0.05, upper=1.0, scale=1.0, meaning="elementwise ops' share of HBM "
                 "bandwidth"),
    FitParameter(name="communication.intra_node_efficiency", field="intra_node_efficiency",
                 lower=0.05, upper=1.0, scale=1.0, meaning="NCCL bus bandwidth / NVLink rate"),
    FitParameter(name="communication.inter_node_efficiency", field="inter_node_efficiency",
                 lower=0.05, upper=1.0, scale=1.0, meaning="NCCL bus bandwidth / NIC rate"),
    FitParameter(name="overlap.slowdown", field="overlap_slowdown", lower=0.0, upper=1.0,
                 scale=1.0, meaning="compute slowdown per second of hidden communication"),
    FitParameter(name="overhead.op_s", field="op_overhead_s", lower=0.0, upper=1e-3, scale=1e-5,
                 meaning="fixed time per op and pass (launch, dispatch)"),
    FitParameter(name="overhead.collective_s", field="collective_overhead_s", lower=0.0,
                 upper=1e-3, scale=1e-5, meaning="fixed time per collective call (launch, "
                 "synchronisation)"),
    FitParameter(name="overhead.step_s", field="step_overhead_s", lower=0.0, upper=10.0,
                 scale=0.1, meaning="fixed host time per step"),
    FitParameter(name="measured.compute_scale", field="measured_compute_scale", lower=0.5,
                 upper=3.0, scale=1.0, meaning="training / profiled time of measured GEMMs "
                 "and attention"),
    FitParameter(name="measured.memory_scale", field="measured_memory_scale", lower=0.5,
                 upper=10.0, scale=1.0, meaning="training / profiled time of measured "
                 "memory-bound ops"),
)}
DEFAULT_NAMES = tuple(PARAMETERS)


def parameters(names: tuple[str, ...] | list[str]) -> tuple[FitParameter, ...]:
    """The named parameters, in the given order; SpecError for an unknown or repeated one."""
    out = []
    for name in names:
        if name not in PARAMETERS:
            raise SpecError("--params", name, "no such parameter", ", ".join(PARAMETERS))
        if PARAMETERS[name] in out:
            raise SpecError("--params", name, "named twice", "each parameter once")
        out.append(PARAMETERS[name])
    if not out:
        raise SpecError("--params", "", "names no parameter", ", ".join(PARAMETERS))
    return tuple(out)


def apply(profile: AnalyticProfile, params: tuple[FitParameter, ...],
          internal: list[float]) -> AnalyticProfile:
    """`profile` with each parameter set from its internal value."""
    for p, x in zip(params, internal):
        profile = p.with_value(profile, p.from_internal(float(x)))
    return profile
