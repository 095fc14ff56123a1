"""`parasim validate`: predict a suite of jobs, run each on this machine, report the errors.

    parasim validate --suite local [--profile DIR] [--profile FITTED] [--steps N]
                     [--out reports/local]

Profiles this machine (quick grids, at the thread count each rank will compute with) unless
given a profile, then for each job of the suite: builds the job on this machine's cluster
(`parasim.suite.local_cluster`), predicts it (`simulator.predict`, with the profile, and a
fitted profile over it when given one), writes its plan file (the one `parasim run` reads) and
runs it (`runtime.run.measure_plan`; a job on emulated nodes with `launcher: rendezvous`:
`runtime.run_nodes`, each node its own `parasim run --nnodes` launcher), and compares
(`simulator.validation`). A job that cannot be planned or run is reported as failed with its
one-line reason, and the suite goes on. The report folder (`simulator.validation_report`)
holds README.md, results.csv, facts.json, scatter.png, the plans and the measurements, and
runs.csv: the measured step times as a `parasim calibrate` runs file (its jobs in jobs/), so
that one suite can calibrate the cost model that another is then validated with.
`--render DIR` rebuilds a report's README.md and scatter.png from its data (no torch).

Exit status: 0 report written, 2 bad input (one line, before anything runs), 130 interrupted.
The runtime (torch) is imported only to run, so that the app's other commands never need it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import socket
import sys
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from parasim.host_load import cpu_sample, other_load_cores
from parasim.planner.plan import Plan, plan_document, read_plan, write_plan
from parasim.run_cli import sigterm_as_exit
from parasim.planner.search import Scored, economics
from parasim.suite import Suite, SuiteJob, load_suite, local_cluster
from parasim.published_report import render as render_published
from parasim.published_suite import validate_published
from parasim.vtrain_report import render as render_vtrain
from parasim.vtrain_report import summary_lines as vtrain_summary_lines
from parasim.vtrain_suite import validate_vtrain
from parasim.simulator.calibration.fitted import fitted_dir, load_profiles
from parasim.simulator.cost.profile import AnalyticProfile
from parasim.simulator.errors import ParasimError, SpecError
from parasim.simulator.files import atomic_open, check_new_folder, make_folder, write_text_atomic
from parasim.simulator.job import Job
from parasim.simulator.jobfile import job_from_mapping
from parasim.simulator.layout import Layout
from parasim.simulator.predict import predict
from parasim.simulator.profile import ProfileDB, load_profile, mismatches
from parasim.simulator.results import StepPrediction
from parasim.simulator.validation import JobResult, Summary, summarize
from parasim.simulator.validation_report import (
    README,
    RunFacts,
    mebibytes,
    percent,
    render_report,
    summary_lines,
    write_report,
)

PLANS, MEASUREMENTS, PROFILE, JOBS, RUNS = "plans", "measurements", "profile", "jobs", "runs.csv"


def add_validate_parser(commands: argparse._SubParsersAction) -> None:
    validate = commands.add_parser("validate", help="predict, run and compare a suite of jobs "
                                   "on this machine; write a report (needs PyTorch)")
    validate.add_argument("--suite", default="local", metavar="NAME|FILE",
                          help="local (profiles/suites/local.yaml), a suite file, vtrain "
                          "(calibrate on half of the vTrain runs, test on the rest; no torch) "
                          "or published (fit per GPU generation on the published runs, "
                          "leave-one-source-out; no torch)")
    validate.add_argument("--profile", metavar="DIR", action="append",
                          help="use this measured profile instead of profiling first (it "
                          "should be measured at cores / ranks threads); and/or a fitted "
                          "profile (`parasim calibrate` over that measured profile) to "
                          "predict with: give it twice for both")
    validate.add_argument("--steps", type=int, default=10, metavar="N",
                          help="timed steps per job (10)")
    validate.add_argument("--warmup", type=int, default=2, metavar="N",
                          help="untimed steps before them (2)")
    validate.add_argument("--repeat", type=int, default=1, metavar="N",
                          help="run the suite N times, interleaved (job 1..last, then again), "
                          "and pool each job's timed steps: machine drift spreads over every "
                          "job instead of landing on a few (1)")
    validate.add_argument("--timeout", type=float, default=600.0, metavar="S",
                          help="stop a job's ranks after S seconds (600)")
    validate.add_argument("--out", metavar="DIR", help="report folder (reports/SUITE)")
    validate.add_argument("--force", action="store_true",
                          help="write into an --out folder that is not empty")
    validate.add_argument("--render", metavar="DIR", help="only rebuild DIR's README.md and "
                          "scatter.png from its results.csv and facts.json (no torch)")
    validate.add_argument("--data-dir", metavar="DIR",
                          help="vtrain and published suites: the folder holding vtrain/, "
                          "hagemann2023/ and mosaicml/ (default: $PARASIM_DATA, or the first "
                          "shared/data beside or above this folder)")


@dataclass(frozen=True, kw_only=True)
class ValidateOptions:
    """How a local suite is run (`parasim validate`'s options)."""

    profiles: tuple[str, ...] = ()  # a measured profile and/or a fitted one (else profile first)
    steps: int = 10  # timed steps per job
    warmup: int = 2  # untimed steps before them
    repeat: int = 1  # runs of the suite, interleaved, each job's timed steps pooled
    timeout_s: float = 600.0  # a job's ranks are stopped after this long
    out: str | Path | None = None  # the report folder (default reports/SUITE)
    force: bool = False  # write into an --out folder that is not empty

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise SpecError("--steps", self.steps, "must time at least one step", "1 or more")
        if self.warmup < 0:
            raise SpecError("--warmup", self.warmup, "must not be negative", "0 or more")
        if self.repeat < 1:
            raise SpecError("--repeat", self.repeat, "must run the suite at least once",
                            "1 or more")
        if not self.timeout_s > 0 or self.timeout_s == float("inf"):
            raise SpecError("--timeout", self.timeout_s, "must be a positive number of seconds",
                            "seconds, e.g. 600")
        if self.profiles and not any(fitted_dir(name) is None for name in self.profiles):
            raise SpecError("--profile", self.profiles[0], "is a fitted profile, which sits on "
                            "a measured one", "add --profile with the measured profile it was "
                            "fitted over (its fit section names it)")


def validate_command(args: argparse.Namespace, argv: list[str]) -> None:
    """`parasim validate`: SpecError for the CLI to report; KeyboardInterrupt passes."""
    command = "parasim " + " ".join(shlex.quote(a) for a in argv)
    if args.suite == "published":
        if args.render:
            summary = render_published(Path(args.render))
            print(f"rendered {args.render}: mean per-source error "
                  f"{summary['mean_per_source_error']:.1%} (constant-MFU baseline "
                  f"{summary['baseline_mean_per_source_error']:.1%})", flush=True)
            return
        validate_published(data_dir=args.data_dir, out=args.out, force=args.force,
                           command=command)
        return
    if args.suite == "vtrain":
        if args.render:
            rows = render_vtrain(Path(args.render))
            print("\n".join(vtrain_summary_lines(rows) + [f"rendered {args.render}"]),
                  flush=True)
            return
        validate_vtrain(data_dir=args.data_dir, out=args.out, force=args.force, command=command)
        return
    if args.render:
        summary = render_report(Path(args.render))
        print("\n".join(summary_lines(summary) + [f"rendered {args.render}"]), flush=True)
        return
    options = ValidateOptions(profiles=tuple(args.profile or ()), steps=args.steps,
                              warmup=args.warmup, repeat=args.repeat, timeout_s=args.timeout,
                              out=args.out, force=args.force)
    validate_suite(args.suite, options, command)


def validate_suite(name: str, options: ValidateOptions, command: str) -> Summary:
    """Profile (unless given a profile), plan, predict, run and compare every job of the suite
    `name` (local, local-calibration or a suite file); write the report; its summary."""
    fitted, measured = load_profiles(list(options.profiles))
    suite = load_suite(name)
    out = _out_dir(options, suite)
    runtime = _load_runtime(suite.jobs)
    with sigterm_as_exit():
        return _validate(options, suite, out, runtime, command, (fitted, measured))


def _out_dir(options: ValidateOptions, suite: Suite) -> Path:
    """--out, or reports/<suite>; refused when it holds files, unless --force (then its
    README.md, the marker of a complete report, goes first and comes back last)."""
    out = Path(options.out) if options.out else Path("reports") / Path(suite.name).stem
    check_new_folder(out, force=options.force, field="--out")
    for sub in (PLANS, MEASUREMENTS, JOBS):
        make_folder(out / sub, field="--out")
    (out / README).unlink(missing_ok=True)
    return out


def _load_runtime(jobs: tuple[SuiteJob, ...]) -> SimpleNamespace:
    """runtime.run, runtime.profiler, runtime.train, or a SpecError naming the missing torch.

    torch's C++ log level is set first, as `parasim run` sets it (app/run_cli.py): emulated
    nodes' addresses have no host name (a warning per store client), and nodes meeting
    through the rendezvous retry the store (a stack trace per failed try); failures come back
    as one line anyway."""
    if any(job.launcher == "rendezvous" for job in jobs):  # as `parasim run --nnodes`
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "FATAL")
    elif any(job.nodes > 1 for job in jobs):  # as `parasim run --emulate-nodes`
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    try:
        from parasim.runtime import measure, profiler, run, run_nodes, speed_probe, train
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] != "torch":
            raise
        raise SpecError("validate", None, "parasim validate runs the jobs: it needs PyTorch",
                        "pip install '.[runtime]'") from None
    return SimpleNamespace(measure=measure, profiler=profiler, run=run, run_nodes=run_nodes,
                           speed_probe=speed_probe, train=train)


