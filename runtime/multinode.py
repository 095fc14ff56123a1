"""One node of a multi-node run, started by torch's own launcher (torch.distributed.elastic).

`parasim run PLAN --nnodes N --node-rank R --rdzv-endpoint HOST:PORT` runs on every node what
`torchrun --nnodes N --node-rank R --rdzv-endpoint HOST:PORT --nproc-per-node M` would:
`elastic_launch` (torch.distributed.launcher.api, the API torchrun itself calls from
torch/distributed/run.py) with a `LaunchConfig` of fixed size (min = max = N nodes, no
restarts) and the static TCP rendezvous, torchrun's default backend: node R's agent is group
rank R, node 0 serves the store at HOST:PORT and the others connect to it, so global ranks
R·M ... R·M + M - 1 run on node R, the blocks the plan's rank order places there. (The c10d
backend would order the nodes by host name and process id and ignore --node-rank, torchrun
warns so; the node that writes the measurement would then be any node.)

Each rank joins the default group from torchrun's variables (gloo: the trainer runs on the
CPU, as `runtime.launch` does), checks that every node runs the same plan and options,
trains (`runtime.run.find_trainer`), and global rank 0 gathers every rank's measurement, so
that node 0 alone gets the run's results; the other nodes get None and write nothing.

Failure is one line: a rank's exception (torch's error file, via `record`), a node that
cannot reach the endpoint or is not joined by all others within the timeout (the store's
connect and wait timeout), or the whole run past the timeout (an alarm: the agent stops its
ranks on the way out). Ctrl-C and SIGTERM reach the agent, which stops its ranks; they
surface as KeyboardInterrupt (exit 130 in the CLI).
"""

from __future__ import annotations

import hashlib
import logging
import math
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch.distributed as dist
from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, record
from torch.distributed.elastic.rendezvous.api import RendezvousError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from parasim.planner.plan import Plan
from parasim.runtime.errors import MeasurementError
from parasim.runtime.launch import BACKEND, Worker
from parasim.runtime.measure import Measurement, file_sha256, measurement
from parasim.runtime.nodes import NodeSpec
from parasim.runtime.processes import error_line
from parasim.runtime.run import RunArgs, prepare_run
from parasim.simulator.job import Job

ELASTIC_LOGGER = "torch.distributed.elastic"  # its INFO/WARNING lines are not parasim's output
MONITOR_S = 0.5  # how often the agent checks its ranks
SHUTDOWN_S = 5  # after SIGTERM to the ranks, before SIGKILL (as runtime.processes.STOP_GRACE_S)
# The agent forwards these to its ranks before stopping. Not SIGINT (torchrun's default list
# has it): a Ctrl-C is a KeyboardInterrupt in the agent, which then stops its ranks with
# SIGTERM, quiet even in a rank still starting (a SIGINT there prints a fatal Python error).
HANDLED_SIGNALS = "SIGTERM,SIGHUP,SIGQUIT"
# The rendezvous' run id (it prefixes the store's keys; node 0 makes a new store each run). The
# same on every node whatever it runs, so that nodes that differ meet and the ranks, comparing
# their fingerprints, say so at once instead of waiting in separate rendezvous until the timeout.
RUN_ID = "parasim-run"


class _Deadline(Exception):
    """The run's --timeout passed (raised in the agent by SIGALRM)."""


def measure_on_node(plan: Plan, *, node: NodeSpec, steps: int, warmup_steps: int,
                    timeout_s: float, job: Job | None = None) -> Measurement | None:
    """Run this node's ranks of the plan; the Measurement on node 0, None on the others.
    SpecError before anything starts, MeasurementError if the run fails or times out."""
    worker, args = prepare_run(plan, job=job, steps=steps, warmup_steps=warmup_steps,
                               ranks_here=node.nproc_per_node)
    fingerprint = run_fingerprint(args, node)
    logs = tempfile.mkdtemp(prefix="parasim-node-")
    try:
        config = launch_config(node, RUN_ID, timeout_s, logs)
        with _quiet_elastic(), _deadline(timeout_s):
            values = _launch(config, node, timeout_s, logs, (worker, args, fingerprint))
    finally:
        shutil.rmtree(logs, ignore_errors=True)
    if node.node_rank != 0:
        return None
    return measurement(values[0], plan_path=args.plan_path, steps=steps,
                       warmup_steps=warmup_steps)


def launch_config(node: NodeSpec, run_id: str, timeout_s: float, log_dir: str) -> LaunchConfig:
    """torchrun's configuration of this node (torch/distributed/run.py, config_from_args):
    a fixed number of nodes, no restarts, the static rendezvous at the endpoint; the ranks'
    output goes to `log_dir` (their errors come back through torch's error files)."""
    return LaunchConfig(
        min_nodes=node.nnodes, max_nodes=node.nnodes, nproc_per_node=node.nproc_per_node,
        run_id=run_id, rdzv_backend="static", rdzv_endpoint=node.endpoint,
        rdzv_configs={"rank": node.node_rank, "timeout": max(1, math.ceil(timeout_s))},
        max_restarts=0, monitor_interval=MONITOR_S, start_method="spawn",
        logs_specs=DefaultLogsSpecs(log_dir=log_dir, redirects=Std.ALL),
        shutdown_timeout=SHUTDOWN_S, signals_to_handle=HANDLED_SIGNALS)


