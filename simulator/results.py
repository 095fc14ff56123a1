"""StepPrediction: what `predict` returns, with named time components summed in one place."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


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

    @property
    def peak_bytes(self) -> float:
        return self.weights_bytes + self.gradients_bytes + self.optimizer_bytes \
            + self.activations_bytes

    @property
    def fits(self) -> bool:
        return self.peak_bytes <= self.capacity_bytes


@dataclass(frozen=True, kw_only=True)
class RunPrediction:
    """The whole run, when the job sets training.tokens."""

    tokens: float
    steps: int
    time_s: float
    gpu_hours: float


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

    @property
    def step_time_s(self) -> float:
        return self.breakdown.total_s

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
            },
            "breakdown": self.breakdown.as_dict(),
            "sources": self.sources,
        }
        if self.dropped_token_fraction:
            out["dropped_token_fraction"] = self.dropped_token_fraction
        if self.profile_flags:
            out["profile_flags"] = list(self.profile_flags)
        if self.run is not None:
            out["run"] = asdict(self.run)
        return out
