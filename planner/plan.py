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
