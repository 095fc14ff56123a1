"""The analytic cost profile: efficiency constants of the roofline time model.

Read from `profiles/analytic.yaml`, where each constant cites the public measurement it comes
from; a measured profile (issue 4) overrides op times, a fitted profile (`parasim calibrate`,
`simulator.calibration`) replaces the constants with values fitted to measured runs. Both files
have the layout of analytic.yaml (`profile_from_mapping` / `profile_mapping`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property, lru_cache
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

    shape_exponent: float = 0.0  # efficiency x (min(width, reference) / reference)^this
    reference_width: float = 128.0  # GEMM: the smallest of m, n, k; attention: the head dim

    def efficiency(self, flop: float, width: float | None = None) -> float:
        """max / (1 + half / flop), times the shape factor: a GEMM whose smallest dimension
        (or an attention whose head dimension) is below `reference_width` fills fewer
        tensor-core tiles per byte it loads (NVIDIA, "Matrix Multiplication Background
        User's Guide", §2.2 arithmetic intensity and §4 tile and wave quantization;
        FlashAttention-2, Dao 2023, Fig. 4-7: head dimension 64 runs 10-20% below 128)."""
        size = self.max_efficiency / (1.0 + self.half_efficiency_flop / max(flop, 1.0))
        if width is None or not self.shape_exponent:
            return size
        return size * (min(width, self.reference_width) / self.reference_width) \
            ** self.shape_exponent


@dataclass(frozen=True)
class Generation:
    """GPUs whose kernels share fitted constants (an A100, a Hopper, a Blackwell class)."""

    name: str
    gpus: frozenset[str]  # catalog names
    overrides: tuple = ()  # analytic.yaml sections and keys it sets, frozen (`_frozen`)


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
    fp8_cast_bytes_per_value: float = 4.0  # FP8 GEMM input cast + transpose traffic
    band: ResidualBand = NO_BAND  # calibration residuals: the prediction interval
    # Per GPU generation: its GPUs and the constants it sets otherwise than the top level
    # (`for_gpu`); a GPU of no generation uses the constants above.
    generations: tuple[Generation, ...] = ()

    def for_gpu(self, gpu: str) -> AnalyticProfile:
        """The constants for `gpu`: these, with its generation's overrides."""
        if gpu not in self._by_gpu:
            generation = next((g for g in self.generations if gpu in g.gpus), None)
            self._by_gpu[gpu] = self if generation is None else _resolved(self, generation)
        return self._by_gpu[gpu]

    @cached_property
    def _by_gpu(self) -> dict[str, AnalyticProfile]:
        """`for_gpu`'s answers (every op of every prediction asks; hashing the whole profile
        for `_resolved`'s cache cost more than the op)."""
        return {}

    def generation(self, name: str) -> Generation:
        return next(g for g in self.generations if g.name == name)

    def with_generation(self, name: str, constants: AnalyticProfile) -> AnalyticProfile:
        """This profile with generation `name` set to `constants` (stored as the keys in which
        they differ from the top level)."""
        assert any(g.name == name for g in self.generations), name
        overrides = _frozen(_difference(_flat_mapping(constants), _flat_mapping(self)))
        return replace(self, generations=tuple(
            replace(g, overrides=overrides) if g.name == name else g for g in self.generations))

    def overlapped_s(self, compute_s: float, comm_s: float) -> float:
        """Compute with communication running beside it: the longer of the two, plus the
        slowdown the shared GPU costs while both run."""
        return max(compute_s, comm_s) + self.overlap_slowdown * min(compute_s, comm_s)

    def measured_scale(self, kind: str) -> float:
        """Factor on a measured op time of this kind (`gemm`, `attention`, `memory`)."""
        return self.measured_memory_scale if kind == "memory" else self.measured_compute_scale

    def usable_memory_bytes(self, capacity_bytes: float) -> float:
        return capacity_bytes * (1 - self.reserve_fraction) - self.reserve_fixed_bytes


PUBLISHED_FIT = "fitted/published/profile.yaml"