def run_fingerprint(args: RunArgs, node: NodeSpec) -> str:
    """What every node must agree on: the plan file's bytes, the (maybe shrunk) job, the steps
    and the node layout."""
    text = "|".join([file_sha256(args.plan_path), repr(args.job), str(args.steps),
                     str(args.warmup_steps), str(node.nnodes), str(node.nproc_per_node)])
    return "parasim-" + hashlib.sha256(text.encode()).hexdigest()[:16]


def _launch(config: LaunchConfig, node: NodeSpec, timeout_s: float, logs: str,
            work: tuple[Worker, RunArgs, str]) -> dict[int, Any]:
    """elastic_launch's return values by global rank; its failures as one line."""
    where = f"node {node.node_rank} of {node.nnodes}"
    joined = f"cannot join the other nodes at {node.endpoint} within {timeout_s:g} s"
    try:
        return elastic_launch(config, node_worker)(*work, timeout_s)
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        raise MeasurementError(f"{where}: rank {rank} failed: {_failure_line(failure)}",
                               _failure_detail(failure)) from None
    except RendezvousError as err:
        raise MeasurementError(f"{where}: the rendezvous at {node.endpoint} failed: "
                               f"{error_line(err)}") from None
    except SignalException as err:
        raise KeyboardInterrupt from err
    except _Deadline:
        if not _ranks_started(logs):
            raise MeasurementError(f"{where}: {joined} ({_JOIN_HINT})") from None
        raise MeasurementError(f"{where}: did not finish within {timeout_s:g} s; stopped "
                               "its ranks") from None
    except (dist.DistError, TimeoutError, OSError) as err:  # the store: connect, wait
        raise MeasurementError(f"{where}: {joined}: {_first_line(err)}") from None


_JOIN_HINT = "is node 0 running with the same endpoint, and is it reachable from here?"


def _ranks_started(logs: str) -> bool:
    """Whether the agent got past the rendezvous: it makes its ranks' log folders
    (`<log_dir>/<run_id>/attempt_0/`, DefaultLogsSpecs.reify) only when it starts them."""
    return any(Path(logs).glob("*/attempt_*"))


def _failure_line(failure: Any) -> str:
    message = failure.message
    if isinstance(message, dict):
        message = message.get("message", "")
    return _first_line(message) if message else f"exit status {failure.exitcode}"


def _failure_detail(failure: Any) -> str:
    data = failure.error_file_data or {}
    message = data.get("message", {}) if isinstance(data, dict) else {}
    extra = message.get("extraInfo", {}) if isinstance(message, dict) else {}
    return str(extra.get("py_callstack", ""))


def _first_line(value: object) -> str:
    lines = str(value).strip().splitlines()
    return lines[0] if lines else type(value).__name__


@contextmanager
def _quiet_elastic() -> Iterator[None]:
    """The agent's own log lines (rendezvous, worker states) off: failures come back as one
    line through the exceptions above. torch gives each of its modules a logger with its own
    level (torch/distributed/elastic/utils/logging.py), so each one is silenced."""
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
               if name == ELASTIC_LOGGER or name.startswith(ELASTIC_LOGGER + ".")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


@contextmanager
def _deadline(timeout_s: float) -> Iterator[None]:
    """_Deadline in the agent's main thread after `timeout_s`; the agent then stops its ranks
    (SimpleElasticAgent.run shuts its workers down on any exception)."""
    def expire(signum, frame):
        raise _Deadline

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# In each rank (started by the elastic agent) --------------------------------------------------


@record
def node_worker(worker: Worker, args: RunArgs, fingerprint: str, timeout_s: float) -> Any:
    """One rank: join the group (torchrun's variables), check that every node runs the same
    run, train; rank 0 returns every rank's result, the others None."""
    dist.init_process_group(BACKEND, timeout=timedelta(seconds=timeout_s))
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        prints: list[Any] = [None] * world
        dist.all_gather_object(prints, fingerprint)
        if len(set(prints)) > 1:
            other = next(r for r, p in enumerate(prints) if p != fingerprint)
            raise MeasurementError(f"rank {other} runs another plan or other options than "
                                   f"rank {rank} (the plan file, --steps, --warmup, --shrink "
                                   "and the node layout must be the same on every node)")
        result = worker(rank, world, args)
        gathered: list[Any] | None = [None] * world if rank == 0 else None
        dist.gather_object(result, gathered, dst=0)
        return gathered
    finally:
        # Also when the rank fails: torch's worker wrapper restores the node's stderr before
        # the interpreter exits, and a group left to exit-time destruction can abort there
        # ("terminate called without an active exception") onto the node's one-line error.
        dist.destroy_process_group()