# The suite ------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Context:
    """What every job of one validation shares."""

    options: ValidateOptions
    out: Path
    db: ProfileDB
    fitted: AnalyticProfile | None  # predict with it over `db`, and without it for comparison
    runtime: SimpleNamespace
    threads: int  # torch threads per rank the profile describes
    notes: list[str]  # facts for the report, appended as jobs run

    def predict(self, job: Job) -> StepPrediction:
        return predict(job, profile=self.fitted, measured=self.db)

    def uncalibrated_s(self, job: Job) -> float | None:
        """The step predicted by the measured profile alone, when a fitted one is in use."""
        return None if self.fitted is None else predict(job, measured=self.db).step_time_s


def _validate(options: ValidateOptions, suite: Suite, out: Path, runtime: SimpleNamespace,
              command: str, profiles: tuple[AnalyticProfile | None, ProfileDB | None]
              ) -> Summary:
    load_before, created = os.getloadavg(), _now()
    threads = _threads(suite, runtime)
    fitted, measured = profiles
    db = _profile(options, out, runtime, threads, measured)
    ctx = Context(options=options, out=out, db=db, fitted=fitted, runtime=runtime, threads=threads,
                  notes=[])
    prepared = {job.name: _prepare(ctx, job) for job in suite.jobs}
    runs: dict[str, list[Run | str]] = {job.name: [] for job in suite.jobs}
    for round_index in range(1, options.repeat + 1):
        for index, job in enumerate(suite.jobs, start=1):
            ready = prepared[job.name]
            if isinstance(ready, JobResult) or _failed_before(runs[job.name]):
                continue
            run = _run_once(ctx, job, ready)
            runs[job.name].append(run)
            counter = f"[{index}/{len(suite.jobs)}]" if options.repeat == 1 else \
                f"[run {round_index}/{options.repeat}, {index}/{len(suite.jobs)}]"
            print(f"{counter} {job_line(_row(ctx, job, ready, [run]))}", flush=True)
    results = [_final_row(ctx, job, prepared[job.name], runs[job.name]) for job in suite.jobs]
    if options.repeat > 1:
        print("pooled over the runs:", flush=True)
        for r in results:
            print(f"  {job_line(r)}", flush=True)
    facts = _facts(ctx, suite, command, created, threads, load_before)
    _write_runs(out, results)
    write_report(out, results, facts)  # README.md last: the report is complete
    summary = summarize(results)
    print("\n".join(summary_lines(summary) + [f"wrote {out}/README.md"]), flush=True)
    return summary


