"""The plan: a job's chosen layout (`Plan`), how it is made (`make_plan`), and its file.

`make_plan` searches a job's layouts (on its cluster, or on fewer nodes up to `max_gpus`);
`parasim plan --out PLAN.json` writes the plan file (the job with the chosen layout, its
prediction and the inputs' hashes, as JSON); `parasim run PLAN.json` (the runtime) executes
it. The schema is versioned; the hashes let a later run tell whether the job, the catalogs or
the cost model changed since the plan was made (`check_inputs`: `parasim run` refuses such a
plan unless --force). The file is written atomically and never over another without --force.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from parasim import profiles
from parasim.planner.search import Objective, Scored, SearchResult, search, smallest_fix
from parasim.planner.space import MAX_PLAN_GPUS, enumerate_space, fixed_fields
from parasim.simulator.checks import require_count, require_int
from parasim.simulator.cost.profile import AnalyticProfile
from parasim.simulator.errors import Infeasible, ParasimError, SpecError
from parasim.simulator.files import write_text_atomic
from parasim.simulator.hardware import ClusterSpec
from parasim.simulator.job import Job
from parasim.simulator.jobfile import apply_override, job_from_mapping, load_job, load_raw, read_text
from parasim.simulator.layout import Layout
from parasim.simulator.predict import predict
from parasim.simulator.results import StepPrediction

SCHEMA_VERSION = 1
HASHED_DATA = ("gpus.yaml", "clusters.yaml", "models.yaml", "analytic.yaml")


@dataclass(frozen=True, kw_only=True)
class Plan:
    """A job's chosen layout: what `parasim.plan` returns, a plan file holds and `parasim run`
    executes."""

    job: Job  # the job with the chosen layout (node groups in the order that takes the ranks)
    job_mapping: dict  # the same job as a job-file mapping, `parallel:` filled in (the file's)
    objective: Objective  # what the layout was chosen for: time, cost or energy
    result: SearchResult | None = None  # the search that chose it; None when read from a file
    path: Path | None = None  # the plan file it was read from

    @property
    def prediction(self) -> StepPrediction:
        """The chosen layout's prediction (simulated again for a plan read from a file)."""
        return self.result.chosen.prediction if self.result else predict(self.job)

    def document(self) -> dict:
        """The plan file's JSON object (`write_plan` writes it)."""
        if self.result is None:
            raise SpecError("plan", str(self.path), "was read from a file, not searched",
                            "copy the plan file, or plan the job again")
        return plan_document(self.job_mapping, self.result.chosen, self.objective)


def make_plan(raw: dict, *, base_dir: Path, source: str, objective: Objective = "time",
              top: int = 5, max_gpus: int | None = None, profile: AnalyticProfile | None = None,
              progress: Callable[[int, int], None] | None = None) -> Plan:
    """Search the layouts of the job mapping `raw`, its `parallel:` fields held fixed, on its
    cluster or (with `max_gpus`) on every power-of-two count of its nodes up to that many GPUs;
    the best by `objective`. Infeasible, with the smallest change that would fit, when none
    fits."""
    require_count("--top", top)
    unlaid = {k: v for k, v in raw.items() if k != "parallel"}
    fixed = fixed_fields(raw.get("parallel"))
    job = job_from_mapping(unlaid, base_dir=base_dir, source=source)
    results = []
    for variant in with_max_gpus(job, max_gpus):
        try:
            results.append((variant, search(variant, fixed, objective, top, progress=progress,
                                             profile=profile)))
        except Infeasible:
            continue
    if not results:
        raise no_layout(job, fixed)
    variant, result = min(results, key=lambda r: r[1].chosen.value(objective))
    best = result.chosen
    if variant is not job:
        unlaid = {**unlaid, "cluster": _cluster_with_nodes(unlaid["cluster"], variant)}
    if best.cluster != variant.cluster:
        unlaid = {**unlaid, "cluster": _cluster_reordered(unlaid["cluster"], variant,
                                                          best.cluster)}
    planned = replace(variant, cluster=best.cluster, layout=best.layout)
    return Plan(job=planned, job_mapping={**unlaid, "parallel": _parallel_section(best.layout)},
                objective=objective, result=result)


