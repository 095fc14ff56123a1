"""Roofline time of an op on a device: the slower of its arithmetic and its memory traffic.

t = max(flop / (peak · efficiency(flop)), bytes / (HBM bandwidth · efficiency))
(Williams et al. 2009, "Roofline: an insightful visual performance model"). Efficiencies come
from the analytic profile; a measured profile (issue 4) will replace them per op.
"""

from __future__ import annotations

from simulator.cost.profile import AnalyticProfile
from simulator.hardware import DeviceSpec, Precision
from simulator.ops import Op


def op_time_s(op: Op, device: DeviceSpec, precision: Precision, profile: AnalyticProfile,
              backward: bool = False) -> float:
    """Forward (or backward) time of `op` on `device`."""
    memory_s = op.bytes / (device.memory_bytes_per_s * profile.memory_bandwidth_efficiency)
    if op.kind == "memory":
        return memory_s * (profile.memory_backward_factor if backward else 1.0)
    if op.kind == "gemm":  # one launch, batched or grouped over op.count instances
        kernel, flop = profile.gemm, op.flop
    else:  # fused attention: causal kernels skip the masked half of the square
        kernel, flop = profile.attention, op.flop * profile.causal_work_fraction
    compute_s = flop / (device.peak_flop_per_s(precision) * kernel.efficiency(flop))
    factor = kernel.backward_factor if backward else 1.0
    return max(compute_s, memory_s) * factor


def ops_time_s(ops, device: DeviceSpec, precision: Precision, profile: AnalyticProfile,
               backward: bool = False) -> float:
    return sum(op_time_s(op, device, precision, profile, backward) for op in ops)
