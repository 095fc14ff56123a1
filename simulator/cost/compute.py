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
from parasim.simulator.nvfp4 import CAST_BYTES_PER_VALUE as NVFP4_CAST_BYTES_PER_VALUE
from parasim.simulator.ops import Op
from parasim.simulator.profile import ProfileDB, Timed


def backward_factor(op: Op, profile: AnalyticProfile) -> float:
    """Backward time (and kernels) over forward for the op's kind."""
    if op.kind == "memory":
        return profile.memory_backward_factor
    return (profile.gemm if op.kind == "gemm" else profile.attention).backward_factor


def op_time_s(op: Op, device: DeviceSpec, precision: Precision, profile: AnalyticProfile,
              backward: bool = False) -> float:
    """Forward (or backward) time of `op` on `device`. In fp8 training only the block's
    linear layers (`op.fp8`) run at the FP8 peak, and each pays for casting its input (the
    output gradient in the backward) to FP8 with its transpose (`fp8_cast_bytes`); everything
    else runs at the 16-bit peak (fused attention included: FlashAttention computes in bf16).
    fp4 training (NVIDIA's NVFP4 recipe, `simulator.nvfp4`) is the same with the FP4 peak and
    the NVFP4 cast (`nvfp4.CAST_BYTES_PER_VALUE` per value)."""
    bandwidth = device.memory_bytes_per_s * profile.memory_bandwidth_efficiency
    memory_s = op.bytes / bandwidth
    factor = backward_factor(op, profile) if backward else 1.0
    if op.kind == "memory":
        return max(memory_s, profile.op_overhead_s) * factor
    low = precision in LOW_PRECISIONS
    in_fp8 = low and op.kind == "gemm" and op.fp8  # a block's linear layer, in fp8 or fp4
    peak = device.peak_flop_per_s(precision if in_fp8 or not low else "bf16")
    if op.kind == "gemm":  # one launch, batched or grouped over op.count instances
        kernel, flop, width = profile.gemm, op.flop, min(op.shape)
    else:  # fused attention: causal kernels skip the masked half of the square
        kernel, flop = profile.attention, op.flop * profile.causal_work_fraction
        width = op.shape[4] if len(op.shape) > 4 else None
    compute_s = flop / (peak * kernel.efficiency(flop, width))
    cast_s = fp8_cast_bytes(op, backward, profile, precision) / bandwidth if in_fp8 else 0.0
    return max(compute_s, memory_s, profile.op_overhead_s) * factor + cast_s


LOW_PRECISIONS = ("fp8", "fp4")  # GEMM-only precisions: the rest of the step runs in bf16


def fp8_cast_bytes(op: Op, backward: bool, profile: AnalyticProfile,
                   precision: Precision = "fp8") -> float:
    """Bytes moved casting an FP8 GEMM's 16-bit input to FP8 (forward: the activation, m x k;
    backward: the output gradient, m x n), each read once and written as FP8 with its FP8
    transpose for the other GEMM (`fp8.cast_bytes_per_value`, 4: 2 read + 1 + 1 written;
    Transformer Engine's fused cast-transpose kernels, Micikevicius et al. 2022, "FP8 Formats
    for Deep Learning", §4; weights are cast once per step and cached across micro-batches).
    Returned in bytes, for the caller to divide by the bandwidth. For fp4, the NVFP4 cast
    (`nvfp4.CAST_BYTES_PER_VALUE`: an amax pass, then both 4-bit copies with their scales)."""
    m, n, k = op.shape
    values = m * (n if backward else k) * op.count
    per_value = NVFP4_CAST_BYTES_PER_VALUE if precision == "fp4" else \
        profile.fp8_cast_bytes_per_value
    return values * per_value


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