def no_layout(job: Job, fixed: dict) -> ParasimError:
    """Why no layout of the job was found, as the error to raise: the real reason when the
    job's own layouts fail its checks before memory is looked at (a SpecError on a fixed
    `parallel:` field or on the model, cluster or training), else Infeasible with the smallest
    change that would make it fit."""
    space = enumerate_space(job, fixed)
    if not space.layouts and len(space.errors) == len(space.rejected):  # none got to memory
        reason = space.rejected.most_common(1)[0][0]
        error = space.errors[reason]
        if _is_input(error.field, fixed):
            return error
        counts = "; ".join(f"{n} {why}" for why, n in space.rejected.most_common(3))
        return Infeasible(f"no layout of {job.model.name} passes its checks on "
                          f"{job.cluster.world_size} GPUs ({counts})")
    return Infeasible(f"no layout of {job.model.name} fits on {job.cluster.world_size} "
                      f"GPUs; smallest change: {smallest_fix(job, fixed)}")


def _is_input(field: str, fixed: dict) -> bool:
    """Whether an error names something the user set: a fixed `parallel:` field, or the
    model, cluster or training (not a degree the planner chose)."""
    name = field.removeprefix("parallel.").split("[")[0]
    return not field.startswith("parallel.") or name in fixed


def with_max_gpus(job: Job, max_gpus: int | None) -> list[Job]:
    """The job on its cluster, or on every power-of-two number of its nodes up to max_gpus."""
    if max_gpus is None:
        return [job]
    groups = job.cluster.node_groups
    if len(groups) != 1:
        raise SpecError("--max-gpus", max_gpus, "needs a cluster of one node group",
                        "a homogeneous cluster")
    per_node = groups[0].gpus_per_node
    require_int("--max-gpus", max_gpus)
    if max_gpus > MAX_PLAN_GPUS:
        raise SpecError("--max-gpus", max_gpus, "is more GPUs than plan searches "
                        f"({MAX_PLAN_GPUS:,})", f"an integer from {per_node} to {MAX_PLAN_GPUS:,}")
    if max_gpus < per_node:
        raise SpecError("--max-gpus", max_gpus, f"is less than one {per_node}-GPU node",
                        f"an integer from {per_node} to {MAX_PLAN_GPUS:,}")
    unit = groups[0].domain_gpus // per_node  # nodes of one NVLink domain (1: a node)
    if max_gpus < unit * per_node:
        raise SpecError("--max-gpus", max_gpus, f"is less than one {unit * per_node}-GPU "
                        "NVLink domain", f"an integer from {unit * per_node} to "
                        f"{MAX_PLAN_GPUS:,}")
    counts, nodes = [], unit
    while nodes * per_node <= max_gpus:
        counts.append(nodes)
        nodes *= 2
    if max_gpus // (unit * per_node) * unit not in counts:
        counts.append(max_gpus // (unit * per_node) * unit)
    return [replace(job, cluster=replace(job.cluster, node_groups=(
        replace(groups[0], num_nodes=n),))) for n in counts]


def _cluster_reordered(cluster, job: Job, chosen: ClusterSpec) -> dict:
    """The job file's `node_groups` list in the order the plan chose (the same groups)."""
    assert isinstance(cluster, dict) and isinstance(cluster.get("node_groups"), list), cluster
    remaining = list(range(len(job.cluster.node_groups)))
    order = []
    for group in chosen.node_groups:
        index = next(i for i in remaining if job.cluster.node_groups[i] == group)
        remaining.remove(index)
        order.append(index)
    return {**cluster, "node_groups": [cluster["node_groups"][i] for i in order]}


def _cluster_with_nodes(cluster, job: Job) -> dict:
    nodes = job.cluster.node_groups[0].num_nodes
    return {**cluster, "num_nodes": nodes} if isinstance(cluster, dict) else \
        {"base": cluster, "num_nodes": nodes}


def _parallel_section(layout: Layout) -> dict:
    """The `parallel:` section of a plan's job: every field the layout sets."""
    return {k: v for k, v in layout_mapping(layout).items() if v is not None}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def layout_mapping(layout: Layout) -> dict:
    """The `parallel:` section that reproduces `layout` in a job file."""
    return {
        "tp": layout.tp, "pp": layout.pp, "dp": layout.dp, "cp": layout.cp,
        "cp_style": layout.cp_style, "ep": layout.ep,
        "vpp": layout.vpp, "micro_batch_size": layout.micro_batch_size,
        "schedule": layout.schedule, "sequence_parallel": layout.sequence_parallel,
        "recompute": layout.recompute,
        "recompute_modules": list(layout.recompute_modules) if layout.recompute_modules
        else None,
        "zero_stage": layout.zero_stage, "order": layout.order,
        "stages": list(layout.stages) if layout.stages else None,
        "full_recompute_layers": list(layout.full_recompute_layers)
        if layout.full_recompute_layers else None,
        "overlap_grad_reduce": layout.overlap_grad_reduce,
        "overlap_param_gather": layout.overlap_param_gather,
        "tp_comm_overlap": layout.tp_comm_overlap, "cp_comm_overlap": layout.cp_comm_overlap,
        "ep_comm_overlap": layout.ep_comm_overlap,
        "offload": {"optimizer": layout.offload.optimizer,
                    "activations": layout.offload.activations},
        "zero_pp": layout.zero_pp,
    }


def plan_document(raw_job: dict, best: Scored, objective: str) -> dict:
    """The JSON object of a plan: the job with the chosen layout filled in."""
    unlaid = {k: v for k, v in raw_job.items() if k != "parallel"}
    job = {**unlaid, "parallel": _parallel_section(best.layout)}
    return {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "objective": objective,
        "job": job,
        "prediction": best.prediction.to_json(),
        "dollars_per_step": best.dollars_per_step,
        "joules_per_step": best.joules_per_step,
        "inputs": plan_inputs(job),
    }


def plan_inputs(job: dict) -> dict[str, str]:
    """The plan file's `inputs`: the sha256 of its job (the whole mapping, `parallel:`
    included, as canonical JSON) and of each catalog and cost-model file it was planned with
    (`job_sha256`, `gpus.yaml_sha256`, ...). `check_inputs` compares them again."""
    return {"job_sha256": job_sha256(job), **data_hashes()}


def data_hashes() -> dict[str, str]:
    """sha256 of each catalog and cost-model file a plan depends on, as `inputs` names them."""
    return {f"{name}_sha256": _sha256(profiles.path(name).read_bytes()) for name in HASHED_DATA}


def job_sha256(job: dict) -> str:
    """sha256 of a job mapping as canonical JSON (keys sorted), the same before it is written
    to a plan file and after it is read back."""
    canonical = json.loads(json.dumps(job, default=str))  # what the file holds
    return _sha256(json.dumps(canonical, sort_keys=True).encode())


def changed_inputs(path: str | Path) -> list[str]:
    """What no longer matches the plan file's `inputs` hashes, in words (empty: nothing): its
    job edited since it was planned, or a catalog or cost-model file changed since."""
    path = Path(path)
    document = _plan_document(path)
    job = _plan_job(path, document)
    inputs = document["inputs"]
    if not isinstance(inputs, dict):
        return ["it holds no input hashes (`inputs` is not a mapping)"]
    changed = []
    if inputs.get("job_sha256") != job_sha256(job):
        changed.append("its job was edited after planning (job_sha256 does not match the "
                       "job it holds)")
    for name, expected in data_hashes().items():
        if inputs.get(name) != expected:
            changed.append(f"{name.removesuffix('_sha256')} changed since it was planned "
                           f"({name} differs)")
    return changed


def check_inputs(path: str | Path, *, force: bool) -> list[str]:
    """SpecError naming what changed since the plan file was made (`changed_inputs`), unless
    `force`; what changed (for a warning when forced)."""
    changed = changed_inputs(path)
    if changed and not force:
        raise SpecError("plan", str(path), "; ".join(changed), "plan the job again (`parasim "
                        "plan JOB --out PLAN.json`), or --force to run it as it is")
    return changed


def write_plan(path: str | Path, document: dict, *, force: bool = False) -> None:
    """Write a plan document (`plan_document`) as JSON, atomically; an existing file only
    with `force` (SpecError naming --out otherwise, or if it cannot be written)."""
    write_text_atomic(path, json.dumps(document, indent=2, default=str) + "\n", force=force,
                      field="--out")


REQUIRED_KEYS = ("schema_version", "job", "prediction", "inputs")
_REMAKE = "a plan file written by this parasim's `parasim plan JOB --out PLAN.json`"


def read_plan(path: str | Path) -> Plan:
    """The plan a plan file holds; SpecError if it is not one this parasim wrote: unreadable,
    not JSON, another schema version, a key or the layout missing, or a job that no longer
    builds."""
    path = Path(path)
    raw = _plan_job(path)
    job = job_from_mapping(raw, base_dir=path.parent, source=str(path))
    objective = _plan_document(path).get("objective", "time")
    return Plan(job=job, job_mapping=raw, objective=objective, path=path)


def load_job_or_plan(path: str | Path, overrides: list[str] = ()) -> Job:
    """A job file, or a plan file (`plan --out`: its job with the chosen layout), with the
    `--set` overrides applied: what `parasim estimate` reads."""
    if "schema_version" not in load_raw(path):
        return load_job(path, overrides)
    raw = _plan_job(Path(path))
    for item in overrides:
        apply_override(raw, item)
    return job_from_mapping(raw, base_dir=Path(path).parent, source=str(path))


def _plan_job(path: Path, document: dict | None = None) -> dict:
    """The job mapping of a plan file this parasim wrote (`read_plan`'s checks); `document`:
    the file's object, when already read."""
    document = _plan_document(path) if document is None else document
    missing = [key for key in REQUIRED_KEYS if key not in document]
    if missing:
        raise SpecError("plan", str(path), f"missing {', '.join(missing)}", _REMAKE)
    version = document["schema_version"]
    if version != SCHEMA_VERSION:
        raise SpecError("schema_version", version, f"{path} is in another plan format than "
                        f"this parasim reads (version {SCHEMA_VERSION})", _REMAKE)
    raw = document["job"]
    if not isinstance(raw, dict) or not isinstance(raw.get("parallel"), dict):
        raise SpecError("job.parallel", None if not isinstance(raw, dict) else
                        raw.get("parallel"), f"{path} holds no layout", _REMAKE)
    return raw


def _plan_document(path: Path) -> dict:
    """The plan file's JSON object."""
    text = read_text(path, "plan")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as err:
        raise SpecError("plan", str(path), f"is not JSON: {err.msg} at line {err.lineno} "
                        f"column {err.colno}", _REMAKE) from None
    except (ValueError, RecursionError) as err:  # a 5000-digit number, nesting too deep
        why = "nested too deeply" if isinstance(err, RecursionError) else str(err).split(";")[0]
        raise SpecError("plan", str(path), f"is not JSON: {why}", _REMAKE) from None
    if not isinstance(document, dict):
        raise SpecError("plan", str(path), f"is a JSON {type(document).__name__}, not an "
                        "object", _REMAKE)
    return document
