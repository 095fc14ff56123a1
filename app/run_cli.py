"""`parasim run PLAN.json`: execute a plan in local ranks and write MEASUREMENT.json.

On several machines (`--nnodes N --node-rank R --rdzv-endpoint HOST:PORT`, the same command
on every node, runtime/multinode.py) node 0 writes the measurement and the others nothing;
`--export slurm` writes an sbatch script that does so on a Slurm cluster (app/run_slurm.py).

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

MEASUREMENT_OUT = "MEASUREMENT.json"  # --out of a run
SCRIPT_OUT = "run.sbatch"  # --out of --export slurm


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
    nodes = run.add_argument_group(
        "multi-node", "run on several machines, as torchrun does: the same command on every "
        "node, each with its --node-rank; node 0 serves the rendezvous and writes --out")
    nodes.add_argument("--nnodes", type=int, metavar="N", help="nodes in the run")
    nodes.add_argument("--node-rank", type=int, metavar="R", help="this node, 0 to N-1")
    nodes.add_argument("--rdzv-endpoint", metavar="HOST:PORT",
                       help="node 0's address and a free port there (e.g. node001:29500)")
    nodes.add_argument("--nproc-per-node", type=int, metavar="M",
                       help="ranks per node (default: the plan's GPUs per node, at most "
                       "world / N); N x M must be the plan's tp·cp·dp·pp")
    run.add_argument("--export", choices=("slurm",),
                     help="write an sbatch script that runs the plan on its nodes (--out, "
                     f"default {SCRIPT_OUT}) instead of running it here")
    run.add_argument("--out", metavar="MEASUREMENT.json",
                     help=f"where to write the measurement ({MEASUREMENT_OUT}), or the script "
                     "with --export")
    run.add_argument("--force", action="store_true",
                     help="run a plan whose job, catalogs or cost model changed since it was "
                     "planned (its hashes no longer match), and overwrite an existing --out")


def run_command(args: argparse.Namespace, argv: list[str]) -> None:
    """`parasim run`: measure the plan and write the measurement. SpecError (bad input, before
    any process starts: an existing --out, a plan that changed since it was planned) or
    MeasurementError (exit status 1) for the CLI to report."""
    _check_node_flags(args)
    if args.export is not None:
        return export_slurm(args)
    out = args.out or MEASUREMENT_OUT
    if args.nnodes is None or args.node_rank == 0:  # the other nodes write nothing
        check_new_file(out, force=args.force, field="--out")
    plan = read_plan(args.plan)
    for change in check_inputs(args.plan, force=args.force):
        print(f"parasim: warning: {args.plan}: {change}; running it anyway (--force)",
              file=sys.stderr, flush=True)
    if args.nnodes is not None:
        return _run_node(args, plan, out)
    measured = measure(plan, steps=args.steps, warmup=args.warmup,
                       nproc=args.nproc, timeout_s=args.timeout, shrink=args.shrink,
                       emulate_nodes=args.emulate_nodes, inter_node_Gbps=args.inter_node_Gbps,
                       inter_node_latency_us=args.inter_node_latency_us)
    from parasim.runtime.measure import write_measurement

    write_measurement(out, measured, force=args.force)
    print(_summary(measured, out), flush=True)


def _check_node_flags(args: argparse.Namespace) -> None:
    """SpecError for node options that do not go together (before the plan is read)."""
    if args.export is not None or args.nnodes is not None:
        mode = "--export" if args.export is not None else "--nnodes"
        for flag in ("nproc", "emulate_nodes", "inter_node_Gbps"):
            if getattr(args, flag) is not None:
                raise SpecError(_flag(flag), getattr(args, flag), f"is for a run on this "
                                f"machine alone, not with {mode}",
                                "--nproc-per-node M for the ranks of each node")
    if args.export is not None:
        for flag in ("node_rank", "rdzv_endpoint"):
            if getattr(args, flag) is not None:
                raise SpecError(_flag(flag), getattr(args, flag), "is set by the script on "
                                "each node", "leave it out with --export")
        return
    given = [f for f in ("node_rank", "rdzv_endpoint", "nproc_per_node")
             if getattr(args, f) is not None]
    if args.nnodes is None and given:
        raise SpecError(_flag(given[0]), getattr(args, given[0]), "is for a multi-node run",
                        "--nnodes N --node-rank R --rdzv-endpoint HOST:PORT together")
    for flag in ("node_rank", "rdzv_endpoint"):
        if args.nnodes is not None and getattr(args, flag) is None:
            raise SpecError("--nnodes", args.nnodes, f"a multi-node run needs {_flag(flag)} "
                            "too (each node's rank and node 0's address)", "--nnodes N "
                            "--node-rank R --rdzv-endpoint HOST:PORT together")


def _flag(attribute: str) -> str:
    return "--" + attribute.replace("_", "-")


def _node_spec(args: argparse.Namespace, plan: Plan):
    """This node's NodeSpec, checked against the plan (torch-free)."""
    from parasim.runtime.nodes import NodeSpec

    return NodeSpec.of(world_size=plan.job.layout.world_size,
                       gpus_per_node=plan.job.cluster.node_groups[0].gpus_per_node,
                       nnodes=args.nnodes, node_rank=args.node_rank,
                       endpoint=args.rdzv_endpoint, nproc_per_node=args.nproc_per_node)


