"""Roofline time of an op on a device: the slower of its arithmetic and its memory traffic.

t = max(flop / (peak · efficiency(flop)), bytes / (HBM bandwidth · efficiency), t_op)
(Williams et al. 2009, "Roofline: an insightful visual performance model"); the backward pass
costs the forward's time times the op's backward factor (its kernels: input and weight gradient
for a GEMM). Efficiencies come from the analytic or a fitted profile; a measured profile
(issue 4) replaces the time per op, times the profile's `measured` scale for the op's kind (1
unless fitted: `parasim calibrate` over a measured profile learns how much slower ops run inside
a training step than in the profiler's hot loop: cache-cold operands, and the framework's small
ops the op list leaves out, which grow with the tensors as the listed ones do).

t_op (`op_overhead_s`) is the least time an op's kernel takes in a training step: framework
dispatch and launch, which the device waits for when the op's own work is shorter (the
"launch-bound" regime of eager PyTorch; a Megatron layer of micro-batch 1 runs in about the same
time at tp 1, 2 and 4 in the vTrain data). It has no published value: 0 in analytic.yaml,
fitted by `parasim calibrate`. A floor per op, not an added cost nor a floor per pass: on the
vTrain calibration half (fitted on one half of it by the row-hash rule, errors on the other),
the floor per op gave 5.6% mean error, an added cost per op 8.0%, a floor per pass (the host
running ahead of the device) 6.4% (reports/vtrain/README.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from parasim.simulator.cost.profile import AnalyticProfile
from parasim.simulator.cost.sourced import Sourced, total
from parasim.simulator.hardware import DeviceSpec, Precision
from parasim.simulator.ops import Op
from parasim.simulator.profile import ProfileDB, Timed


def backward_factor(op: Op, profile: AnalyticProfile) -> float:
    """Backward time (and kernels) over forward for the op's kind."""
    if op.kind == "memory":
        return profile.memory_backward_factor
    return (profile.gemm if op.kind == "gemm" else profile.attention).backward_factor


def op_time_s(op: Op, device: DeviceSpec, precision: Precision, profile: AnalyticProfile,
              backward: bool = False) -> float:
    """Forward (or backward) time of `op` on `device`."""
    memory_s = op.bytes / (device.memory_bytes_per_s * profile.memory_bandwidth_efficiency)
    factor = backward_factor(op, profile) if backward else 1.0
    if op.kind == "memory":
        return max(memory_s, profile.op_overhead_s) * factor
    if op.kind == "gemm":  # one launch, batched or grouped over op.count instances
        kernel, flop = profile.gemm, op.flop
    else:  # fused attention: causal kernels skip the masked half of the square
        kernel, flop = profile.attention, op.flop * profile.causal_work_fraction
    compute_s = flop / (device.peak_flop_per_s(precision) * kernel.efficiency(flop))
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
                return self._scaled(op, found)
        return Sourced.of(op_time_s(op, self.device, self.precision, self.analytic, backward),
                          "analytic")

    def _scaled(self, op: Op, found: Timed) -> Sourced:
        """A measured time of `op`, times the profile's `measured` scale for its kind."""
        return Sourced.of(found.seconds * self.analytic.measured_scale(op.kind), found.source)

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
            parts.append(self._scaled(op, found) if found is not None else
                         Sourced.of(op_time_s(op, self.device, self.precision, self.analytic),
                                    "analytic"))
        return total(parts)