@lru_cache(maxsize=1)
def analytic_profile() -> AnalyticProfile:
    """The uncalibrated roofline constants of profiles/analytic.yaml (`--profile analytic`)."""
    with profiles.path("analytic.yaml").open("r", encoding="utf-8") as f:
        return profile_from_mapping(load_data(f))


@lru_cache(maxsize=1)
def default_profile() -> AnalyticProfile:
    """What estimate and plan use unless given a profile: the constants fitted per GPU
    generation on published measured runs, with their out-of-source intervals
    (profiles/fitted/published, written by `parasim validate --suite published`)."""
    path = profiles.path(PUBLISHED_FIT)
    if not path.is_file():
        return analytic_profile()
    with path.open("r", encoding="utf-8") as f:
        raw = load_data(f)
    return profile_from_mapping({k: v for k, v in raw.items() if k != "fit"})


def profile_from_mapping(raw: dict[str, Any]) -> AnalyticProfile:
    """An AnalyticProfile from analytic.yaml's layout (SI units except `fixed_GiB`); the
    `overhead`, `measured`, `prediction_interval` and `generations` sections are optional (0,
    1, no band, none). Each generation lists its GPUs and overrides any key of the other
    sections; what it does not override is the top level's."""
    generations = tuple(
        Generation(name, frozenset(entry["gpus"]),
                   _frozen({k: v for k, v in entry.items() if k != "gpus"}))
        for name, entry in (raw.get("generations") or {}).items())
    return replace(_flat_profile(raw), generations=generations)


@lru_cache(maxsize=256)
def _resolved(profile: AnalyticProfile, generation: Generation) -> AnalyticProfile:
    """The top-level constants with the generation's overrides (cached: every prediction
    resolves its GPUs' constants)."""
    raw = _flat_mapping(profile)
    for section, values in _thawed(generation.overrides).items():
        raw[section] = {**raw.get(section, {}), **values}
    return _flat_profile(raw)


def _frozen(mapping: dict[str, dict[str, Any]]) -> tuple:
    return tuple(sorted((section, tuple(sorted(values.items())))
                        for section, values in mapping.items()))


def _thawed(frozen: tuple) -> dict[str, dict[str, Any]]:
    return {section: dict(values) for section, values in frozen}


def _flat_profile(raw: dict[str, Any]) -> AnalyticProfile:
    """The constants of one mapping in analytic.yaml's layout, its generations left out."""
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
        fp8_cast_bytes_per_value=raw.get("fp8", {}).get("cast_bytes_per_value", 4.0),
        band=ResidualBand(**band) if band else NO_BAND,
    )


def profile_mapping(profile: AnalyticProfile) -> dict[str, Any]:
    """`profile_from_mapping`'s inverse: analytic.yaml's layout; each generation holds the
    keys in which it differs from the top level."""
    out = _flat_mapping(profile)
    if profile.generations:
        out["generations"] = {g.name: {"gpus": sorted(g.gpus), **_thawed(g.overrides)}
                              for g in profile.generations}
    return out


def _difference(mapping: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """The sections and keys of `mapping` whose values differ from `base`'s."""
    out = {}
    for section, values in mapping.items():
        changed = {k: v for k, v in values.items() if base.get(section, {}).get(k) != v}
        if changed:
            out[section] = changed
    return out


def _flat_mapping(profile: AnalyticProfile) -> dict[str, Any]:
    def kernel(k: KernelEfficiency) -> dict[str, float]:
        return {"max_efficiency": k.max_efficiency,
                "half_efficiency_flop": k.half_efficiency_flop,
                "backward_factor": k.backward_factor, "shape_exponent": k.shape_exponent,
                "reference_width": k.reference_width}
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
        "fp8": {"cast_bytes_per_value": profile.fp8_cast_bytes_per_value},
        "prediction_interval": {"log_low": b.log_low, "log_high": b.log_high,
                                "runs": b.runs, "calibrated": b.calibrated,
                                "source": b.source},
    }
