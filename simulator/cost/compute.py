"""Roofline time of an op on a device: the slower of its arithmetic and its memory traffic.

t = max(flop / (peak · efficiency(flop)), bytes / (HBM bandwidth · efficiency)) + t_op
(Williams et al. 2009, "Roofline: an insightful visual performance model"), where t_op is a
fixed time per op: kernel launch, tail and framework dispatch, which the roofline ignores and
which dominates small ops. It has no published value: 0 in analytic.yaml, fitted to measured
runs by `parasim calibrate`. The backward pass costs the forward's time, t_op included, times
the op's backward factor (its kernels: input and weight gradient for a GEMM).
Efficiencies and t_op come from the analytic or a fitted profile; a measured profile (issue 4)
replaces the whole time per op.
"""

from __future__ import annotations

from dataclasses import dataclass

from simulator.cost.profile import AnalyticProfile
from simulator.cost.sourced import Sourced, total
from simulator.hardware import DeviceSpec, Precision
from simulator.ops import Op
from simulator.profile import ProfileDB


def op_time_s(op: Op, device: DeviceSpec, precision: Precision, profile: AnalyticProfile,
              backward: bool = False) -> float:
    """Forward (or backward) time of `op` on `device`."""
    memory_s = op.bytes / (device.memory_bytes_per_s * profile.memory_bandwidth_efficiency)
    if op.kind == "memory":
        return max(memory_s, profile.op_overhead_s) * \
            (profile.memory_backward_factor if backward else 1.0)
    if op.kind == "gemm":  # one launch, batched or grouped over op.count instances
        kernel, flop = profile.gemm, op.flop
    else:  # fused attention: causal kernels skip the masked half of the square
        kernel, flop = profile.attention, op.flop * profile.causal_work_fraction
    compute_s = flop / (device.peak_flop_per_s(precision) * kernel.efficiency(flop))
    factor = kernel.backward_factor if backward else 1.0
    return max(compute_s, memory_s, profile.op_overhead_s) * factor


@dataclass(frozen=True)
class ComputeModel:
    """Op times on one device: from a measured profile where it has them, else the roofline."""

    device: DeviceSpec
    precision: Precision
    analytic: AnalyticProfile
    measured: ProfileDB | None = None

    def op(self, op: Op, backward: bool = False) -> Sourced:
        if self.measured is not None:
            found = self.measured.op_time(op, backward)
            if found is not None:
                return Sourced.of(found.seconds, found.source)
        return Sourced.of(op_time_s(op, self.device, self.precision, self.analytic, backward),
                          "analytic")

    def ops(self, ops, backward: bool = False) -> Sourced:
        return total(self.op(op, backward) for op in ops)

    def weight_gradient(self, ops) -> Sourced:
        """The weight-gradient GEMMs of `ops`' backward: the part ZB-H1 defers. A weight
        gradient has its forward GEMM's FLOPs (Qi et al. 2023, §2: T_W = T_F for a linear)."""
        parts = []
        for op in ops:
            if op.kind != "gemm":
                continue
            found = self.measured.gemm_weight_time(op) if self.measured is not None else None
            parts.append(Sourced.of(found.seconds, found.source) if found is not None else
                         Sourced.of(op_time_s(op, self.device, self.precision, self.analytic),
                                    "analytic"))
        return total(parts)
