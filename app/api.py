"""The library loop: load a job, estimate it, plan it, run the plan, validate, calibrate.

The same loop as the `parasim` command (which is a thin layer over these functions), with no
argparse: every argument is typed, every result a frozen dataclass. Bad input raises
`SpecError`, a job that fits nowhere `Infeasible`, a run that fails `MeasurementError` (all
`ParasimError`). `run` and the local validation suites import PyTorch when called, nothing
else does.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from parasim.calibrate_cli import fit_profile
from parasim.planner.plan import Plan, load_job_or_plan, make_plan, read_plan
from parasim.planner.plan import write_plan as _write_plan_file
from parasim.planner.search import Objective
from parasim.simulator.calibration.fit import Calibration
from parasim.simulator.calibration.fitted import base_profile, load_profiles
from parasim.simulator.calibration.parameters import DEFAULT_NAMES
from parasim.simulator.errors import SpecError
from parasim.simulator.job import Job
from parasim.simulator.jobfile import apply_override, job_from_mapping, load_raw
from parasim.simulator.predict import predict
from parasim.simulator.results import StepPrediction
from parasim.published_suite import validate_published
from parasim.validate_cli import ValidateOptions, validate_suite
from parasim.vtrain_suite import validate_vtrain

if TYPE_CHECKING:  # imported when a run starts: they need torch
    import pandas

    from parasim.runtime.measure import Measurement

JobSource = str | Path | Mapping[str, Any]
Profiles = str | Sequence[str] | None


def load_job(source: JobSource, overrides: Sequence[str] = (), *,
             base_dir: str | Path | None = None) -> Job:
    """A job from a job file (YAML or JSON), a plan file (its job with the chosen layout) or
    a mapping of the job file's sections; `overrides` as `--set` takes them
    (`"parallel.tp=4"`). `base_dir`: where a mapping's relative paths (a Hugging Face
    config.json) are found (default: the working folder)."""
    if isinstance(source, Mapping):
        raw = copy.deepcopy(dict(source))
        for item in overrides:
            apply_override(raw, item)
        return job_from_mapping(raw, base_dir=Path(base_dir or "."), source="<mapping>")
    return load_job_or_plan(source, list(overrides))


def estimate(job: Job | JobSource, *, profile: Profiles = None,
             record: bool = False) -> StepPrediction:
    """The prediction of the job's layout: step time, throughput, MFU, memory, breakdown and,
    with `training.tokens`, the whole run. `profile`: a measured profile, a fitted one, or
    one of each (names or folders; default the analytic model). `record` keeps the simulated
    timeline (`prediction.intervals`) for a trace."""
    job = job if isinstance(job, Job) else load_job(job)
    if job.layout is None:
        raise SpecError("parallel", None, "missing: estimate predicts one layout",
                        "a parallel section, e.g. {tp: 8, pp: 4} (plan searches layouts)")
    fitted, measured = load_profiles(_names(profile))
    return predict(job, profile=fitted, measured=measured, record=record)


def plan(job: Job | JobSource, *, objective: Objective = "time", top: int = 5,
         max_gpus: int | None = None, profile: str | None = None,
         overrides: Sequence[str] = (),
         progress: Callable[[int, int], None] | None = None) -> Plan:
    """The best layout of the job for `objective` (time, cost or energy), the fields its
    `parallel:` section sets held fixed, as `parasim plan` searches it; `max_gpus` also tries
    fewer nodes; `profile` a fitted profile. The plan's `result` holds the runners-up, the
    Pareto front and what was rejected."""
    if isinstance(job, Job):
        raw, base_dir, source = copy.deepcopy(_mapping_of(job)), Path("."), job.source
    elif isinstance(job, Mapping):
        raw, base_dir, source = copy.deepcopy(dict(job)), Path("."), "<mapping>"
    else:
        raw, base_dir, source = load_raw(job), Path(job).parent, str(job)
    for item in overrides:
        apply_override(raw, item)
    return make_plan(raw, base_dir=base_dir, source=source, objective=objective, top=top,
                     max_gpus=max_gpus, profile=base_profile(profile) if profile else None,
                     progress=progress)


def write_plan(plan: Plan, path: str | Path, *, force: bool = False) -> Plan:
    """Write the plan file that `parasim run` and `parasim estimate` read; the plan as read
    back from it (ready for `run`). An existing file is kept unless `force`."""
    path = Path(path)
    if path.exists() and not force:
        raise SpecError("--out", str(path), "exists; refusing to overwrite it",
                        "another path, or --force")
    _write_plan_file(path, plan.document(), force=force)
    return read_plan(path)


def run(plan: Plan | str | Path, *, steps: int = 10, warmup: int = 2, nproc: int | None = None,
        timeout_s: float = 600.0, shrink: bool = False, emulate_nodes: int | None = None,
        inter_node_Gbps: float | None = None, inter_node_latency_us: float = 0.0
        ) -> Measurement:
    """Train the plan's layout for real in local processes (torch.distributed) and measure it:
    `steps` timed steps after `warmup` untimed ones; `shrink` runs the layout on a small model
    of the same family; `emulate_nodes` splits the ranks over network namespaces joined by
    links of `inter_node_Gbps` (root). Needs PyTorch (the runtime extra)."""
    from parasim.run_cli import measure  # imports torch

    plan = plan if isinstance(plan, Plan) else read_plan(plan)
    return measure(plan, steps=steps, warmup=warmup, nproc=nproc, timeout_s=timeout_s,
                   shrink=shrink, emulate_nodes=emulate_nodes, inter_node_Gbps=inter_node_Gbps,
                   inter_node_latency_us=inter_node_latency_us)


def validate(suite: str = "local", *, profile: Profiles = None, out: str | Path | None = None,
             force: bool = False, steps: int = 10, warmup: int = 2, repeat: int = 1,
             timeout_s: float = 600.0, data_dir: str | Path | None = None):
    """Validate the cost model and write a report folder (default reports/SUITE):
    `local` or `local-calibration` (or a suite file) plans, predicts and runs each job on this
    machine (PyTorch) against a measured profile (given, or measured first); `vtrain`
    calibrates on half of the vTrain runs in `data_dir` and tests on the rest; `published`
    fits each GPU generation on the published corpus and the public datasets and judges it
    leave-one-source-out (no torch). Returns the report's summary (its rows for vtrain)."""
    command = f"parasim.validate({suite!r})"
    if suite == "published":
        return validate_published(data_dir=data_dir, out=out, force=force, command=command)
    if suite == "vtrain":
        return validate_vtrain(data_dir=data_dir, out=out, force=force, command=command)
    options = ValidateOptions(profiles=tuple(_names(profile)), steps=steps, warmup=warmup,
                              repeat=repeat, timeout_s=timeout_s, out=out, force=force)
    return validate_suite(suite, options, command)


