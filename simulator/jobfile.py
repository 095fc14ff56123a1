"""Reading a job file (YAML or JSON) with `--set key=value` overrides into a `Job`.

The file's contract is DESIGN.md's "job file". Catalog names expand to mappings when an
override reaches inside them (`--set model.num_layers=4` on `model: llama3-8b`), and a mapping
may start from a catalog entry with `base:` (a nested link field overrides that one field). What
a cluster leaves out comes from the catalog: the NVLink rate from its GPU, the GPUs per node,
latencies and NICs from the GPU's usual node (`_node_group`). Every number passes
`checks.require_number` (finite, in range) where it is read.
"""

from __future__ import annotations

import copy
import re
from dataclasses import MISSING, asdict, fields, replace
from pathlib import Path
from typing import Any

from parasim.simulator import catalog
from parasim.simulator.checks import require_count, require_number
from parasim.simulator.errors import SpecError
from parasim.simulator.facility import HOUR_S, KWH_J, FacilitySpec, default_facility
from parasim.simulator.hardware import ClusterSpec, DeviceSpec, LinkSpec, NodeGroup
from parasim.simulator.hf_config import load_hf_config
from parasim.simulator.job import Job, resolve_layout
from parasim.simulator.layout import Layout
from parasim.simulator.model import ModelSpec
from parasim.simulator.training import TrainingSpec
from parasim.simulator.yamlfile import parse_text

TOP_LEVEL = ("model", "cluster", "training", "parallel")
NODE_FIELDS = ("base", "gpu", "num_nodes", "gpus_per_node", "intra_node", "inter_node",
               "nvlink_domain_gpus", "host_memory_GiB", "cpu_adam_params_per_s")
CLUSTER_FIELDS = NODE_FIELDS + ("node_groups", "topology", "oversubscription", "switch_radix",
                                "graph", "price_per_gpu_hour", "power_watts",
                                "straggler_slowdown", "planes")
# Facility fields of `cluster:` (simulator/facility.py): job-file name -> (spec field, to SI).
FACILITY_FIELDS = {
    "pue": ("pue", 1.0),
    "grid_gco2_per_kwh": ("grid_kg_co2_per_j", 1e-3 / KWH_J),
    "pricing": ("pricing", None),
    "reserved_discount": ("reserved_discount", None),
    "reserved_price_per_gpu_hour": ("reserved_price_per_gpu_hour_usd", 1.0),
    "node_mtbf_hours": ("node_mtbf_s", HOUR_S),
    "gpu_mtbf_hours": ("gpu_mtbf_s", HOUR_S),
    "checkpoint_write_GBps_per_node": ("checkpoint_write_bytes_per_s_per_node", 1e9),
    "restart_minutes": ("restart_s", 60.0),
    "spare_nodes": ("spare_nodes", None),
    "repair_hours": ("repair_s", HOUR_S),
    "host_power_watts_per_gpu": ("host_power_w_per_gpu", 1.0),
    "network_power_watts_per_nic": ("network_power_w_per_nic", 1.0),
}
ZERO_ALLOWED = ("grid_gco2_per_kwh", "restart_minutes", "host_power_watts_per_gpu",
                "network_power_watts_per_nic")  # may be 0; every other number must be > 0
CLUSTER_FIELDS += tuple(FACILITY_FIELDS)
CATALOG_ONLY = ("description", "sources", "aliases")  # documentation keys of presets