def _threads(suite: Suite, runtime: SimpleNamespace) -> int:
    """Threads per rank of the suite's widest job: what the profile must be measured at."""
    return runtime.train.threads_per_rank(max(job.world_size for job in suite.jobs))


def _profile(options: ValidateOptions, out: Path, runtime: SimpleNamespace,
             threads: int, given: ProfileDB | None) -> ProfileDB:
    """The given profile (warning when measured at another thread count or precision), or a
    quick profile of this machine at `threads` threads, written into the report folder."""
    if given is not None:
        db = given
        if db.meta.get("threads") != threads:
            _warn(f"profile {db.path} was measured at {db.meta.get('threads')} thread(s), the "
                  f"ranks compute with {threads}; its times are used as measured")
        for why in mismatches(db, {db.gpu}, "fp32"):
            _warn(f"{why}; its times are used as measured")
        return db
    print(f"profiling this machine (quick grids, {threads} thread(s)) into {out / PROFILE}",
          flush=True)
    result = runtime.profiler.profile("cpu", "fp32", True, out / PROFILE, None,
                                      force=options.force, threads=threads)
    return load_profile(result.out_dir)


@dataclass(frozen=True)
class Prepared:
    """A job planned and predicted, ready to run."""

    plan: Plan  # as read back from its file
    raw: dict  # the job mapping, on this machine's cluster
    planned: Job
    prediction: StepPrediction
    uncalibrated_s: float | None  # `Context.uncalibrated_s`