def calibrate(runs: str | Path, *, out: str | Path, params: Sequence[str] = DEFAULT_NAMES,
              profile: Profiles = None, calibration_half: bool = False,
              max_evaluations: int = 200, force: bool = False) -> Calibration:
    """Fit the named cost-model parameters to a runs file (`job, step_time_s` rows, or a
    vTrain file) over the given base and/or measured profile; write the fitted profile folder
    `out` that `profile=` then takes."""
    return fit_profile(runs, out=out, params=params, profiles=_names(profile),
                       calibration_half=calibration_half, max_evaluations=max_evaluations,
                       force=force, command=f"parasim.calibrate({str(runs)!r})")


def sweep(job: Job | JobSource, grid: Mapping[str, Sequence[Any]], *,
          profile: Profiles = None) -> pandas.DataFrame:
    """A what-if table: the job estimated at every combination of the `grid`'s values (keys
    are `--set` fields such as `parallel.tp`), one row each with the fields, the step time,
    throughput, MFU, peak memory and whether it fits; a combination that is not valid gets
    its reason in `error`."""
    import pandas

    source = _mapping_of(job) if isinstance(job, Job) else job
    rows = []
    for values in itertools.product(*grid.values()):
        row = dict(zip(grid, values))
        overrides = [f"{key}={value}" for key, value in row.items()]
        try:
            p = estimate(load_job(source, overrides), profile=profile)
        except SpecError as err:
            rows.append({**row, "error": str(err)})
            continue
        rows.append({**row, "step_time_s": p.step_time_s, "tokens_per_s": p.tokens_per_s,
                     "mfu": p.mfu, "peak_GiB": p.peak_stage.peak_bytes / 2**30, "fits": p.fits,
                     "error": None})
    return pandas.DataFrame(rows)


def _names(profile: Profiles) -> list[str]:
    if profile is None:
        return []
    return [profile] if isinstance(profile, (str, Path)) else [str(p) for p in profile]


def _mapping_of(job: Job) -> dict:
    """The job-file mapping a Job was built from (`load_job` keeps it)."""
    if job.mapping is None:
        raise SpecError("job", job.source, "was built in code, not from a job mapping",
                        "parasim.load_job(path or mapping)")
    return dict(job.mapping)
