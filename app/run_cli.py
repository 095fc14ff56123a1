"""`parasim run PLAN.json`: execute a plan in local ranks and write MEASUREMENT.json.

The plan file and the options are checked here, torch-free; the runtime (torch) is imported
only to run, so that the other commands never need it. Exit status: 0 measured, 2 bad input
(one line, before any process starts), 1 the run failed (a rank raised, died or hung: the line
names it), 130 interrupted. Every rank and emulated namespace is gone in every case.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

from parasim.planner.plan import Plan, check_inputs, read_plan
from parasim.report import GiB, durations
from parasim.runtime.shrink import shrink_job
from parasim.simulator.checks import require_number
from parasim.simulator.errors import SpecError
from parasim.simulator.files import check_new_file


def add_run_parser(commands: argparse._SubParsersAction) -> None:
    run = commands.add_parser("run", help="execute a plan in local processes (torch.distributed, "
                              "gloo) and measure its step time and memory (needs PyTorch)")
    run.add_argument("plan", metavar="PLAN.json", help="a plan file from `parasim plan --out`")
    run.add_argument("--steps", type=int, default=10, metavar="N", help="timed steps (10)")
    run.add_argument("--warmup", type=int, default=2, metavar="N",
                     help="untimed steps before them (2)")
    run.add_argument("--nproc", type=int, metavar="N",
                     help="processes (default: the plan's tp·pp·dp·cp)")
    run.add_argument("--timeout", type=float, default=600.0, metavar="S",
                     help="stop every rank after S seconds, start-up included (600)")
    run.add_argument("--emulate-nodes", type=int, metavar="K",
                     help="split the ranks over K emulated nodes: network namespaces joined by "
                     "rate-limited links (root; Linux)")
    run.add_argument("--inter-node-Gbps", type=float, metavar="X",
                     help="line rate of each emulated node's link, each direction")
    run.add_argument("--inter-node-latency-us", type=float, default=0.0, metavar="US",
                     help="one-way latency added between emulated nodes (needs sch_netem)")
    run.add_argument("--shrink", action="store_true",
                     help="run the plan's layout on a small model of the same family "
                     "(runtime/shrink.py): for plans of models this machine cannot hold")
    run.add_argument("--out", default="MEASUREMENT.json", metavar="MEASUREMENT.json",
                     help="where to write the measurement (MEASUREMENT.json)")
    run.add_argument("--force", action="store_true",
                     help="run a plan whose job, catalogs or cost model changed since it was "
                     "planned (its hashes no longer match), and overwrite an existing --out")


def run_command(args: argparse.Namespace, argv: list[str]) -> None:
    """`parasim run`: measure the plan and write the measurement. SpecError (bad input, before
    any process starts: an existing --out, a plan that changed since it was planned) or
    MeasurementError (exit status 1) for the CLI to report."""
    check_new_file(args.out, force=args.force, field="--out")
    plan = read_plan(args.plan)
    for change in check_inputs(args.plan, force=args.force):
        print(f"parasim: warning: {args.plan}: {change}; running it anyway (--force)",
              file=sys.stderr, flush=True)
    measured = measure(plan, steps=args.steps, warmup=args.warmup,
                       nproc=args.nproc, timeout_s=args.timeout, shrink=args.shrink,
                       emulate_nodes=args.emulate_nodes, inter_node_Gbps=args.inter_node_Gbps,
                       inter_node_latency_us=args.inter_node_latency_us)
    from parasim.runtime.measure import write_measurement

    write_measurement(args.out, measured, force=args.force)
    print(_summary(measured, args.out), flush=True)


def measure(plan: Plan, *, steps: int, warmup: int, nproc: int | None, timeout_s: float,
            shrink: bool, emulate_nodes: int | None, inter_node_Gbps: float | None,
            inter_node_latency_us: float):
    """`parasim.run`: the plan's Measurement (runtime.run.measure_plan, which imports torch)."""
    _check_options(steps, warmup, emulate_nodes, inter_node_Gbps)
    require_number("--timeout", timeout_s, 0, 7 * 24 * 3600, above=True)
    job = shrink_job(plan.job) if shrink else plan.job
    run = _load_runtime(plan, emulate_nodes is not None)
    emulation = None
    if emulate_nodes is not None:
        emulation = run.netns.Emulation(nodes=emulate_nodes,
                                        inter_node_bits_per_s=inter_node_Gbps * 1e9,
                                        latency_s=inter_node_latency_us * 1e-6)
    with sigterm_as_exit():
        return run.measure_plan(plan, job=job, steps=steps, warmup_steps=warmup,
                                nproc=nproc if nproc is not None else job.layout.world_size,
                                timeout_s=timeout_s, emulation=emulation)


def _check_options(steps: int, warmup: int, emulate_nodes: int | None,
                   inter_node_Gbps: float | None) -> None:
    if steps < 1:
        raise SpecError("--steps", steps, "must time at least one step", "1 or more")
    if warmup < 0:
        raise SpecError("--warmup", warmup, "must not be negative", "0 or more")
    if (emulate_nodes is None) != (inter_node_Gbps is None):
        given = "--emulate-nodes" if emulate_nodes is not None else "--inter-node-Gbps"
        raise SpecError(given, emulate_nodes or inter_node_Gbps,
                        "emulating nodes needs both the node count and the link rate",
                        "--emulate-nodes K --inter-node-Gbps X together")


def _load_runtime(plan: Plan, emulates: bool) -> ModuleType:
    """runtime.run (imports torch), or a SpecError naming the missing PyTorch."""
    if emulates:
        # The namespaces' addresses have no host names: without this every rank's store client
        # warns once that it cannot look its own up (harmless). Set before torch loads.
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    try:
        from parasim.runtime import run
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] != "torch":
            raise
        raise SpecError("plan", str(plan.path), "parasim run needs PyTorch",
                        "pip install '.[runtime]'") from None
    return run


@contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so that the ranks and namespaces are removed."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _summary(measured, out: str) -> str:
    spread = measured.step_time
    median, p10, p90 = durations(spread.median_s, spread.p10_s, spread.p90_s)
    return (f"measured {len(measured.step_times_s)} steps on {len(measured.ranks)} ranks: "
            f"step time {median} (p10 {p10}, p90 {p90}), peak memory "
            f"{_size(measured.peak_bytes)} per rank at most; wrote {out}")


def _size(nbytes: float) -> str:
    return f"{nbytes / GiB:.2f} GiB" if nbytes >= GiB else f"{nbytes / 2**20:.1f} MiB"
