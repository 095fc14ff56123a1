"""Launch the ranks of a run: one process per rank, joined in one process group, results back.

`launch(worker, nproc, args, timeout_s)` starts `nproc` processes (spawn), each joins the
default process group (gloo, rendezvous through a `TCPStore` served by the parent) and calls
`worker(rank, world_size, args)`; its return value comes back to the parent, in rank order.
`worker` is a top-level function (pickled by name) and its result must pickle.

Inside the worker the default group is ready (`torch.distributed` calls just work) and the
usual variables are set (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE, GROUP_RANK = the emulated node); the launcher destroys the group after.

Failure ends the run, never hangs it: a rank that raises, dies or exits without a result stops
every rank at once and raises MeasurementError naming the rank and the exception line; at
`timeout_s` after the start (spawning included) the same with the ranks still running. Every
process and anything it started is gone when `launch` returns or raises (runtime.processes).

With `emulation`, the ranks of emulated node k run inside network namespace k of an emulated
multi-node network (runtime.netns), which exists only for the duration of the call.
Bad input (too many processes, emulation without root) is a SpecError before anything starts.
"""

from __future__ import annotations

import os
import pickle
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch.distributed as dist
import torch.multiprocessing as mp

from parasim.runtime import netns, processes
from parasim.runtime.errors import MeasurementError
from parasim.runtime.netns import Emulation, Network
from parasim.simulator.errors import SpecError

MAX_PROCESSES = 256  # beyond any plan this runtime executes on one machine
PROCESSES_PER_CPU = 4  # more ranks than that per core only measure the scheduler
BACKEND = "gloo"  # the trainer runs on the CPU (runtime/train.py: fp32 on the host's cores)
Worker = Callable[[int, int, Any], Any]


@dataclass(frozen=True, kw_only=True)
class RankSpec:
    """What one rank needs to join the group (pickled to its process)."""

    rank: int
    world_size: int
    store_host: str  # the parent's TCPStore
    store_port: int
    timeout_s: float  # of the store and of every collective
    node: int  # emulated node (0 without emulation)
    ranks_per_node: int
    namespace: str | None  # the node's network namespace; None: the host's network
    interface: str | None  # GLOO_SOCKET_IFNAME; None: gloo's choice


def process_limit() -> int:
    return min(MAX_PROCESSES, PROCESSES_PER_CPU * (os.cpu_count() or 1))


def check_launch(nproc: int, timeout_s: float, emulation: Emulation | None = None) -> None:
    """SpecError for a run that cannot start here (called before any process exists)."""
    limit = process_limit()
    if not isinstance(nproc, int) or not 1 <= nproc <= limit:
        raise SpecError("--nproc", nproc, f"is not a number of processes this machine runs "
                        f"({os.cpu_count()} CPUs, at most {PROCESSES_PER_CPU} processes each)",
                        f"1 to {limit} (a plan of fewer ranks, or --nproc N)")
    if not timeout_s > 0:
        raise SpecError("--timeout", timeout_s, "must be positive", "seconds, e.g. 600")
    if emulation is not None:
        netns.check_can_emulate(emulation, nproc)


def launch(worker: Worker, nproc: int, args: Any, timeout_s: float,
           emulation: Emulation | None = None) -> list[Any]:
    """Run `worker(rank, nproc, args)` in `nproc` processes; their results in rank order."""
    check_launch(nproc, timeout_s, emulation)
    network_context = netns.emulated_network(emulation) if emulation else nullcontext(None)
    with network_context as network:
        return launch_on(network, worker, nproc, args, timeout_s)


def launch_on(network: Network | None, worker: Worker, nproc: int, args: Any,
              timeout_s: float) -> list[Any]:
    """`launch` on a network that exists already (the caller has checked and built it, e.g.
    to measure its links first), or on this host's (None)."""
    store = _host_store(nproc, timeout_s, network)  # outlives the ranks: _run stops them
    specs = [_rank_spec(rank, nproc, store, timeout_s, network) for rank in range(nproc)]
    return _run(worker, specs, args, timeout_s)


def _host_store(world_size: int, timeout_s: float, network: Network | None) -> Any:
    """The parent's store: on loopback, or in the emulated network's hub (every node sees it).

    A socket stays in the namespace it was made in, so the parent can go back at once."""
    if network is None:
        return processes.host_store(world_size, timeout_s)
    with netns.entered(network.hub):
        return processes.host_store(world_size, timeout_s, network.hub_address)