def read_text(path: Path, field: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise SpecError(field, str(path), f"cannot read: {reason}", "a readable file") from None


def load_job(path: str | Path, overrides: list[str] = ()) -> Job:
    """Read, override, build and check one job file."""
    return job_from_mapping(load_raw(path, overrides), base_dir=Path(path).parent,
                            source=str(path))


def load_raw(path: str | Path, overrides: list[str] = ()) -> dict[str, Any]:
    """The job file's mapping with the overrides applied, not yet built into specs."""
    path = Path(path)
    raw = parse_text(read_text(path, "job"), str(path))
    if not isinstance(raw, dict):
        raise SpecError("job", str(path), "must be a mapping with model, cluster, training",
                        ", ".join(TOP_LEVEL))
    for item in overrides:
        apply_override(raw, item)
    return raw


def apply_override(raw: dict[str, Any], item: str) -> None:
    """`a.b[0].c=value`: value parsed as YAML; catalog names on the way become `{base: name}`,
    `[i]` picks an element of a list (e.g. `cluster.node_groups[1].num_nodes=16`)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or not _OVERRIDE_KEY.fullmatch(key):
        raise SpecError("--set", item, "must be key=value with a dotted key",
                        "e.g. parallel.tp=4 or cluster.node_groups[1].num_nodes=16")
    path: list[str | int] = []
    for name, index in _OVERRIDE_PART.findall(key):
        path.append(name) if name else path.append(int(index))
    node: Any = raw
    for depth, step in enumerate(path[:-1]):
        node = _descend(node, step, path[depth + 1], _path_text(path[:depth + 1]), item)
    last = path[-1]
    value = parse_text(text, text, f"--set {key}") if text.strip() else None
    if isinstance(last, int):
        _check_index(node, last, key, item)
    elif not isinstance(node, dict):
        raise SpecError("--set", item, f"{_path_text(path[:-1])} is not a mapping",
                        "a path of mapping keys")
    node[last] = value


_OVERRIDE_KEY = re.compile(r"[A-Za-z_]\w*(\[\d+\])*(\.[A-Za-z_]\w*(\[\d+\])*)*")
_OVERRIDE_PART = re.compile(r"([A-Za-z_]\w*)|\[(\d+)\]")


def _path_text(path: list[str | int]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def _check_index(node: Any, index: int, where: str, item: str) -> None:
    if not isinstance(node, list) or index >= len(node):
        size = len(node) if isinstance(node, list) else 0
        raise SpecError("--set", item, f"{where} is not an element of a list",
                        f"indexes 0..{size - 1}" if size else "a path of mapping keys")


def _descend(node: Any, step: str | int, next_step: str | int, where: str, item: str) -> Any:
    """The child at `step`, created (or expanded from a catalog name) when the path needs it."""
    if isinstance(step, int):
        _check_index(node, step, where, item)
        child = node[step]
    elif not isinstance(node, dict):
        raise SpecError("--set", item, f"{where} is not a mapping", "a path of mapping keys")
    else:
        child = node.get(step)
    if isinstance(child, str) and isinstance(next_step, str):
        child = {"base": child}
    elif child is None:
        child = {} if isinstance(next_step, str) else []
    elif isinstance(child, (dict, list)):  # copy on write: YAML anchors may share the node
        child = type(child)(child)
    node[step] = child
    return child


def job_from_mapping(raw: dict[str, Any], *, base_dir: Path, source: str) -> Job:
    unknown = set(raw) - set(TOP_LEVEL)
    if unknown:
        key = min(unknown, key=str)
        raise SpecError(key, raw[key], "unknown job section", ", ".join(TOP_LEVEL))
    for required in ("model", "cluster", "training"):
        if raw.get(required) is None:
            raise SpecError(required, None, "missing from the job", f"a {required} section")
    model = model_spec(raw["model"], base_dir)
    training = training_spec(raw["training"])
    parallel = raw.get("parallel")
    layout = parallel_layout(parallel) if parallel is not None else None
    cluster = cluster_spec(raw["cluster"], layout, base_dir)
    if layout is not None:
        layout = resolve_layout(model, cluster, training, layout)
    return Job(model=model, cluster=cluster, training=training, layout=layout, source=source,
               mapping=copy.deepcopy(raw))


# Model ---------------------------------------------------------------------------------------


def model_spec(value: Any, base_dir: Path, field: str = "model") -> ModelSpec:
    """A catalog name, a path to a Hugging Face config.json, or a mapping (optional `base`)."""
    if isinstance(value, str):
        if value.endswith(".json") or "/" in value:
            return load_hf_config(base_dir / value, field=field)
        return catalog.model(value, field)
    if not isinstance(value, dict):
        raise SpecError(field, value, "must be a catalog name, a config.json path or a mapping",
                        ", ".join(catalog.names("models")[:6]) + ", ...")
    value = dict(value)
    base = value.pop("base", None)
    if base is None:
        return catalog.model_from_mapping(value, name=value.get("name", "custom"), field=field)
    spec = model_spec(base, base_dir, f"{field}.base")
    merged = {f.name: getattr(spec, f.name) for f in fields(ModelSpec)}
    if spec.mla is not None:
        merged["mla"] = asdict(spec.mla)
    if isinstance(value.get("mla"), dict) and spec.mla is not None:
        value["mla"] = {**merged["mla"], **value["mla"]}
    return catalog.model_from_mapping({**merged, **value}, name=spec.name, field=field)


# Cluster -------------------------------------------------------------------------------------


def cluster_spec(value: Any, layout: Layout | None, base_dir: Path = Path(".")) -> ClusterSpec:
    """A preset name or a mapping: one node group inline, or `node_groups: [...]`."""
    if isinstance(value, str):
        value = {"base": catalog.canonical_name("clusters", value, "cluster")}
    if not isinstance(value, dict):
        raise SpecError("cluster", value, "must be a preset name or a mapping",
                        ", ".join(catalog.names("clusters")))
    unknown = set(value) - set(CLUSTER_FIELDS) - set(CATALOG_ONLY)
    if unknown:
        key = min(unknown, key=str)
        raise SpecError(f"cluster.{key}", value[key], "unknown cluster field",
                        ", ".join(CLUSTER_FIELDS))
    merged = _with_base(value, "cluster")
    if "node_groups" in merged:
        groups_raw = merged["node_groups"]
        if not isinstance(groups_raw, list) or not groups_raw:
            raise SpecError("cluster.node_groups", groups_raw, "must be a non-empty list",
                            "a list of node-group mappings")
        groups = tuple(_group(g, f"cluster.node_groups[{i}]") for i, g in enumerate(groups_raw))
    else:
        groups = (_node_group(merged, layout, "cluster"),)
    names = [g.get("base") if isinstance(g, dict) else g for g in merged.get("node_groups", [])]
    return ClusterSpec(
        name=str(value.get("base") or " + ".join(str(n or "custom") for n in names) or "custom"),
        node_groups=groups,
        topology=merged.get("topology", "fat-tree"),
        oversubscription=_ratios(merged.get("oversubscription", 1.0)),
        switch_radix=merged.get("switch_radix", 64),
        graph_file=_graph_file(merged.get("graph"), base_dir),
        straggler_slowdown=merged.get("straggler_slowdown", 1.0),
        price_per_gpu_hour_usd=_optional_number("cluster.price_per_gpu_hour",
                                                merged.get("price_per_gpu_hour")),
        power_watts_per_gpu=_optional_number("cluster.power_watts", merged.get("power_watts")),
        facility=facility_spec(merged),
        planes=merged.get("planes", 1),
    )


def _group(value: Any, field: str) -> NodeGroup:
    """One entry of `node_groups`: a preset name or a mapping (optional `base:`)."""
    if isinstance(value, dict):
        unknown = set(value) - set(GROUP_FIELDS)
        if unknown:
            key = min(unknown, key=str)
            raise SpecError(f"{field}.{key}", value.get(key), "unknown node-group field",
                            ", ".join(NODE_FIELDS))
    return _node_group(_with_base(value, field), None, field)


def _graph_file(value: Any, base_dir: Path) -> str | None:
    """`cluster.graph`: a node-link JSON file, relative to the job file."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise SpecError("cluster.graph", value, "must be the path of a node-link JSON file",
                        "a path relative to the job file, e.g. fabric.json")
    return str(base_dir / value)


