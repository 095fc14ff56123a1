"""StepPrediction: what `predict` returns, with named time components summed in one place."""

from __future__ import annotations

from dataclasses import dataclass, fields

from parasim.simulator.energy import GpuPower, RunEnergy
from parasim.simulator.reliability import MonteCarlo, RunReliability


@dataclass(frozen=True, kw_only=True)
class TimeBreakdown:
    """Named components of one step on the critical path; `total_s` is their sum."""

    compute_s: float  # forward, backward and recompute of the bottleneck stage, all micro-batches
    tp_comm_s: float  # exposed tensor/sequence-parallel collectives
    cp_comm_s: float  # exposed context-parallel key/value exchange
    ep_comm_s: float  # exposed expert-parallel all-to-all
    pp_comm_s: float  # exposed pipeline sends and receives
    bubble_s: float  # pipeline fill and drain
    dp_comm_s: float  # exposed data-parallel gradient reduction and ZeRO gathers
    optimizer_s: float  # optimizer update
    straggler_s: float = 0.0  # what one slow GPU adds: its pipeline, and every replica, wait
    overhead_s: float = 0.0  # fixed host time per step (a fitted profile's; 0 in analytic.yaml)
    offload_s: float = 0.0  # exposed PCIe copies of offloaded activations (parallel.offload)

    @property
    def total_s(self) -> float:
        return sum(getattr(self, f.name) for f in fields(self))

    def as_dict(self) -> dict[str, float]:
        return {f.name.removesuffix("_s"): getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, kw_only=True)
class RankMemory:
    """Peak memory of one pipeline rank (all its tp/cp/dp peers hold the same)."""

    weights_bytes: float
    gradients_bytes: float
    optimizer_bytes: float
    activations_bytes: float  # stored activations at the schedule's peak + working buffers
    capacity_bytes: float  # usable device memory: capacity minus the stated reserve
    node_host_bytes: float = 0.0  # host memory offloading takes on the rank's node (all its GPUs)
    host_capacity_bytes: float | None = None  # the node's host memory; None: not known

    @property
    def peak_bytes(self) -> float:
        return self.weights_bytes + self.gradients_bytes + self.optimizer_bytes \
            + self.activations_bytes

    @property
    def host_fits(self) -> bool:
        """Offloaded bytes within the node's host memory (nothing offloaded always fits)."""
        return self.node_host_bytes <= 0 or (self.host_capacity_bytes is not None and
                                             self.node_host_bytes <= self.host_capacity_bytes)

    @property
    def fits(self) -> bool:
        return self.peak_bytes <= self.capacity_bytes and self.host_fits


@dataclass(frozen=True, kw_only=True)
class RunPrediction:
    """The whole run, when the job sets training.tokens: days, dollars, energy and carbon
    with checkpoints and failures (simulator/economics.py builds it)."""

    tokens: float  # training.tokens
    steps: int  # optimizer steps: ceil(tokens / tokens per step)
    time_s: float  # steps × step time: the training alone, no checkpoints or failures
    reliability: RunReliability  # checkpoints, failures, restarts: the expected wall time
    energy: RunEnergy  # facility energy by component over the expected wall time
    power: GpuPower  # one GPU's draw in each kind of phase (the first node group's GPU)
    checkpoint_bytes: float  # one checkpoint: weights and optimizer states, all shards
    gpus_paid: int  # GPUs paid for: the job's and its spare nodes'
    on_demand_usd_per_hour: float  # all paid GPUs at on-demand prices
    reserved_usd_per_hour: float  # all paid GPUs at reserved prices
    pricing: str  # the price cost_usd uses: on-demand | reserved
    grid_kg_co2_per_j: float  # carbon intensity of the electricity
    pue: float  # the facility's power usage effectiveness
    monte_carlo: MonteCarlo | None = None  # simulated runs, when asked for

    @property
    def wall_time_s(self) -> float:
        """Expected wall-clock time: training, checkpoints, lost work, restarts."""
        return self.reliability.wall_s

    @property
    def days(self) -> float:
        return self.wall_time_s / 86400

    @property
    def gpu_hours(self) -> float:
        """GPU-hours paid for: every paid GPU over the expected wall time."""
        return self.wall_time_s / 3600 * self.gpus_paid

    @property
    def cost_on_demand_usd(self) -> float:
        return self.wall_time_s / 3600 * self.on_demand_usd_per_hour

    @property
    def cost_reserved_usd(self) -> float:
        return self.wall_time_s / 3600 * self.reserved_usd_per_hour

    @property
    def cost_usd(self) -> float:
        return self.cost_reserved_usd if self.pricing == "reserved" else self.cost_on_demand_usd

    @property
    def energy_j(self) -> float:
        """Facility energy (IT × PUE)."""
        return self.energy.total_j

    @property
    def co2_kg(self) -> float:
        return self.energy_j * self.grid_kg_co2_per_j

    def to_json(self) -> dict:
        """`run` of `estimate --json`: the issue's names first, then the details."""
        r, mwh = self.reliability, 3.6e9
        out = {
            "days": self.days, "gpu_hours": self.gpu_hours, "cost_usd": self.cost_usd,
            "energy_mwh": self.energy_j / mwh, "co2_tonnes": self.co2_kg / 1000,
            "goodput": r.goodput, "checkpoint_interval_s": r.interval_s,
            "tokens": self.tokens, "steps": self.steps, "time_s": self.time_s,
            "wall_time_s": self.wall_time_s, "pricing": self.pricing,
            "cost_on_demand_usd": self.cost_on_demand_usd,
            "cost_reserved_usd": self.cost_reserved_usd,
            "checkpoint_interval_steps": r.interval_steps, "checkpoints": r.checkpoints,
            "checkpoint_bytes": self.checkpoint_bytes, "checkpoint_write_s": r.model.checkpoint_s,
            "restart_s": r.model.restart_s, "system_mtbf_s": r.model.mtbf_s,
            "expected_interruptions": r.interruptions, "lost_hours": r.lost_s / 3600,
            "time_breakdown_s": {"useful": r.useful_s, "checkpoints": r.checkpoints_s,
                                 "rework": r.rework_s, "restarts": r.restarts_s},
            "energy_breakdown_mwh": {f.name.removesuffix("_j"): getattr(self.energy, f.name) / mwh
                                     for f in fields(self.energy)},
            "gpu_power_w": {f.name.removesuffix("_w"): getattr(self.power, f.name)
                            for f in fields(self.power)},
            "pue": self.pue, "grid_gco2_per_kwh": round(self.grid_kg_co2_per_j * 3.6e9, 9),
        }
        if self.monte_carlo is not None:
            mc = self.monte_carlo
            out["monte_carlo"] = {"runs": mc.runs, "seed": mc.seed, **{
                name.removesuffix("_s") + "_days": getattr(mc, name) / 86400
                for name in ("mean_s", "std_err_s", "p10_s", "p50_s", "p90_s")}}
        return out


