"""The analytic cost profile: efficiency constants of the roofline time model.

Read from `profiles/analytic.yaml`, where each constant cites the public measurement it comes
from. A measured profile (issue 4) will override these per op.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import profiles
from simulator.yamlfile import load_data

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

    def overlapped_s(self, compute_s: float, comm_s: float) -> float:
        """Compute with communication running beside it: the longer of the two, plus the
        slowdown the shared GPU costs while both run."""
        return max(compute_s, comm_s) + self.overlap_slowdown * min(compute_s, comm_s)

    def usable_memory_bytes(self, capacity_bytes: float) -> float:
        return capacity_bytes * (1 - self.reserve_fraction) - self.reserve_fixed_bytes


@lru_cache(maxsize=1)
def analytic_profile() -> AnalyticProfile:
    with profiles.path("analytic.yaml").open("r", encoding="utf-8") as f:
        raw = load_data(f)
    attention = dict(raw["attention"])
    causal = attention.pop("causal_work_fraction")
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
    )