def facility_spec(merged: dict[str, Any]) -> FacilitySpec:
    """The catalog defaults with the job's facility fields, converted to SI; numbers are
    checked here so that a message shows the value as written."""
    changes = {}
    for key, (spec_field, scale) in FACILITY_FIELDS.items():
        value = merged.get(key)
        if value is None:
            continue
        if scale not in (None, 1.0):  # converted: checked as written; else FacilitySpec's
            value = _number(f"cluster.{key}", value, allow_zero=key in ZERO_ALLOWED) * scale
        changes[spec_field] = value
    return replace(default_facility(), **changes)


def _ratios(value: Any) -> tuple[float, ...]:
    """Oversubscription: one ratio (leaf tier) or a list per tier (leaf, spine)."""
    return tuple(value) if isinstance(value, list) else (value,)  # ClusterSpec checks them


def _with_base(value: Any, field: str) -> dict[str, Any]:
    """A cluster or node-group mapping on top of its preset (`base:`): the mapping's fields
    over the preset's, and inside `intra_node` / `inter_node` (or a `gpu` mapping over a
    mapping) field by field, so that `inter_node: {bandwidth_Gbps: 200}` keeps the preset's
    NICs and latency."""
    if isinstance(value, str):
        value = {"base": value}
    if not isinstance(value, dict):
        raise SpecError(field, value, "must be a preset name or a mapping",
                        "a preset name or a mapping of node-group fields")
    base = value.get("base")
    if base is None:
        return dict(value)
    preset = catalog.entry("clusters", base, f"{field}.base")
    return _merged(preset, {k: v for k, v in value.items() if k != "base"})


