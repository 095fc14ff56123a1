"""The power model: energy of a step and of a run as power × time summed over phases.

Per GPU, each phase of the step (the named components of `TimeBreakdown`) runs at its own
power between the GPU's idle draw and its TDP:

- compute phases: linear in the achieved FLOP/s share of peak u (Fan, Weber and Barroso 2007,
  "Power Provisioning for a Warehouse-sized Computer", ISCA: P(u) = P_idle + (P_max - P_idle)·u),
  with u measured against the attainable GEMM efficiency, where a GPU is at its power limit:
  P = idle + (TDP - idle)·min(1, u / u_max);
- memory-bound phases (the optimizer update) and waiting phases (exposed communication,
  pipeline bubble, straggler) at fixed shares of the dynamic range;
- checkpoint writes and restarts at idle.

Hosts (CPUs, memory, NVSwitch, fans) and the fabric draw a constant power per node; the
facility multiplies IT energy by its PUE. Constants and sources: profiles/economics.yaml.
Pure functions.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # results.py imports this module for RunPrediction
    from parasim.simulator.results import TimeBreakdown

# Which power each time component of a step runs at.
PHASE_OF = {"compute_s": "compute", "optimizer_s": "memory"}  # everything else: "waiting"


@dataclass(frozen=True, kw_only=True)
class PowerModel:
    """Shares of a GPU's dynamic range (TDP - idle) drawn in each kind of phase."""

    compute_saturation: float  # FLOP/s share of peak at which a GPU draws its TDP (u_max)
    memory_dynamic_fraction: float  # memory-bound phases
    waiting_dynamic_fraction: float  # exposed communication, bubble, straggler
    idle_fraction_of_tdp: float  # idle draw of a GPU whose catalog entry has none

    def __post_init__(self) -> None:
        assert 0 < self.compute_saturation <= 1, self
        for f in fields(self):
            assert 0 <= getattr(self, f.name) <= 1, (f.name, self)


@dataclass(frozen=True, kw_only=True)
class GpuPower:
    """One GPU's draw in each kind of phase."""

    compute_w: float  # compute phases, at the step's achieved FLOP/s share
    memory_w: float  # memory-bound phases
    waiting_w: float  # waiting on communication or on the pipeline
    idle_w: float  # checkpoint writes, restarts, spare nodes

    def of_phase(self, phase: str) -> float:
        return {"compute": self.compute_w, "memory": self.memory_w,
                "waiting": self.waiting_w, "idle": self.idle_w}[phase]


def gpu_power(idle_w: float, tdp_w: float, utilization: float, model: PowerModel) -> GpuPower:
    """The phase powers of a GPU of `tdp_w` (its power limit) and `idle_w`, whose compute
    phases reach `utilization` of its peak FLOP/s."""
    assert 0 <= idle_w <= tdp_w, (idle_w, tdp_w)
    dynamic = tdp_w - idle_w
    load = min(1.0, max(0.0, utilization) / model.compute_saturation)
    return GpuPower(compute_w=idle_w + dynamic * load,
                    memory_w=idle_w + dynamic * model.memory_dynamic_fraction,
                    waiting_w=idle_w + dynamic * model.waiting_dynamic_fraction,
                    idle_w=idle_w)


def compute_utilization(hardware_flop: float, peak_flop_per_s: float,
                        breakdown: TimeBreakdown) -> float:
    """The FLOP/s share of peak during the compute phases: the step's FLOPs (with recompute)
    over the whole cluster's peak during the compute time."""
    if breakdown.compute_s <= 0:
        return 0.0
    return hardware_flop / (peak_flop_per_s * breakdown.compute_s)


@dataclass(frozen=True, kw_only=True)
class StepEnergy:
    """IT energy of one step of the whole job, by component; `total_j` is their sum."""

    gpu_compute_j: float  # GPUs in compute phases
    gpu_memory_j: float  # GPUs in memory-bound phases
    gpu_waiting_j: float  # GPUs waiting: exposed communication, bubble, straggler
    host_j: float  # hosts of the job's nodes
    network_j: float  # the fabric's share of the job's nodes

    @property
    def total_j(self) -> float:
        return sum(getattr(self, f.name) for f in fields(self))


def step_energy(breakdown: TimeBreakdown, gpus: list[tuple[int, GpuPower]], host_w: float,
                network_w: float) -> StepEnergy:
    """Σ over GPUs and phases of power × time, plus hosts and fabric × step time. `gpus`:
    (how many, phase powers) per kind of GPU; host_w and network_w: all nodes together."""
    phase_s = {"compute": 0.0, "memory": 0.0, "waiting": 0.0}
    for f in fields(breakdown):
        phase_s[PHASE_OF.get(f.name, "waiting")] += getattr(breakdown, f.name)
    per_phase = {phase: sum(n * power.of_phase(phase) * seconds for n, power in gpus)
                 for phase, seconds in phase_s.items()}
    step_s = breakdown.total_s
    return StepEnergy(gpu_compute_j=per_phase["compute"], gpu_memory_j=per_phase["memory"],
                      gpu_waiting_j=per_phase["waiting"], host_j=host_w * step_s,
                      network_j=network_w * step_s)


@dataclass(frozen=True, kw_only=True)
class RunEnergy:
    """Facility energy of a whole run, by component; `total_j` is their sum."""

    gpu_compute_j: float  # compute phases of every step run, lost ones included
    gpu_memory_j: float  # memory-bound phases
    gpu_waiting_j: float  # waiting phases
    gpu_idle_j: float  # GPUs idle: checkpoint writes, restarts, spare nodes
    host_j: float  # hosts, over the wall time (spares included)
    network_j: float  # fabric, over the wall time
    cooling_j: float  # facility overhead: (PUE - 1) × the IT energy above

    @property
    def total_j(self) -> float:
        return sum(getattr(self, f.name) for f in fields(self))

    @property
    def it_j(self) -> float:
        return self.total_j - self.cooling_j


def run_energy(step: StepEnergy, training_s: float, step_s: float,
               idle: list[tuple[float, float]], wall_s: float, host_w: float, network_w: float,
               pue: float) -> RunEnergy:
    """The step's GPU energy scaled to `training_s` of stepping (useful and lost work); idle
    GPUs as (watts, seconds) pairs (the job's during checkpoints and restarts, spares' all
    along); hosts and fabric (`host_w`, `network_w`: all nodes, spares included) over the
    whole `wall_s`; then the PUE."""
    assert pue >= 1, pue
    steps = training_s / step_s
    it = dict(gpu_compute_j=step.gpu_compute_j * steps, gpu_memory_j=step.gpu_memory_j * steps,
              gpu_waiting_j=step.gpu_waiting_j * steps,
              gpu_idle_j=sum(watts * seconds for watts, seconds in idle),
              host_j=host_w * wall_s, network_j=network_w * wall_s)
    return RunEnergy(**it, cooling_j=(pue - 1.0) * sum(it.values()))