@dataclass(frozen=True)
class Run:
    """One run of a job: its measurement, the other load and the machine's speed."""

    measured: Any  # runtime.measure.Measurement
    other_load_cores: float | None
    machine_speed: float | None


def _prepare(ctx: Context, job: SuiteJob) -> Prepared | JobResult:
    """Plan and predict one job; a failure is the row's reason, not an exit."""
    try:
        plan_path = _write_plan(ctx, job)
        plan = read_plan(plan_path)  # exactly what `parasim run` would execute
        return Prepared(plan, plan.job_mapping, plan.job, ctx.predict(plan.job),
                        ctx.uncalibrated_s(plan.job))
    except ParasimError as err:
        return _failed(job, None, None, str(err))


def _run_once(ctx: Context, job: SuiteJob, ready: Prepared) -> Run | str:
    """Run and measure the job once; a failure is its reason."""
    try:
        _check_runnable(ctx, job)
        speed = ctx.runtime.speed_probe.machine_speed(ctx.db, ctx.threads)
        before = cpu_sample()
        measured = _measure(ctx, job, ready)
        return Run(measured, other_load_cores(before, cpu_sample()), speed)
    except ParasimError as err:
        return str(err)


def _failed_before(runs: list[Run | str]) -> bool:
    """A job that failed once is not run again (its reason stands)."""
    return any(isinstance(run, str) for run in runs)


def _row(ctx: Context, job: SuiteJob, ready: Prepared, runs: list[Run | str]) -> JobResult:
    """The job's row from its runs (their timed steps pooled), or the first failure."""
    failure = next((run for run in runs if isinstance(run, str)), None)
    if failure is not None:
        return _failed(job, ready.planned, ready.prediction, failure)
    measured = ctx.runtime.measure.pooled([run.measured for run in runs])
    if job.nodes > 1:
        ready = _with_measured_link(ctx, job, ready, measured.emulation)
    return replace(_result(job, ready.planned, ready.prediction, measured),
                   other_load_cores=_mean_of([run.other_load_cores for run in runs]),
                   machine_speed=_mean_of([run.machine_speed for run in runs]),
                   uncalibrated_step_s=ready.uncalibrated_s)


def _final_row(ctx: Context, job: SuiteJob, ready: Prepared | JobResult,
               runs: list[Run | str]) -> JobResult:
    """The report's row; its pooled measurement is written to measurements/, the job as
    predicted to jobs/ (for runs.csv), and an emulated job's link rate to the notes."""
    if isinstance(ready, JobResult):
        return ready
    if runs and not _failed_before(runs):
        pooled = ctx.runtime.measure.pooled([run.measured for run in runs])
        ctx.runtime.run.write_measurement(ctx.out / MEASUREMENTS / f"{job.name}.json", pooled,
                                          force=True)
        predicted = ready
        if job.nodes > 1:
            ctx.notes.append(_link_note(job, pooled.emulation))
            predicted = _with_measured_link(ctx, job, ready, pooled.emulation)
        write_text_atomic(ctx.out / JOBS / f"{job.name}.json",
                          json.dumps(predicted.raw, indent=2) + "\n", force=True, field="--out")
    return _row(ctx, job, ready, runs)


def _write_runs(out: Path, results: list[JobResult]) -> None:
    """runs.csv: the measured jobs as a `parasim calibrate` runs file (job, step_time_s)."""
    with atomic_open(out / RUNS, force=True, field="--out", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["job", "step_time_s"])
        for r in results:
            if r.measured:
                writer.writerow([f"{JOBS}/{r.name}.json", repr(r.measured_step_s)])


