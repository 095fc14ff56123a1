"""`parasim`: the one front door (DESIGN.md, "Command line").

User errors (`SpecError`, `Infeasible`) end as one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from types import ModuleType

from parasim import topo
from parasim.calibrate_cli import add_calibrate_parser, calibrate_command
from parasim.planner.plan import load_job_or_plan
from parasim.plan_cli import plan_command
from parasim.report import duration, format_estimate, format_listing
from parasim.run_cli import add_run_parser, run_command, sigterm_as_exit
from parasim.validate_cli import add_validate_parser, validate_command
from parasim.simulator.calibration.fitted import load_profiles
from parasim.simulator.economics import with_monte_carlo
from parasim.simulator.checks import require_number
from parasim.simulator.errors import ParasimError, SpecError
from parasim.simulator.files import check_new_file
from parasim.simulator.jobfile import load_job
from parasim.simulator.predict import predict
from parasim.simulator.profile import mismatches
from parasim.simulator.trace import write_chrome_trace

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line like every other user error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="parasim", description="Cluster simulator and parallelism planner "
                     "for large-model training.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    estimate = commands.add_parser("estimate", help="predict time, memory and MFU of a layout")
    estimate.add_argument("jobs", nargs="+", metavar="JOB", help="job file(s), YAML or JSON")
    estimate.add_argument("--set", dest="overrides", action="append", default=[],
                          metavar="KEY=VALUE", help="override a job field, e.g. parallel.tp=4")
    estimate.add_argument("--json", action="store_true",
                          help="one JSON object per job, one per line")
    estimate.add_argument("--profile", metavar="NAME", action="append",
                          help="measured profile (a folder written by `parasim profile`, or a "
                          "name under profiles/measured/) or fitted profile (written by "
                          "`parasim calibrate`, or a name under profiles/fitted/); give one "
                          "of each to combine them (default: the analytic model)")
    estimate.add_argument("--trace", metavar="FILE",
                          help="write the simulated step as a Chrome trace (opens in Perfetto; "
                          "one job only): per pipeline rank its compute and its tp, cp, ep, pp "
                          "and dp communication")
    estimate.add_argument("--force", action="store_true", help="overwrite an existing --trace "
                          "file")
    estimate.add_argument("--monte-carlo", type=int, metavar="N",
                          help="also simulate N runs with random failures (seeded): the spread "
                          "of the whole run's days (needs training.tokens)")
    estimate.add_argument("--strict", action="store_true",
                          help="a profile of another device or precision is an error, not a "
                          "warning")
    graph = commands.add_parser("topo", help="the cluster graph and where the parallel groups "
                                "land")
    graph.add_argument("job", metavar="JOB", help="job file, YAML or JSON")
    graph.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="KEY=VALUE", help="override a job field, e.g. parallel.tp=4")
    graph.add_argument("--png", metavar="FILE", help="draw the fabric and the first group of "
                       "each axis into FILE")
    graph.add_argument("--force", action="store_true", help="overwrite an existing --png file")
    _add_profile_parser(commands)
    plan = commands.add_parser("plan", help="search the best parallel layout of a job")
    plan.add_argument("job", metavar="JOB", help="job file; `parallel:` fields are held fixed")
    plan.add_argument("--set", dest="overrides", action="append", default=[],
                      metavar="KEY=VALUE", help="override a job field")
    plan.add_argument("--objective", choices=("time", "cost", "energy"), default="time")
    plan.add_argument("--max-gpus", type=int, metavar="N",
                      help="also try fewer nodes: every power of two up to N GPUs")
    plan.add_argument("--top", type=int, default=5, metavar="K", help="layouts to report")
    plan.add_argument("--out", metavar="PLAN.json", help="write the plan file")
    plan.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.add_argument("--export", choices=("megatron", "torchtitan"),
                      help="print the chosen layout as Megatron-LM flags or torchtitan config")
    plan.add_argument("--profile", metavar="NAME", help="fitted profile (`parasim "
                      "calibrate`): its constants, and its prediction interval to tell ties")
    add_run_parser(commands)
    add_calibrate_parser(commands)
    add_validate_parser(commands)
    listing = commands.add_parser("list", help="list catalog entries")
    listing.add_argument("kind", choices=("models", "gpus", "clusters"))
    return parser


def _add_profile_parser(commands: argparse._SubParsersAction) -> None:
    profile = commands.add_parser("profile", help="measure op and collective times on this "
                                  "machine into a profile folder (needs PyTorch)")
    profile.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                         help="what to profile (default: cpu)")
    profile.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default=None,
                         help="precision of every table (default: bf16 on cuda, fp32 on cpu)")
    profile.add_argument("--quick", action="store_true",
                         help="small grids: about four minutes on a 2-core CPU")
    profile.add_argument("--out", metavar="DIR", default=None,
                         help="output folder (default: profiles/measured/DEVICE-DTYPE[-quick])")
    profile.add_argument("--threads", type=int, metavar="N",
                         help="torch threads while timing the ops (default: torch's); a run's "
                         "ranks each use cores / ranks, so profile at that count to predict "
                         "them")
    profile.add_argument("--force", action="store_true",
                         help="write into an --out folder that is not empty (its other files "
                         "are kept), and keep tables measured while the host was too busy")
    profile.add_argument("--progress", action="store_true",
                         help="draw the progress bar even when stderr is not a terminal")


# What an interrupted command leaves, in its one line (exit status 130).
INTERRUPTED = {
    "run": "no measurement written, every rank stopped",
    "validate": "every rank stopped, no report written",
    "profile": "nothing written (the --out folder is as it was)",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; every user error is one line on stderr with the error's exit status
    (2 bad input, 1 a run that failed), Ctrl-C one line and 130."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    command = COMMANDS[args.command]
    try:
        check_numeric_flags(args)
        return command(args, argv) or 0
    except ParasimError as err:
        return _fail(err)
    except KeyboardInterrupt:
        why = INTERRUPTED.get(args.command, "nothing written")
        print(f"parasim: interrupted; {why}", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (`parasim estimate ... | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


# The numeric options checked here, before any command starts (so that no work, nor torch,
# begins on one): attribute -> (smallest, largest, above the smallest). The integer options
# not listed (--steps, --warmup, --repeat, --top, --max-evaluations, ...) are whole numbers by
# argparse and checked by their commands before any work.
NUMERIC_FLAGS = {
    "timeout": (0, 7 * 24 * 3600, True), "inter_node_Gbps": (0, 1e6, True),
    "inter_node_latency_us": (0, 1e7, False), "nproc": (1, None, False),
    "emulate_nodes": (1, None, False), "max_gpus": (1, None, False),
    "monte_carlo": (1, 1_000_000, False),
}


def check_numeric_flags(args: argparse.Namespace) -> None:
    """SpecError for a numeric option that is NaN, infinite or out of its range."""
    for name, (low, high, above) in NUMERIC_FLAGS.items():
        value = getattr(args, name, None)
        if value is not None:
            require_number("--" + name.replace("_", "-"), value, low, high, above=above,
                           noun="an integer" if isinstance(value, int) else "a number")
    threads = getattr(args, "threads", None)
    if threads is not None:
        cores = os.cpu_count() or 1
        require_number("--threads", threads, 1, cores, valid=f"a thread count for this "
                       f"machine's {cores} cores: 1 to {cores}")


def _list(args: argparse.Namespace, argv: list[str]) -> None:
    print(format_listing(args.kind))


def _topo(args: argparse.Namespace, argv: list[str]) -> None:
    """`parasim topo`: the graph summary, the placement of each axis, optionally a PNG."""
    if args.png:
        check_new_file(args.png, force=args.force, field="--png")
    job = load_job(args.job, args.overrides)
    topology = topo.topology_of(job)
    places = topo.placements(job, topology) if job.layout is not None else None
    print(topo.format_topo(job, topology, places), flush=True)
    if args.png:
        topo.draw_png(job, topology, places, args.png, force=args.force)


def _profile(args: argparse.Namespace, argv: list[str]) -> None:
    """`parasim profile`: runtime.profiler, imported here so that the app never needs torch
    for its other commands."""
    profiler = _load_profiler(args.device)
    with sigterm_as_exit():  # unwinds like Ctrl-C: the staged tables are removed
        result = profiler.profile(args.device, args.dtype, args.quick, args.out,
                                  True if args.progress else None, force=args.force,
                                  threads=args.threads, keep_unsteady=args.force)
    tables = ", ".join(f"{name}.csv ({rows} rows)" for name, rows in result.rows.items())
    print(f"wrote {result.out_dir}: {tables}, meta.json in {duration(result.elapsed_s)}",
          flush=True)


def _load_profiler(device: str) -> ModuleType:
    """runtime.profiler, or a SpecError naming the missing PyTorch."""
    try:
        from parasim.runtime import profiler
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] != "torch":
            raise
        raise SpecError("--device", device, "the profiler needs PyTorch: pip install "
                        "'.[runtime]'") from None
    return profiler


def _estimate(args: argparse.Namespace, argv: list[str]) -> int:
    """`parasim estimate`: each job's prediction; a job that fails is reported and the others
    still run (exit status 2 if any failed)."""
    if args.trace and len(args.jobs) > 1:
        raise SpecError("--trace", args.trace, "writes the timeline of one job",
                        "one JOB with --trace")
    if args.trace:
        check_new_file(args.trace, force=args.force, field="--trace")
    fitted, measured = load_profiles(args.profile or [])
    status = 0
    for path in args.jobs:
        try:
            prediction, job = _estimate_one(path, args, fitted, measured)
        except ParasimError as err:
            status = EXIT_USER_ERROR
            if args.json:
                print(json.dumps({"job": path, "error": str(err)}), flush=True)
            _fail(err, path if len(args.jobs) > 1 else None)
            continue
        if args.json:
            print(json.dumps({"job": path, **prediction.to_json()}), flush=True)
        else:
            print(format_estimate(job, prediction), flush=True)
    return status


def _estimate_one(path: str, args: argparse.Namespace, fitted, measured):
    """(prediction, job) of one job file or plan file, its trace written when asked."""
    job = load_job_or_plan(path, args.overrides)
    if job.layout is None:
        raise SpecError("parallel", None, "missing: estimate predicts one layout",
                        "a parallel section, e.g. {tp: 8, pp: 4} (plan searches layouts)")
    _check_profile(measured, job, args.strict)
    prediction = predict(job, profile=fitted, measured=measured, record=args.trace is not None)
    if args.monte_carlo is not None:
        prediction = with_monte_carlo(prediction, job, args.monte_carlo)
    if args.trace:
        write_chrome_trace(args.trace, prediction.intervals, force=args.force,
                           title=f"{job.model.name}: {job.source}")
    return prediction, job


def _check_profile(measured, job, strict: bool) -> None:
    """A profile of another device or precision: a warning, or with --strict an error."""
    if measured is None:
        return
    gpus = {group.gpu.name for group in job.cluster.node_groups}
    for why in mismatches(measured, gpus, job.training.precision):
        if strict:
            raise SpecError("--profile", measured.path, why, "a profile of the job's GPU and "
                            "precision, or drop --strict to use it anyway")
        print(f"parasim: warning: {why}; its times are used as measured", file=sys.stderr,
              flush=True)


def _fail(err: ParasimError, path: str | None = None) -> int:
    where = f"{path}: " if path else ""
    print(f"parasim: error: {where}{err}", file=sys.stderr, flush=True)
    return err.exit_status


COMMANDS = {"estimate": _estimate, "plan": plan_command, "topo": _topo, "profile": _profile,
            "run": run_command, "validate": validate_command, "calibrate": calibrate_command,
            "list": _list}


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