def _run_node(args: argparse.Namespace, plan: Plan, out: str) -> None:
    """This node's ranks of a multi-node run; node 0 writes the measurement."""
    node = _node_spec(args, plan)
    _check_options(args.steps, args.warmup, None, None)
    require_number("--timeout", args.timeout, 0, 7 * 24 * 3600, above=True)
    job = shrink_job(plan.job) if args.shrink else plan.job
    # The store's connection retries print C++ stack traces; failures come back as one line.
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "FATAL")
    _load_runtime(plan, emulates=False)
    from parasim.runtime.launch import check_launch
    from parasim.runtime.multinode import measure_on_node

    check_launch(node.nproc_per_node, args.timeout)
    with sigterm_as_exit():
        measured = measure_on_node(plan, node=node, steps=args.steps, warmup_steps=args.warmup,
                                   timeout_s=args.timeout, job=job)
    last = node.first_rank + node.nproc_per_node - 1
    if measured is None:
        print(f"node {node.node_rank} of {node.nnodes}: ranks {node.first_rank} to {last} "
              f"done; node 0 writes the measurement", flush=True)
        return
    from parasim.runtime.measure import write_measurement

    write_measurement(out, measured, force=args.force)
    print(f"{_summary(measured, out)} ({node.nnodes} nodes of {node.nproc_per_node})",
          flush=True)


def export_slurm(args: argparse.Namespace) -> None:
    """`--export slurm`: the sbatch script, atomically (an existing one only with --force)."""
    from parasim.run_slurm import SlurmRun, sbatch_script
    from parasim.runtime.nodes import split_world
    from parasim.simulator.files import write_text_atomic

    out = args.out or SCRIPT_OUT
    check_new_file(out, force=args.force, field="--out")
    plan = read_plan(args.plan)
    _check_options(args.steps, args.warmup, None, None)
    require_number("--timeout", args.timeout, 0, 7 * 24 * 3600, above=True)
    nnodes, nproc = split_world(plan.job.layout.world_size,
                                plan.job.cluster.node_groups[0].gpus_per_node,
                                args.nnodes, args.nproc_per_node)
    run = SlurmRun(plan_path=args.plan, nnodes=nnodes, nproc_per_node=nproc, steps=args.steps,
                   warmup_steps=args.warmup, timeout_s=args.timeout, shrink=args.shrink)
    write_text_atomic(out, sbatch_script(run), force=args.force, field="--out")
    print(f"wrote {out}: {nnodes} nodes x {nproc} ranks; submit it with `sbatch {out}`",
          flush=True)


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