def _mean_of(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def suite_job(db: ProfileDB, job: SuiteJob, inter_node_bits_per_s: float | None = None
              ) -> tuple[dict, Job]:
    """(job mapping, Job) of the suite job on this machine's cluster (`inter_node_bits_per_s`:
    the emulated link's rate, default the suite's line rate)."""
    rate = inter_node_bits_per_s or job.inter_node_bits_per_s
    raw = {**job.raw, "cluster": local_cluster(db, job.world_size // job.nodes, job.nodes, rate)}
    return raw, job_from_mapping(raw, base_dir=Path("."), source=job.name)


def _write_plan(ctx: Context, job: SuiteJob) -> Path:
    """The plan file of the job's fixed layout, as `parasim plan --out` writes it."""
    raw, built = suite_job(ctx.db, job)
    prediction = ctx.predict(built)
    dollars, joules = economics(built, prediction)
    scored = Scored(layout=built.layout, prediction=prediction, dollars_per_step=dollars,
                    joules_per_step=joules, cluster=built.cluster)
    path = ctx.out / PLANS / f"{job.name}.json"
    write_plan(path, plan_document(raw, scored, "time"), force=True)
    return path


def _check_runnable(ctx: Context, job: SuiteJob) -> None:
    """SpecError for a job the profile cannot describe (ranks sharing cores, another thread
    count) or an emulated network this machine cannot build."""
    cores = os.cpu_count() or 1
    if job.world_size > cores:
        raise SpecError(f"{job.name}: world size", job.world_size, f"exceeds this machine's "
                        f"{cores} cores: ranks would share cores, which no profile describes",
                        f"jobs of at most {cores} ranks here")
    threads = ctx.runtime.train.threads_per_rank(job.world_size)
    if threads != ctx.threads:
        raise SpecError(f"{job.name}: world size", job.world_size, f"its ranks compute with "
                        f"{threads} threads, the profile describes {ctx.threads}",
                        "jobs of the suite's widest world size")
    if job.nodes > 1:
        emulation = _emulation(ctx, job)
        ctx.runtime.run.netns.check_can_emulate(emulation, job.world_size)


def _emulation(ctx: Context, job: SuiteJob):
    return ctx.runtime.run.netns.Emulation(nodes=job.nodes,
                                           inter_node_bits_per_s=job.inter_node_bits_per_s)


def _measure(ctx: Context, job: SuiteJob, ready: Prepared):
    """One run of the job's plan (measurements/ holds the runs pooled: `_final_row`): its
    ranks started from here, or on emulated nodes that each run their own launcher."""
    options = ctx.options
    if job.launcher == "rendezvous":
        return ctx.runtime.run_nodes.measure_plan_on_nodes(
            ready.plan, steps=options.steps, warmup_steps=options.warmup,
            timeout_s=options.timeout_s, emulation=_emulation(ctx, job))
    emulation = _emulation(ctx, job) if job.nodes > 1 else None
    return ctx.runtime.run.measure_plan(ready.plan, steps=options.steps,
                                        warmup_steps=options.warmup, nproc=job.world_size,
                                        timeout_s=options.timeout_s, emulation=emulation)


def _with_measured_link(ctx: Context, job: SuiteJob, ready: Prepared, emulation: dict
                        ) -> Prepared:
    """The emulated job predicted again with the link rate the emulated network delivered
    (measured before the ranks started; the mean over the runs), not its line rate."""
    raw, built = suite_job(ctx.db, job, emulation["measured_inter_node_Gbps"] * 1e9)
    return Prepared(ready.plan, raw, built, ctx.predict(built), ctx.uncalibrated_s(built))


def _link_note(job: SuiteJob, emulation: dict) -> str:
    launcher = ", each running its own launcher (`parasim run --nnodes`, torch's " \
        "rendezvous)" if job.launcher == "rendezvous" else ""
    return (f"{job.name}: {job.nodes} emulated nodes{launcher}, link "
            f"{emulation['inter_node_Gbps']:g} Gbit/s line rate, "
            f"{emulation['measured_inter_node_Gbps']:.3f} Gbit/s measured; "
            "predicted with the measured rate")


# Rows and lines ------------------------------------------------------------------------------


def layout_words(layout: Layout, microbatches: int) -> str:
    """The layout's non-default choices: `tp 2, sequence-parallel, 8 micro-batches`."""
    parts = [f"{axis} {getattr(layout, axis)}" for axis in ("tp", "pp", "vpp", "cp", "dp", "ep")
             if getattr(layout, axis) > 1]
    if layout.pp > 1:
        parts.append(layout.schedule)
    if layout.sequence_parallel:
        parts.append("sequence-parallel")
    if layout.recompute != "none":
        parts.append(f"recompute {layout.recompute}")
    if layout.zero_stage:
        parts.append(f"ZeRO-{layout.zero_stage}")
    return ", ".join(parts + [f"{microbatches} micro-batches"])


def _failed(job: SuiteJob, planned: Job | None, prediction: StepPrediction | None,
            reason: str) -> JobResult:
    return JobResult(
        name=job.name,
        layout=layout_words(planned.layout, prediction.microbatches) if prediction else "",
        predicted_step_s=prediction.step_time_s if prediction else None,
        predicted_peak_bytes=prediction.peak_stage.peak_bytes if prediction else None,
        analytic_share=prediction.sources.get("analytic", 0.0) if prediction else 0.0,
        predicted_parts_s=prediction.breakdown.as_dict() if prediction else None,
        failure=" ".join(reason.split()) or "failed")


def _result(job: SuiteJob, planned: Job, prediction: StepPrediction, measured) -> JobResult:
    """The row of a measured job; its phases are those of the busiest rank (the most forward +
    backward time), the rank whose step the prediction's breakdown describes: in a pipeline,
    the slowest stage's compute and what that stage waits (fill and drain), not the first
    stage's longer wait for it."""
    spread = measured.step_time
    busiest = max(measured.ranks, key=lambda rank: rank.phase_s["forward_s"]
                  + rank.phase_s["backward_s"])
    phases = {name.removesuffix("_s"): seconds for name, seconds in busiest.phase_s.items()}
    base = _failed(job, planned, prediction, "-")
    return replace(base, failure="", measured_step_s=spread.median_s,
                   measured_p10_s=spread.p10_s, measured_p90_s=spread.p90_s,
                   measured_peak_bytes=measured.peak_bytes, measured_phases_s=phases)


def job_line(r: JobResult) -> str:
    """One printed line per job."""
    predicted = "no prediction" if r.predicted_step_s is None else \
        f"predicted {r.predicted_step_s:.3f} s"
    if not r.measured:
        return f"{r.name}: {predicted}; failed: {r.failure}"
    return (f"{r.name}: {predicted}, measured {r.measured_step_s:.3f} s (p10 "
            f"{r.measured_p10_s:.3f}, p90 {r.measured_p90_s:.3f}): {percent(r.step_error)}; "
            f"memory {mebibytes(r.predicted_peak_bytes)} vs {mebibytes(r.measured_peak_bytes)} "
            f"MiB: {percent(r.memory_error)}; other load {_two_places(r.other_load_cores)} cores; "
            f"machine speed {_two_places(r.machine_speed)}")


def _two_places(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f}"


# Facts ----------------------------------------------------------------------------------------


def _facts(ctx: Context, suite: Suite, command: str, created: str, threads: int,
           load_before: tuple[float, float, float]) -> RunFacts:
    meta = ctx.db.meta
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = "?"
    return RunFacts(
        command=command, created=created, suite=suite.name,
        suite_description=suite.description, host=socket.gethostname(),
        cpu=str(meta.get("device_name", platform.processor())), cores=os.cpu_count() or 1,
        torch=torch_version, python=platform.python_version(), profile=ctx.db.path,
        profile_threads=meta.get("threads"), profile_quick=meta.get("quick"),
        profile_date=str(meta.get("date", "?")), threads_per_rank=threads,
        steps=ctx.options.steps, warmup_steps=ctx.options.warmup,
        load_before=tuple(load_before), load_after=tuple(os.getloadavg()),
        notes=tuple(ctx.notes), repeats=ctx.options.repeat,
        fitted_profile=next((p for p in ctx.options.profiles if fitted_dir(p)), None))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _warn(message: str) -> None:
    print(f"parasim: warning: {message}", file=sys.stderr, flush=True)