def _rank_spec(rank: int, world_size: int, store: Any, timeout_s: float,
               network: Network | None) -> RankSpec:
    nodes = len(network.nodes) if network else 1
    per_node = world_size // nodes
    node = rank // per_node
    return RankSpec(rank=rank, world_size=world_size, store_host=store.host,
                    store_port=store.port, timeout_s=timeout_s, node=node,
                    ranks_per_node=per_node,
                    namespace=network.nodes[node] if network else None,
                    interface=network.interface if network else None)


def _run(worker: Worker, specs: list[RankSpec], args: Any, timeout_s: float) -> list[Any]:
    context = mp.get_context("spawn")
    results = context.Queue()
    ranks = [context.Process(target=_rank_main, args=(spec, worker, args, results),
                             daemon=True, name=f"parasim-rank{spec.rank}") for spec in specs]
    with processes.running(ranks, results):
        return _collect(ranks, results, time.monotonic() + timeout_s, timeout_s)


def _collect(ranks: list, results: Any, deadline_s: float, timeout_s: float) -> list[Any]:
    """Every rank's result; MeasurementError on an error, a dead rank or the deadline."""
    outcomes: dict[int, Any] = {}
    silent: set[int] = set()
    label = f"run of {len(ranks)} ranks"

    def pending() -> str:
        return "; ranks still running: " + ", ".join(
            str(r) for r in range(len(ranks)) if r not in outcomes)

    while len(outcomes) < len(ranks):
        message = processes.next_message(label, ranks, results, deadline_s, timeout_s, pending)
        if message is None:
            silent = _check_silent(label, ranks, outcomes, silent)
        elif message[0] == "error":
            processes.raise_failure(label, ranks, results, first=message)
        else:
            assert message[0] == "result", message
            outcomes[message[1]] = pickle.loads(message[2])
    processes.join(ranks, deadline_s)
    return [outcomes[rank] for rank in range(len(ranks))]


def _check_silent(label: str, ranks: list, outcomes: dict[int, Any], seen: set[int]
                  ) -> set[int]:
    """Ranks that exited with status 0 but sent nothing (sys.exit or os._exit in the worker).

    Raises for a rank seen so at a second empty poll: a result queued before the exit would
    have arrived by then. Returns the ranks seen so for the first time."""
    silent = {r for r, p in enumerate(ranks) if r not in outcomes and p.exitcode == 0}
    for rank in sorted(silent & seen):
        raise MeasurementError(f"{label}: rank {rank} exited without a result "
                               "(sys.exit or os._exit in the worker?)")
    return silent


# In the rank's process ------------------------------------------------------------------------


def _rank_main(spec: RankSpec, worker: Worker, args: Any, results: Any) -> None:
    """Entry point of one rank's process."""
    processes.detach_from_parent()
    processes.report_outcome(spec.rank, results, lambda: _join_and_work(spec, worker, args))


def _join_and_work(spec: RankSpec, worker: Worker, args: Any) -> Any:
    if spec.namespace is not None:
        netns.enter(spec.namespace)  # before any socket: gloo and the store connect from here
    os.environ.update(rank_environment(spec))
    timeout = timedelta(seconds=spec.timeout_s)
    store = dist.TCPStore(spec.store_host, spec.store_port, spec.world_size, is_master=False,
                          timeout=timeout)
    dist.init_process_group(BACKEND, store=store, rank=spec.rank, world_size=spec.world_size,
                            timeout=timeout)
    result = worker(spec.rank, spec.world_size, args)
    # Not in a `finally`: after an error the group's connections close only when the process
    # exits, after its error is queued, so that the cause reaches the parent before the errors
    # of the peers it leaves behind.
    dist.destroy_process_group()
    return result


def rank_environment(spec: RankSpec) -> dict[str, str]:
    """The torchrun variables, for code that reads them, and gloo's interface if emulated."""
    env = {"MASTER_ADDR": spec.store_host, "MASTER_PORT": str(spec.store_port),
           "RANK": str(spec.rank), "WORLD_SIZE": str(spec.world_size),
           "LOCAL_RANK": str(spec.rank % spec.ranks_per_node),
           "LOCAL_WORLD_SIZE": str(spec.ranks_per_node), "GROUP_RANK": str(spec.node)}
    if spec.interface is not None:
        env["GLOO_SOCKET_IFNAME"] = spec.interface
    return env