def _merged(under: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over`'s fields on `under`'s; the link mappings (and a gpu mapping on a gpu mapping)
    merged one level down."""
    out = dict(under)
    for key, value in over.items():
        if key in LINKS + ("gpu",) and isinstance(value, dict) and isinstance(out.get(key), dict):
            value = {**out[key], **value}
        out[key] = value
    return out


LINKS = ("intra_node", "inter_node")
GROUP_FIELDS = NODE_FIELDS + ("description", "sources", "aliases", "topology",
                              "oversubscription")  # a node group's own and its preset's
_SEE_PRESET = "or start from a preset, e.g. cluster: dgx-h100 (parasim list clusters)"


def _node_group(data: dict[str, Any], layout: Layout | None, field: str) -> NodeGroup:
    """One node group; what it leaves out comes from its GPU (NVLink rate) and the GPU's usual
    node in profiles/clusters.yaml (GPUs per node, link latencies, NICs)."""
    gpu, usual = _gpu(data.get("gpu"), field)
    defaults = {"intra_node": {"bandwidth_GBps": gpu.nvlink_bytes_per_s / 1e9}}
    if usual is not None:
        defaults = _merged({"gpus_per_node": usual["gpus_per_node"],
                            "intra_node": {"latency_us": usual["intra_node"]["latency_us"]},
                            "inter_node": usual["inter_node"],
                            "host_memory_GiB": usual.get("host_memory_GiB")}, defaults)
        if "nvlink_domain_gpus" in usual:  # a rack-scale GPU's usual NVLink domain
            defaults["nvlink_domain_gpus"] = usual["nvlink_domain_gpus"]
    data = _merged(defaults, data)
    _require_node_fields(data, gpu, field)
    gpus_per_node = data["gpus_per_node"]
    require_count(f"{field}.gpus_per_node", gpus_per_node)
    intra = _link(data["intra_node"], f"{field}.intra_node", "bandwidth_GBps", 1e9)
    inter = _link(data["inter_node"], f"{field}.inter_node", "bandwidth_Gbps", 1e9 / 8)
    nics = data["inter_node"].get("nics_per_node", 1)
    require_count(f"{field}.inter_node.nics_per_node", nics)
    num_nodes = data.get("num_nodes")
    if num_nodes is None:
        num_nodes = _nodes_for_layout(layout, gpus_per_node, field)
    require_count(f"{field}.num_nodes", num_nodes)
    return NodeGroup(gpu=gpu, num_nodes=num_nodes, gpus_per_node=gpus_per_node,
                     intra_node=intra, inter_node=inter, nics_per_node=nics,
                     nvlink_domain_gpus=data.get("nvlink_domain_gpus"),
                     **_host_fields(data, field))


def _host_fields(data: dict[str, Any], field: str) -> dict[str, float]:
    """The node's host side for offloading: its CPU memory (`host_memory_GiB`, at most 1 PiB)
    and its CPU Adam rate (`cpu_adam_params_per_s`), each where set."""
    out = {}
    if data.get("host_memory_GiB") is not None:
        out["host_memory_bytes"] = _number(f"{field}.host_memory_GiB", data["host_memory_GiB"],
                                           maximum=2**20) * 2**30
    if data.get("cpu_adam_params_per_s") is not None:
        out["cpu_adam_params_per_s"] = _number(f"{field}.cpu_adam_params_per_s",
                                               data["cpu_adam_params_per_s"], maximum=1e15)
    return out


def _require_node_fields(data: dict[str, Any], gpu: DeviceSpec, field: str) -> None:
    """A SpecError naming every node field that neither the job nor a default sets."""
    missing = [] if data.get("gpus_per_node") is not None else [f"{field}.gpus_per_node"]
    for link, keys in (("intra_node", ("bandwidth_GBps", "latency_us")),
                       ("inter_node", ("bandwidth_Gbps", "latency_us"))):
        if not isinstance(data.get(link), dict):
            if data.get(link) is not None:
                raise SpecError(f"{field}.{link}", data[link], "must be a mapping",
                                f"e.g. {link}: {LINK_EXAMPLES[link]}")
            missing.append(f"{field}.{link}")
            continue
        missing += [f"{field}.{link}.{k}" for k in keys if data[link].get(k) is None]
    if missing:
        raise SpecError(missing[0], None, f"missing: gpu {gpu.name} comes in no cluster preset "
                        "to take it from", "set " + ", ".join(missing) + " (e.g. gpus_per_node: "
                        f"8, intra_node: {LINK_EXAMPLES['intra_node']}, inter_node: "
                        f"{LINK_EXAMPLES['inter_node']}), {_SEE_PRESET}")


LINK_EXAMPLES = {"intra_node": "{bandwidth_GBps: 450, latency_us: 3.5}",
                 "inter_node": "{bandwidth_Gbps: 400, nics_per_node: 8, latency_us: 8}"}


def _gpu(value: Any, field: str) -> tuple[DeviceSpec, dict[str, Any] | None]:
    """The node group's GPU (a catalog name, or a mapping of device fields with an optional
    `base:` GPU) and the cluster preset that is its usual node (None: the catalog has none)."""
    if value is None:
        raise SpecError(f"{field}.gpu", None, "missing", "a GPU name, e.g. h100-sxm "
                        f"(parasim list gpus), {_SEE_PRESET}")
    if isinstance(value, str):
        return catalog.gpu(value, f"{field}.gpu"), catalog.usual_node(value, f"{field}.gpu")
    if not isinstance(value, dict):
        raise SpecError(f"{field}.gpu", value, "must be a GPU name or mapping",
                        ", ".join(catalog.names("gpus")))
    base = value.get("base")
    fields_ = {**(catalog.entry("gpus", base, f"{field}.gpu.base") if base is not None else {}),
               **{k: v for k, v in value.items() if k != "base"}}
    name = value.get("name", base or "custom")
    if not isinstance(name, str) or not name:
        raise SpecError(f"{field}.gpu.name", name, "must be a non-empty text", "a label")
    gpu = catalog.device_from_mapping(fields_, name=name, field=f"{field}.gpu")
    return gpu, catalog.usual_node(base, f"{field}.gpu.base") if base is not None else None


def _nodes_for_layout(layout: Layout | None, gpus_per_node: Any, field: str) -> int:
    """A preset without num_nodes gets as many nodes as a layout with every degree set needs."""
    if layout is None or layout.dp is None or not isinstance(gpus_per_node, int):
        raise SpecError(f"{field}.num_nodes", None, "missing",
                        "set cluster.num_nodes, or every degree of parallel (tp, pp, dp, cp)")
    world = layout.world_size
    if world % gpus_per_node:
        raise SpecError(f"{field}.num_nodes", None,
                        f"missing, and tp·pp·dp·cp={world} does not fill whole "
                        f"{gpus_per_node}-GPU nodes", "set cluster.num_nodes")
    return world // gpus_per_node


def _link(data: dict[str, Any], field: str, bandwidth_key: str, scale: float) -> LinkSpec:
    """A link mapping in the file's units (its fields present: `_require_node_fields`)."""
    allowed = {bandwidth_key, "latency_us", "nics_per_node"}
    unknown = set(data) - allowed
    if unknown:
        key = min(unknown, key=str)
        raise SpecError(f"{field}.{key}", data.get(key), "unknown link field",
                        ", ".join(sorted(allowed)))
    bandwidth = _number(f"{field}.{bandwidth_key}", data[bandwidth_key], maximum=1e9)
    latency = _number(f"{field}.latency_us", data["latency_us"], allow_zero=True, maximum=1e9)
    return LinkSpec(bytes_per_s=bandwidth * scale, latency_s=latency * 1e-6)


def _number(field: str, value: Any, allow_zero: bool = False,
            maximum: float | None = None) -> float:
    """A finite number > 0 (>= 0 with `allow_zero`), at most `maximum`."""
    return require_number(field, value, 0, maximum, above=not allow_zero)


def _optional_number(field: str, value: Any) -> float | None:
    return None if value is None else _number(field, value)


# Training and layout -------------------------------------------------------------------------


def training_spec(value: Any) -> TrainingSpec:
    """The `training:` section."""
    return _dataclass_from(TrainingSpec, value, "training")


def parallel_layout(value: Any) -> Layout:
    """The `parallel:` section (dp left None when not set: the cluster decides it)."""
    if isinstance(value, dict):
        value = {**value, **{key: tuple(value[key]) for key in ("stages", "full_recompute_layers")
                             if isinstance(value.get(key), list)}}
    return _dataclass_from(Layout, value, "parallel")


def _dataclass_from(cls: type, value: Any, field: str):
    names = [f.name for f in fields(cls)]
    if not isinstance(value, dict):
        raise SpecError(field, value, "must be a mapping", ", ".join(names))
    unknown = set(value) - set(names)
    if unknown:
        key = min(unknown, key=str)
        raise SpecError(f"{field}.{key}", value[key], f"unknown {field} field", ", ".join(names))
    for f in fields(cls):
        if f.default is MISSING and f.name not in value:
            raise SpecError(f"{field}.{f.name}", None, "missing", f"set {field}.{f.name}")
    return cls(**value)