@dataclass(frozen=True, kw_only=True)
class StepPrediction:
    """One optimizer step of a job under one layout."""

    breakdown: TimeBreakdown
    tokens_per_step: int
    num_gpus: int
    model_flop_per_step: float  # no recompute
    hardware_flop_per_step: float  # with recompute
    peak_flop_per_s: float  # summed over all GPUs, at the training precision
    params_total: int
    params_active: int
    stages: tuple[RankMemory, ...]  # one per pipeline rank
    microbatches: int
    sources: dict[str, float]  # share of the step time measured / interpolated / analytic
    profile_flags: tuple[str, ...] = ()  # what the measured profile could not answer
    dropped_token_fraction: float = 0.0  # MoE: routed slots over expert capacity, dropped
    intervals: tuple = ()  # the simulated pipeline's tasks, when recorded (for --trace)
    run: RunPrediction | None = None
    step_band: tuple[float, float] = (1.0, 1.0)  # interval factors (simulator.uncertainty)
    interval_source: str = ""  # where the interval comes from, in words (its band's source)

    @property
    def step_time_s(self) -> float:
        return self.breakdown.total_s

    @property
    def step_time_s_low(self) -> float:
        """Lower end of the step time's prediction interval (simulator.uncertainty)."""
        return self.step_time_s * self.step_band[0]

    @property
    def step_time_s_high(self) -> float:
        return self.step_time_s * self.step_band[1]

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_per_step / self.step_time_s

    @property
    def tflops_per_gpu(self) -> float:
        return self.model_flop_per_step / self.step_time_s / self.num_gpus / 1e12

    @property
    def mfu(self) -> float:
        return self.model_flop_per_step / (self.step_time_s * self.peak_flop_per_s)

    @property
    def hfu(self) -> float:
        return self.hardware_flop_per_step / (self.step_time_s * self.peak_flop_per_s)

    @property
    def peak_stage(self) -> RankMemory:
        """The pipeline rank with the most memory in use."""
        return max(self.stages, key=lambda m: m.peak_bytes)

    @property
    def fits(self) -> bool:
        return all(stage.fits for stage in self.stages)

    def to_json(self) -> dict:
        """DESIGN.md's `estimate --json` object."""
        peak = self.peak_stage
        out = {
            "step_time_s": self.step_time_s,
            "step_time_s_low": self.step_time_s_low,
            "step_time_s_high": self.step_time_s_high,
            "tokens_per_s": self.tokens_per_s,
            "tflops_per_gpu": self.tflops_per_gpu,
            "mfu": self.mfu,
            "hfu": self.hfu,
            "params_total": self.params_total,
            "params_active": self.params_active,
            "num_gpus": self.num_gpus,
            "microbatches": self.microbatches,
            "fits": self.fits,
            "memory": {
                "peak_bytes": peak.peak_bytes,
                "capacity_bytes": peak.capacity_bytes,
                "weights_bytes": peak.weights_bytes,
                "gradients_bytes": peak.gradients_bytes,
                "optimizer_bytes": peak.optimizer_bytes,
                "activations_bytes": peak.activations_bytes,
                "per_stage_peak_bytes": [m.peak_bytes for m in self.stages],
                "node_host_bytes": max(m.node_host_bytes for m in self.stages),
                "host_capacity_bytes": self.stages[0].host_capacity_bytes,
            },
            "breakdown": self.breakdown.as_dict(),
            "sources": self.sources,
        }
        if self.dropped_token_fraction:
            out["dropped_token_fraction"] = self.dropped_token_fraction
        if self.profile_flags:
            out["profile_flags"] = list(self.profile_flags)
        if self.run is not None:
            out["run"] = self.run.to_json()
        return out
