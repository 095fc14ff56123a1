"""The catalogs in `profiles/`: GPUs, cluster presets and models, by stable lower-case name.

Files keep human units in their keys (`peak_bf16_tflops`, `memory_GiB`, `bandwidth_GBps`); this
module converts to the SI fields of the specs. Every entry carries its sources in the file.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from parasim import profiles
from parasim.simulator.yamlfile import load_data
from parasim.simulator.checks import require_number
from parasim.simulator.errors import SpecError, suggest
from parasim.simulator.hardware import DeviceSpec
from parasim.simulator.model import MLA_FIELDS, MODEL_FIELDS, MLASpec, ModelSpec

GiB = 2**30
KINDS = {"gpus": "gpu", "clusters": "cluster", "models": "model"}
# value when left out
OPTIONAL_GPU_FIELDS = {"peak_fp8_tflops": 0.0, "idle_watts": None, "peak_fp4_tflops": 0.0,
                       "pcie_GBps": None}
_NOT_SPEC_FIELDS = {"aliases", "description", "source", "sources", "published_params",
                    "published_active_params", "published_params_source", "price_date"}


@lru_cache(maxsize=None)
def entries(kind: str) -> dict[str, dict[str, Any]]:
    """All entries of one catalog (`gpus`, `clusters`, `models`), by canonical name."""
    assert kind in KINDS, kind
    with profiles.path(f"{kind}.yaml").open("r", encoding="utf-8") as f:
        data = load_data(f)
    assert isinstance(data, dict), f"profiles/{kind}.yaml must be a mapping"
    return data


@lru_cache(maxsize=None)
def _aliases(kind: str) -> dict[str, str]:
    table = {}
    for name, entry in entries(kind).items():
        table[name] = name
        for alias in entry.get("aliases", ()):
            table[alias.lower()] = name
    return table


def canonical_name(kind: str, name: str, field: str) -> str:
    """The catalog name for `name` or one of its aliases; unknown names suggest close ones."""
    table = _aliases(kind)
    if not isinstance(name, str):
        raise SpecError(field, name, f"must be a {KINDS[kind]} name (text)",
                        suggest("", entries(kind)))
    key = name.strip().lower()
    if key not in table:
        raise SpecError(field, name, f"unknown {KINDS[kind]} name", suggest(str(name), table))
    return table[key]


def entry(kind: str, name: str, field: str) -> dict[str, Any]:
    return entries(kind)[canonical_name(kind, name, field)]


@lru_cache(maxsize=None)
def gpu(name: str, field: str = "cluster.gpu") -> DeviceSpec:
    """A GPU from profiles/gpus.yaml."""
    key = canonical_name("gpus", name, field)
    return device_from_mapping(entries("gpus")[key], name=key, field=field)


def usual_node(name: str, field: str = "cluster.gpu") -> dict[str, Any] | None:
    """The cluster preset a GPU usually comes in (its `usual_node` in profiles/gpus.yaml),
    whose node fields a cluster of that GPU takes by default; None where the catalog has none."""
    preset = entries("gpus")[canonical_name("gpus", name, field)].get("usual_node")
    return None if preset is None else entries("clusters")[preset]


def device_from_mapping(data: dict[str, Any], *, name: str, field: str) -> DeviceSpec:
    """A DeviceSpec from a mapping in catalog units (a catalog entry or a job's gpu mapping)."""
    units = {
        "peak_bf16_tflops": ("peak_bf16_flop_per_s", 1e12),
        "peak_fp16_tflops": ("peak_fp16_flop_per_s", 1e12),
        "peak_fp8_tflops": ("peak_fp8_flop_per_s", 1e12),
        "peak_fp32_tflops": ("peak_fp32_flop_per_s", 1e12),
        "memory_GiB": ("memory_bytes", GiB),
        "memory_bandwidth_TBps": ("memory_bytes_per_s", 1e12),
        "nvlink_GBps": ("nvlink_bytes_per_s", 1e9),
        "tdp_watts": ("tdp_watts", 1),
        "price_per_hour_usd": ("price_per_hour_usd", 1),
        "idle_watts": ("idle_watts", 1),
        "peak_fp4_tflops": ("peak_fp4_flop_per_s", 1e12),
        "pcie_GBps": ("pcie_bytes_per_s", 1e9),
    }
    unknown = set(data) - set(units) - _NOT_SPEC_FIELDS - {"name", "usual_node"}
    if unknown:
        key = min(unknown, key=str)
        raise SpecError(f"{field}.{key}", data[key], "unknown gpu field", ", ".join(units))
    kwargs = {}
    for key, (spec_field, scale) in units.items():
        if key not in data:
            if key in OPTIONAL_GPU_FIELDS:
                kwargs[spec_field] = OPTIONAL_GPU_FIELDS[key]
                continue
            raise SpecError(f"{field}.{key}", None, "missing", "a number")
        zero = key in ("peak_fp8_tflops", "peak_fp4_tflops", "idle_watts")
        no_units = {"peak_fp8_tflops": "fp8", "peak_fp4_tflops": "fp4"}.get(key)
        value = require_number(f"{field}.{key}", data[key], 0, above=not zero,
                               valid=f"a number >= 0 (0 = no {no_units})" if no_units else None)
        if value * scale > 1e30:  # no device is near; keeps every product of rates finite
            raise SpecError(f"{field}.{key}", data[key], "is too large", f"a number up to "
                            f"{1e30 / scale:g}")
        kwargs[spec_field] = value * scale
    if kwargs["idle_watts"] is not None and kwargs["idle_watts"] > kwargs["tdp_watts"]:
        raise SpecError(f"{field}.idle_watts", data["idle_watts"], "is above the TDP",
                        f"the idle board power, from 0 to tdp_watts ({kwargs['tdp_watts']:g})")
    return DeviceSpec(name=name, **kwargs)


@lru_cache(maxsize=None)
def model(name: str, field: str = "model") -> ModelSpec:
    """A model from profiles/models.yaml."""
    key = canonical_name("models", name, field)
    return model_from_mapping(entries("models")[key], name=key, field=field)


def model_from_mapping(data: dict[str, Any], *, name: str, field: str = "model") -> ModelSpec:
    """A ModelSpec from a mapping of its field names (catalog entry or job file)."""
    kwargs = {k: v for k, v in data.items() if k not in _NOT_SPEC_FIELDS}
    unknown = set(kwargs) - set(MODEL_FIELDS)
    if unknown:
        key = min(unknown, key=str)
        raise SpecError(f"{field}.{key}", kwargs[key], "unknown model field",
                        ", ".join(f for f in MODEL_FIELDS if f != "name"))
    kwargs.setdefault("name", name)
    mla = kwargs.get("mla")
    if mla is not None:
        if not isinstance(mla, dict):
            raise SpecError(f"{field}.mla", mla, "must be a mapping", ", ".join(MLA_FIELDS))
        bad = set(mla) ^ set(MLA_FIELDS)
        if bad:
            key = min(bad, key=str)
            raise SpecError(f"{field}.mla.{key}", mla.get(key), "unknown or missing MLA field",
                            ", ".join(MLA_FIELDS))
        kwargs["mla"] = MLASpec(**mla)
    for required in ("num_layers", "hidden_size", "num_attention_heads", "ffn_hidden_size",
                     "vocab_size"):
        if required not in kwargs:
            raise SpecError(f"{field}.{required}", None, "missing", "a positive integer")
    return ModelSpec(**kwargs)


def names(kind: str) -> list[str]:
    return sorted(entries(kind))
