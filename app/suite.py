"""Validation suites: small jobs with fixed layouts, and the local cluster they run on.

A suite file (`profiles/suites/local.yaml` is `--suite local`) lists jobs without a cluster:
`parasim validate` runs them on this machine, so their cluster is this machine as its
measured profile describes it (`local_cluster`): one node of `ranks` devices named `cpu`
(the profile's `gpu`, so the profile is the job's own, not another device's), or, for a job
that sets `nodes`, that many emulated nodes joined by a link of the rate measured on the
emulated network. Torch-free: the suite is planned and predicted before anything runs.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from parasim import profiles
from parasim.simulator.cost.profile import analytic_profile
from parasim.simulator.errors import SpecError
from parasim.simulator.checks import require_number
from parasim.simulator.jobfile import model_spec, parallel_layout, read_text, training_spec
from parasim.simulator.profile import ProfileDB
from parasim.simulator.yamlfile import parse_text

GiB = 2**30
SUITES = ("local", "local-calibration")  # shipped under profiles/suites/NAME.yaml
JOB_KEYS = ("name", "model", "parallel", "training", "nodes", "inter_node_Gbps", "launcher")
# How the ranks of a job on emulated nodes start: `local`, all from the validating process
# (runtime.run.measure_plan); `rendezvous`, each node its own `parasim run --nnodes` launcher,
# the nodes meeting through torch's rendezvous as on a cluster (runtime.run_nodes).
Launcher = Literal["local", "rendezvous"]
LAUNCHERS = ("local", "rendezvous")
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
# Device fields that enter neither the step time nor the memory of a prediction (energy and
# dollars only); a CPU has no datasheet entry to take them from.
UNPRICED = {"tdp_watts": 1, "price_per_hour_usd": 0.01}


@dataclass(frozen=True, kw_only=True)
class SuiteJob:
    """One job of a suite: a job mapping without its cluster, and where it runs."""

    name: str  # unique in the suite; names the plan, measurement and report row
    raw: dict[str, Any]  # model, training, parallel (DESIGN.md's job file, no cluster)
    nodes: int = 1  # emulated nodes the ranks are split over (1: this host's network)
    inter_node_bits_per_s: float | None = None  # their link rate, each direction
    launcher: Launcher = "local"  # how the emulated nodes' ranks start (LAUNCHERS)

    @property
    def world_size(self) -> int:
        """tp·pp·cp·dp of the fixed layout (dp defaults to 1)."""
        parallel = self.raw["parallel"]
        return math.prod(int(parallel.get(axis) or 1) for axis in ("tp", "pp", "cp", "dp"))


@dataclass(frozen=True, kw_only=True)
class Suite:
    name: str  # `local`, or the file's path
    description: str
    jobs: tuple[SuiteJob, ...]


def suite_path(name: str) -> Path:
    """A shipped suite by name, or a suite file by path; SpecError otherwise."""
    if name in SUITES:
        return Path(str(profiles.path("suites"))) / f"{name}.yaml"
    path = Path(name)
    if path.suffix in (".yaml", ".yml", ".json") and path.is_file():
        return path
    raise SpecError("--suite", name, "no such suite", ", ".join(SUITES) +
                    ", or the path of a suite file (profiles/suites/local.yaml is one)")


def load_suite(name: str) -> Suite:
    """The suite `name` (shipped or a file), every job's model, training and layout checked
    as far as they stand without the cluster: before anything is profiled or run."""
    path = suite_path(name)
    data = parse_text(read_text(path, "--suite"), str(path), "--suite")
    if not isinstance(data, dict) or not isinstance(data.get("jobs"), list) or not data["jobs"]:
        raise SpecError(f"{path}: jobs", None if not isinstance(data, dict) else
                        data.get("jobs"), "missing or empty", "a list of jobs")
    models = _section(data, "models", path)
    training = _section(data, "training", path)
    jobs = tuple(_job(entry, models, training, f"{path}: jobs[{i}]", path.parent)
                 for i, entry in enumerate(data["jobs"]))
    names = [job.name for job in jobs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise SpecError(f"{path}: jobs.name", repeated[0], "used twice", "unique job names")
    return Suite(name=name, description=str(data.get("description") or "").strip(), jobs=jobs)


def _section(data: dict, key: str, path: Path) -> dict:
    """`models` or `training` of a suite file: a mapping, or absent."""
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SpecError(f"{path}: {key}", value, "must be a mapping",
                        "model mappings by name" if key == "models" else
                        "training fields, e.g. {seq_length: 512, global_batch_size: 8}")
    return value


JOB_EXAMPLE = "e.g. {name: dp2, model: llama-tiny, parallel: {dp: 2}}"


def _job(entry: Any, models: dict, training: dict, field: str, base_dir: Path) -> SuiteJob:
    if not isinstance(entry, dict):
        raise SpecError(field, entry, "must be a mapping", ", ".join(JOB_KEYS))
    unknown = set(entry) - set(JOB_KEYS)
    if unknown:
        key = min(unknown, key=str)
        raise SpecError(f"{field}.{key}", entry[key], "unknown suite job key",
                        ", ".join(JOB_KEYS))
    for key in ("name", "model", "parallel"):
        if not entry.get(key):
            raise SpecError(f"{field}.{key}", entry.get(key), "missing",
                            f"every job sets name, model and parallel, {JOB_EXAMPLE}")
    model = entry["model"]
    if isinstance(model, str) and model in models:
        model = models[model]
    for key in ("parallel", "training"):
        if entry.get(key) is not None and not isinstance(entry[key], dict):
            raise SpecError(f"{field}.{key}", entry[key], "must be a mapping", JOB_EXAMPLE)
    nodes = entry.get("nodes", 1)
    rate_gbps = entry.get("inter_node_Gbps")
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1 or (
            nodes > 1) != (rate_gbps is not None):
        raise SpecError(f"{field}.nodes", nodes, "emulated nodes need a whole number of "
                        "nodes and their inter_node_Gbps", "nodes: 2 with inter_node_Gbps: 1")
    if rate_gbps is not None:
        rate_gbps = require_number(f"{field}.inter_node_Gbps", rate_gbps, 0, 1e6, above=True)
    launcher = entry.get("launcher", "local")
    if launcher not in LAUNCHERS or (launcher != "local" and nodes == 1):
        raise SpecError(f"{field}.launcher", launcher, "is local or, for emulated nodes, "
                        "rendezvous (each node its own launcher)",
                        "launcher: rendezvous with nodes: 2, or leave it out")
    raw = {"model": model, "training": {**training, **(entry.get("training") or {})},
           "parallel": dict(entry["parallel"])}
    _check_job(raw, field, base_dir)
    return SuiteJob(name=str(entry["name"]), raw=raw, nodes=nodes,
                    inter_node_bits_per_s=None if rate_gbps is None else rate_gbps * 1e9,
                    launcher=launcher)


def _check_job(raw: dict, field: str, base_dir: Path) -> None:
    """The job's model, training and layout as far as they stand without a cluster; errors
    name the suite job."""
    try:
        model_spec(raw["model"], base_dir)
        training_spec(raw["training"])
        parallel_layout(raw["parallel"])
    except SpecError as err:
        raise SpecError(f"{field}: {err.field}", err.value, err.why, err.valid) from None


# The local cluster, from the measured profile ---------------------------------------------------


def host_memory_bytes() -> float:
    """Physical memory of this host (POSIX sysconf)."""
    return float(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def peak_gemm_flop_per_s(db: ProfileDB) -> float:
    """The fastest forward GEMM of the profile, 2mnk / t: the device's measured peak."""
    grid = db.gemm["forward"]
    m, n, k = np.meshgrid(*grid.axes, indexing="ij")
    return float(np.max(2 * m * n * k / np.exp(grid.log_times)))


