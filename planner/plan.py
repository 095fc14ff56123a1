"""The plan artifact: the chosen layout, its prediction and the inputs' hashes, as JSON.

`parasim plan --out PLAN.json` writes it; `parasim run PLAN.json` (the runtime) executes it.
The schema is versioned; the hashes let a later run tell whether the job, the catalogs or the
cost model changed since the plan was made.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path

import profiles
from planner.search import Scored
from simulator.errors import SpecError
from simulator.job import Job
from simulator.jobfile import apply_override, job_from_mapping, load_job, load_raw, read_text
from simulator.layout import Layout

SCHEMA_VERSION = 1
HASHED_DATA = ("gpus.yaml", "clusters.yaml", "models.yaml", "analytic.yaml")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def layout_mapping(layout: Layout) -> dict:
    """The `parallel:` section that reproduces `layout` in a job file."""
    return {
        "tp": layout.tp, "pp": layout.pp, "dp": layout.dp, "cp": layout.cp, "ep": layout.ep,
        "vpp": layout.vpp, "micro_batch_size": layout.micro_batch_size,
        "schedule": layout.schedule, "sequence_parallel": layout.sequence_parallel,
        "recompute": layout.recompute, "zero_stage": layout.zero_stage, "order": layout.order,
        "stages": list(layout.stages) if layout.stages else None,
        "full_recompute_layers": list(layout.full_recompute_layers)
        if layout.full_recompute_layers else None,
        "overlap_grad_reduce": layout.overlap_grad_reduce,
        "overlap_param_gather": layout.overlap_param_gather,
        "tp_comm_overlap": layout.tp_comm_overlap, "cp_comm_overlap": layout.cp_comm_overlap,
        "ep_comm_overlap": layout.ep_comm_overlap,
    }


def plan_document(raw_job: dict, best: Scored, objective: str) -> dict:
    """The JSON object of a plan: the job with the chosen layout filled in."""
    job = {**raw_job, "parallel": {k: v for k, v in layout_mapping(best.layout).items()
                                   if v is not None}}
    data_hashes = {name: _sha256(profiles.path(name).read_bytes()) for name in HASHED_DATA}
    return {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "objective": objective,
        "job": job,
        "prediction": best.prediction.to_json(),
        "dollars_per_step": best.dollars_per_step,
        "joules_per_step": best.joules_per_step,
        "inputs": {"job_sha256": _sha256(json.dumps(raw_job, sort_keys=True, default=str)
                                         .encode()), **{f"{k}_sha256": v
                                                        for k, v in data_hashes.items()}},
    }


def write_plan(path: str | Path, document: dict) -> None:
    try:
        Path(path).write_text(json.dumps(document, indent=2, default=str) + "\n",
                              encoding="utf-8")
    except OSError as err:
        raise SpecError("--out", str(path), f"cannot write: {err.strerror}",
                        "a writable file path") from None


REQUIRED_KEYS = ("schema_version", "job", "prediction", "inputs")
_REMAKE = "a plan file written by this parasim's `parasim plan JOB --out PLAN.json`"


def read_plan(path: str | Path) -> tuple[dict, Job]:
    """(the job mapping, the Job with its layout) of a plan file; SpecError if it is not one
    this parasim wrote: unreadable, not JSON, another schema version, a key or the layout
    missing, or a job that no longer builds."""
    raw = _plan_job(Path(path))
    return raw, job_from_mapping(raw, base_dir=Path(path).parent, source=str(path))


def load_job_or_plan(path: str | Path, overrides: list[str] = ()) -> Job:
    """A job file, or a plan file (`plan --out`: its job with the chosen layout), with the
    `--set` overrides applied: what `parasim estimate` reads."""
    if "schema_version" not in load_raw(path):
        return load_job(path, overrides)
    raw = _plan_job(Path(path))
    for item in overrides:
        apply_override(raw, item)
    return job_from_mapping(raw, base_dir=Path(path).parent, source=str(path))


def _plan_job(path: Path) -> dict:
    """The job mapping of a plan file this parasim wrote (`read_plan`'s checks)."""
    document = _plan_document(path)
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
    if not isinstance(document, dict):
        raise SpecError("plan", str(path), f"is a JSON {type(document).__name__}, not an "
                        "object", _REMAKE)
    return document
