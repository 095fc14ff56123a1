"""The analytic cost profile: efficiency constants of the roofline time model.

Read from `profiles/analytic.yaml`, where each constant cites the public measurement it comes
from; a measured profile (issue 4) overrides op times, a fitted profile (`parasim calibrate`,
`simulator.calibration`) replaces the constants with values fitted to measured runs. Both files
have the layout of analytic.yaml (`profile_from_mapping` / `profile_mapping`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from parasim import profiles
from parasim.simulator.uncertainty import NO_BAND, ResidualBand
from parasim.simulator.yamlfile import load_data

GiB = 2**30


@dataclass(frozen=True, kw_only=True)
class KernelEfficiency:
    """Share of peak reached: max / (1 + half_efficiency_flop / flop)."""

    max_efficiency: float  # large-problem share of dense peak
    half_efficiency_flop: float  # problem size at which half of max is reached
    backward_factor: float  # backward time / forward time at equal efficiency

    def efficiency(self, flop: float) -> float:
        return self.max_efficiency / (1.0 + self.half_efficiency_flop / max(flop, 1.0))


@dataclass(frozen=True, kw_only=True)
class AnalyticProfile:
    """Every constant of the analytic time and memory model."""

    gemm: KernelEfficiency
    attention: KernelEfficiency
    causal_work_fraction: float  # share of the s x s square a causal kernel computes
    memory_bandwidth_efficiency: float  # share of HBM bandwidth elementwise ops reach
    memory_backward_factor: float
    intra_node_efficiency: float  # NCCL bus bandwidth / NVLink rate
    inter_node_efficiency: float  # NCCL bus bandwidth / NIC rate
    overlap_slowdown: float  # compute time added per second of communication hidden behind it
    reserve_fixed_bytes: float  # device memory unusable for tensors
    reserve_fraction: float  # ... plus this share of the device memory
    optimizer_bytes_per_param: float  # HBM traffic of one Adam update per parameter
    op_overhead_s: float = 0.0  # fixed time of every op's kernel(s): launch and tail
    collective_overhead_s: float = 0.0  # fixed time of every collective call: launch, sync
    step_overhead_s: float = 0.0  # fixed host time of every step (Python, data, launches)
    measured_compute_scale: float = 1.0  # training / profiled time of measured GEMMs, attention
    measured_memory_scale: float = 1.0  # ... of measured memory-bound (elementwise) ops
    band: ResidualBand = NO_BAND  # calibration residuals: the prediction interval

    def overlapped_s(self, compute_s: float, comm_s: float) -> float:
        """Compute with communication running beside it: the longer of the two, plus the
        slowdown the shared GPU costs while both run."""
        return max(compute_s, comm_s) + self.overlap_slowdown * min(compute_s, comm_s)

    def measured_scale(self, kind: str) -> float:
        """Factor on a measured op time of this kind (`gemm`, `attention`, `memory`)."""
        return self.measured_memory_scale if kind == "memory" else self.measured_compute_scale

    def usable_memory_bytes(self, capacity_bytes: float) -> float:
        return capacity_bytes * (1 - self.reserve_fraction) - self.reserve_fixed_bytes


@lru_cache(maxsize=1)
def analytic_profile() -> AnalyticProfile:
    with profiles.path("analytic.yaml").open("r", encoding="utf-8") as f:
        return profile_from_mapping(load_data(f))


def profile_from_mapping(raw: dict[str, Any]) -> AnalyticProfile:
    """An AnalyticProfile from analytic.yaml's layout (SI units except `fixed_GiB`); the
    `overhead`, `measured` and `prediction_interval` sections are optional (0, 1 and no
    band)."""
    attention = dict(raw["attention"])
    causal = attention.pop("causal_work_fraction")
    overhead = raw.get("overhead", {})
    measured = raw.get("measured", {})
    band = raw.get("prediction_interval")
    return AnalyticProfile(
        gemm=KernelEfficiency(**raw["gemm"]),
        attention=KernelEfficiency(**attention),
        causal_work_fraction=causal,
        memory_bandwidth_efficiency=raw["memory"]["bandwidth_efficiency"],
        memory_backward_factor=raw["memory"]["backward_factor"],
        intra_node_efficiency=raw["communication"]["intra_node_efficiency"],
        inter_node_efficiency=raw["communication"]["inter_node_efficiency"],
        overlap_slowdown=raw["overlap"]["slowdown"],
        reserve_fixed_bytes=raw["memory_reserve"]["fixed_GiB"] * GiB,
        reserve_fraction=raw["memory_reserve"]["fraction"],
        optimizer_bytes_per_param=raw["optimizer"]["bytes_per_param"],
        op_overhead_s=overhead.get("op_s", 0.0),
        collective_overhead_s=overhead.get("collective_s", 0.0),
        step_overhead_s=overhead.get("step_s", 0.0),
        measured_compute_scale=measured.get("compute_scale", 1.0),
        measured_memory_scale=measured.get("memory_scale", 1.0),
        band=ResidualBand(**band) if band else NO_BAND,
    )


def profile_mapping(profile: AnalyticProfile) -> dict[str, Any]:
    """`profile_from_mapping`'s inverse: analytic.yaml's layout."""
    def kernel(k: KernelEfficiency) -> dict[str, float]:
        return {"max_efficiency": k.max_efficiency,
                "half_efficiency_flop": k.half_efficiency_flop,
                "backward_factor": k.backward_factor}
    b = profile.band
    return {
        "gemm": kernel(profile.gemm),
        "attention": {**kernel(profile.attention),
                      "causal_work_fraction": profile.causal_work_fraction},
        "memory": {"bandwidth_efficiency": profile.memory_bandwidth_efficiency,
                   "backward_factor": profile.memory_backward_factor},
        "communication": {"intra_node_efficiency": profile.intra_node_efficiency,
                          "inter_node_efficiency": profile.inter_node_efficiency},
        "overlap": {"slowdown": profile.overlap_slowdown},
        "memory_reserve": {"fixed_GiB": profile.reserve_fixed_bytes / GiB,
                           "fraction": profile.reserve_fraction},
        "optimizer": {"bytes_per_param": profile.optimizer_bytes_per_param},
        "overhead": {"op_s": profile.op_overhead_s,
                     "collective_s": profile.collective_overhead_s,
                     "step_s": profile.step_overhead_s},
        "measured": {"compute_scale": profile.measured_compute_scale,
                     "memory_scale": profile.measured_memory_scale},
        "prediction_interval": {"log_low": b.log_low, "log_high": b.log_high,
                                "runs": b.runs, "calibrated": b.calibrated,
                                "source": b.source},
    }