def copy_bytes_per_s(db: ProfileDB) -> float | None:
    """The fastest elementwise copy (read + write of each element) of the profile."""
    grid = db.elementwise.get(("copy", "forward"))
    if grid is None:
        return None
    moved = 2 * grid.axes[0] * DTYPE_BYTES.get(db.meta["dtype"], 4)
    return float(np.max(moved / np.exp(grid.log_times)))


def p2p_link(db: ProfileDB) -> tuple[float, float] | None:
    """(bytes/s, latency s) of a point-to-point transfer between two ranks of this host: the
    fastest large-message rate and the smallest-message time of the profile's p2p table."""
    grid = db.collectives.get(("p2p", 2))
    if grid is None:
        return None
    times = np.exp(grid.log_times)
    return float(np.max(grid.axes[0] / times)), float(times[0])


def local_device(db: ProfileDB, ranks: int) -> dict[str, Any]:
    """The job's `gpu` mapping (catalog units) for this CPU, from its measured profile.

    Named as the profile's device (`cpu`), so predict uses the profile as the job's own. The
    rates matter only where an op falls outside the profile's grids (the analytic roofline):
    peak = the fastest measured GEMM, memory bandwidth = the fastest measured copy; the host's
    memory is shared evenly by the ranks."""
    flop = peak_gemm_flop_per_s(db)
    copy = copy_bytes_per_s(db) or flop / 10  # no copy table: a GEMM-bound guess, stated
    link = p2p_link(db)
    return {"name": db.gpu, "peak_bf16_tflops": flop / 1e12, "peak_fp16_tflops": flop / 1e12,
            "peak_fp32_tflops": flop / 1e12, "memory_GiB": host_memory_bytes() / ranks / GiB,
            "memory_bandwidth_TBps": copy / 1e12,
            "nvlink_GBps": (link[0] if link else copy) / 1e9, **UNPRICED}


def local_cluster(db: ProfileDB, ranks_per_node: int, nodes: int = 1,
                  inter_node_bits_per_s: float | None = None) -> dict[str, Any]:
    """The job's `cluster` mapping: `nodes` nodes of `ranks_per_node` devices of this CPU.

    Links: inside a node, the profile's measured p2p rate and small-message time, divided by
    the analytic model's link efficiency so that the model's effective rate is the measured
    one (the measurement already is what the software stack delivers); between nodes the
    emulated link's measured rate the same way (`runtime.run.emulation_facts`), with the
    same per-message latency (the same kernel TCP path, one bridge more)."""
    analytic = analytic_profile()
    link = p2p_link(db) or (1e9, 1e-4)
    intra = {"bandwidth_GBps": link[0] / analytic.intra_node_efficiency / 1e9,
             "latency_us": link[1] * 1e6}
    inter_rate = inter_node_bits_per_s if inter_node_bits_per_s else link[0] * 8
    inter = {"bandwidth_Gbps": inter_rate / analytic.inter_node_efficiency / 1e9,
             "nics_per_node": 1, "latency_us": link[1] * 1e6}
    return {"gpu": local_device(db, ranks_per_node * nodes), "num_nodes": nodes,
            "gpus_per_node": ranks_per_node, "intra_node": intra, "inter_node": inter,
            "topology": "fat-tree"}
