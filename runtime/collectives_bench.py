"""Collective timings in separate processes through torch.distributed (collectives.csv).

For each group size n the parent hosts a `TCPStore` on 127.0.0.1 (port 0: the OS picks a free
one, no race) and spawns n processes (`torch.multiprocessing`, spawn) that join one process
group (gloo on the CPU, NCCL on CUDA, rank r on GPU r). Each collective and size is timed as a
training pass calls it: after a barrier every rank computes the same burst of GEMMs (BURST_S,
the same count on every rank), then the collective, and only the collective is timed; at least
MIN_REPEATS runs (small messages on a shared host time bimodally), the runs of all sizes
interleaved; a row is the mean over ranks (as nccl-tests reports by default) of each rank's
mean over its runs.

Why the burst: in a pass the ranks reach a collective after computing, apart by their jitter,
and the first to arrive waits inside the call. Timed straight after a barrier a collective
misses that wait. On this 2-core VM gloo's 512 KiB all_reduce took 1.9-2.3 ms on average after
a barrier and 2.6-4.4 ms after 0.6-12 ms of GEMMs (`reports/local/analysis.md`), where a
tensor-parallel run paid 3 ms per call. BURST_S is a typical gap between two collectives of a
tensor-parallel pass (a block's attention or MLP half of a small model on a CPU core, of a
large one on a GPU).

The mean, not the median that the kernel tables keep: a training step pays every one of its
collectives, so what predicts it is the sum of their expected times, and a median
underestimates that when the times are skewed. They are, in kind: gloo's all_reduce on a
2-core VM takes either about 0.4 ms or about 4 ms (1 KiB to 1 MiB, 40 runs: medians 0.4 to
3.7 ms, means 1.0 to 3.0 ms). Kernel times are tight, so their medians stay.

`bytes` is the full buffer, as `simulator/cost/comm.py` counts it: all_reduce of `bytes`;
all_gather into an output of `bytes` (bytes/n per rank in); reduce_scatter of an input of
`bytes` (bytes/n out); all_to_all_single of `bytes` in and out per rank; p2p (group of 2 only):
half of a send/recv ping-pong of `bytes` between ranks 0 and 1 (one direction).

Rank 0 sends rows to the parent through a queue as it measures them (the progress bar moves);
any rank sends its error. The parent stops every process on error, on a dead process and at
the deadline (`runtime.processes`: terminate, then kill): no process outlives `run_group`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from parasim.runtime import processes
from parasim.runtime.parallel.groups import all_gather_single, reduce_scatter_single
from parasim.runtime.tasks import Rates, Task, TaskResult, Tick, size_text
from parasim.runtime.timing import Timing, median_time_s, run_time_s

COLUMNS = ("collective", "group_size", "bytes", "time_s")
HOST = processes.HOST
STOP_GRACE_S = processes.STOP_GRACE_S
MIN_REPEATS = 40  # small messages on a shared host time bimodally: a mean needs many runs
MIN_WARMUP = 2
BURST_S = 0.005  # compute before each timed collective (module docstring)
BURST_SIDE = 256  # the burst's GEMMs: (BURST_SIDE x BURST_SIDE)², repeated
SPAWN_ESTIMATE_S = 4.0  # starting the processes and the process group (work estimate only)
LOOPBACK_FACTOR = {"cpu": 4.0, "cuda": 0.1}  # transport vs memory rate (work estimate only)
EMULATED_REDUCE_SCATTER = ("reduce_scatter: the {backend} backend has no reduce_scatter here; "
                           "timed as all_reduce of the full buffer plus a local slice copy "
                           "(an upper bound)")


@dataclass(frozen=True, kw_only=True)
class GroupJob:
    """What every process of one group measures (pickled to the spawned processes)."""

    group_size: int
    sizes_bytes: tuple[int, ...]
    collectives: tuple[str, ...]
    device: str  # cpu (gloo) | cuda (nccl)
    dtype: torch.dtype
    timing: Timing
    port: int  # of the parent's TCPStore
    timeout_s: float

    @property
    def measured(self) -> tuple[str, ...]:
        """The collectives this group times: p2p only in a group of two."""
        return tuple(c for c in self.collectives if c != "p2p" or self.group_size == 2)

    @property
    def expected_rows(self) -> int:
        return len(self.measured) * len(self.sizes_bytes)


# The spawned processes ----------------------------------------------------------------------


def _worker(rank: int, job: GroupJob, results: Any) -> None:
    """Entry point of one rank: measure, report rows (rank 0), then its result or its error."""
    processes.detach_from_parent()
    processes.report_outcome(rank, results, lambda: _run_rank(rank, job, results))


def _run_rank(rank: int, job: GroupJob, results: Any) -> None:
    torch.set_num_threads(1)  # n processes share the machine; the work is communication
    timeout = timedelta(seconds=job.timeout_s)
    store = dist.TCPStore(HOST, job.port, job.group_size, is_master=False, timeout=timeout)
    options: dict[str, Any] = {}
    if job.device == "cuda":
        torch.cuda.set_device(rank)
        options["device_id"] = torch.device("cuda", rank)
    backend = "nccl" if job.device == "cuda" else "gloo"
    dist.init_process_group(backend, store=store, rank=rank, world_size=job.group_size,
                            timeout=timeout, **options)
    try:
        emulate = not _reduce_scatter_works(job)
        if emulate and rank == 0 and "reduce_scatter" in job.measured:
            results.put(("note", EMULATED_REDUCE_SCATTER.format(backend=backend)))
        for name in job.measured:
            rows = _measure(name, rank, job, emulate)
            if rank == 0:
                for row in rows:
                    results.put(("row", row))
    finally:
        dist.destroy_process_group()


def _reduce_scatter_works(job: GroupJob) -> bool:
    """Whether the backend runs a tensor reduce-scatter (older gloo builds do not)."""
    n = job.group_size
    full = torch.zeros(n, device=job.device, dtype=job.dtype)
    try:
        reduce_scatter_single(torch.empty(1, device=job.device, dtype=job.dtype), full)
    except (RuntimeError, NotImplementedError, ValueError):
        return False
    return True


def _operation(name: str, elements: int, rank: int, job: GroupJob,
               emulate: bool) -> Callable[[], Any]:
    """The call that runs collective `name` once on a full buffer of `elements`."""
    n, device, dtype = job.group_size, job.device, job.dtype
    full = torch.zeros(elements, device=device, dtype=dtype)  # zeros: sums never overflow
    shard = torch.zeros(elements // n, device=device, dtype=dtype)
    if name == "all_reduce":
        return lambda: dist.all_reduce(full)
    if name == "all_gather":
        return lambda: all_gather_single(full, shard)
    if name == "reduce_scatter" and emulate:
        mine = slice(rank * shard.numel(), (rank + 1) * shard.numel())
        return lambda: (dist.all_reduce(full), shard.copy_(full[mine]))
    if name == "reduce_scatter":
        return lambda: reduce_scatter_single(shard, full)
    if name == "all_to_all":
        received = torch.empty_like(full)
        return lambda: dist.all_to_all_single(received, full)
    assert name == "p2p", name
    peer = 1 - rank
    if rank == 0:
        return lambda: (dist.send(full, peer), dist.recv(full, peer))
    return lambda: (dist.recv(full, peer), dist.send(full, peer))


def _measure(name: str, rank: int, job: GroupJob, emulate: bool) -> list[dict]:
    """Rows of one collective over every size: the mean over ranks of each rank's mean.

    Runs are interleaved over the sizes (round r times every size once, after a barrier and
    the compute burst each), so that a spell of host noise spreads over all sizes instead of
    filling one entry."""
    n = job.group_size
    burst = _burst(job)
    element_bytes = torch.empty((), dtype=job.dtype).element_size()
    counts = [max(n, nbytes // element_bytes // n * n) for nbytes in job.sizes_bytes]
    calls = [_operation(name, elements, rank, job, emulate) for elements in counts]
    times_s: list[list[float]] = [[] for _ in calls]
    for round_index in range(job.timing.warmup + job.timing.repeats):
        for call, series in zip(calls, times_s):
            dist.barrier()
            burst()
            elapsed_s = run_time_s(call, (), job.device)
            if round_index >= job.timing.warmup:
                series.append(elapsed_s / 2 if name == "p2p" else elapsed_s)  # ping-pong: 2 ways
    means = torch.tensor([statistics.fmean(t) for t in times_s], dtype=torch.float64,
                         device=job.device)
    dist.all_reduce(means)  # the mean over ranks, as nccl-tests reports by default (-a 1)
    return [{"collective": name, "group_size": n, "bytes": elements * element_bytes,
             "time_s": float(total_s) / n}
            for elements, total_s in zip(counts, means.tolist())]


def _burst(job: GroupJob) -> Callable[[], None]:
    """GEMMs taking about BURST_S on rank 0, the same count on every rank (rank 0's count is
    broadcast: equal work, so the ranks drift apart by jitter only)."""
    a = torch.randn(BURST_SIDE, BURST_SIDE, device=job.device, dtype=job.dtype)
    one_s = median_time_s(lambda: a @ a, job.device, Timing(warmup=3, repeats=15))
    count = torch.tensor([max(1, round(BURST_S / one_s))], device=job.device)
    dist.broadcast(count, src=0)
    repeats = int(count.item())

    def burst() -> None:
        for _ in range(repeats):
            a @ a
    return burst


# The parent ---------------------------------------------------------------------------------


def run_group(group_size: int, sizes_bytes: tuple[int, ...], collectives: tuple[str, ...],
              device: str, dtype: torch.dtype, timing: Timing, timeout_s: float,
              tick: Tick | None = None) -> TaskResult:
    """Spawn `group_size` processes, collect their rows, stop them all whatever happens."""
    timing = collective_timing(timing)
    context = mp.get_context("spawn")
    store = processes.host_store(group_size, timeout_s)
    job = GroupJob(group_size=group_size, sizes_bytes=tuple(sizes_bytes),
                   collectives=tuple(collectives), device=device, dtype=dtype, timing=timing,
                   port=store.port, timeout_s=timeout_s)
    results = context.Queue()
    ranks = [context.Process(target=_worker, args=(rank, job, results), daemon=True,
                             name=f"parasim-collectives-{group_size}-rank{rank}")
             for rank in range(group_size)]
    try:
        with processes.running(ranks, results):
            return _collect(job, ranks, results, time.monotonic() + timeout_s, tick)
    finally:
        del store  # the store outlives every process that talks to it


def collective_timing(timing: Timing) -> Timing:
    """At least MIN_WARMUP warm-up and MIN_REPEATS timed runs per collective entry."""
    return Timing(warmup=max(timing.warmup, MIN_WARMUP), repeats=max(timing.repeats, MIN_REPEATS))


def _collect(job: GroupJob, ranks: list, results: Any, deadline_s: float,
             tick: Tick | None) -> TaskResult:
    """Read the queue until rank 0 is done; raise on an error, a dead rank or the deadline."""
    rows = []
    notes = [f"collectives: {job.timing.warmup} warm-up and {job.timing.repeats} timed runs per "
             f"entry (at least {MIN_REPEATS}: small messages time bimodally on a shared host)"]
    label = f"collectives, group of {job.group_size}"
    while True:
        message = processes.next_message(label, ranks, results, deadline_s, job.timeout_s)
        if message is None:
            continue
        kind = message[0]
        if kind == "error":
            processes.raise_failure(label, ranks, results, first=message)
        if kind == "note":
            notes.append(message[1])
        elif kind == "row":
            rows.append(message[1])
            if tick is not None:
                row = message[1]
                tick(len(rows) / max(job.expected_rows, 1),
                     f"{row['collective']} n={row['group_size']} {size_text(row['bytes'])} B")
        elif message[1] == 0:  # ("result", rank, payload): rank 0 has sent every row
            assert kind == "result", message
            processes.join(ranks, deadline_s)
            return TaskResult(rows, notes)


def collective_tasks(group_sizes: tuple[int, ...], sizes_bytes: tuple[int, ...],
                     collectives: tuple[str, ...], device: str, dtype: torch.dtype,
                     timing: Timing, rates: Rates, timeout_s: float | None = None) -> list[Task]:
    """One task per group size (one set of processes each)."""
    tasks = []
    per_entry = collective_timing(timing)
    calls = per_entry.warmup + per_entry.repeats
    for n in group_sizes:
        weight_s = SPAWN_ESTIMATE_S + len(collectives) * sum(
            rates.estimate_s(calls, moved_bytes=nbytes * LOOPBACK_FACTOR[device])
            + calls * BURST_S for nbytes in sizes_bytes)
        limit_s = timeout_s if timeout_s is not None else 60.0 + 10.0 * weight_s

        def run(tick: Tick, n: int = n, limit_s: float = limit_s) -> TaskResult:
            return run_group(n, sizes_bytes, collectives, device, dtype, timing, limit_s, tick)

        tasks.append(Task("collectives", f"collectives, {n} processes", weight_s, run))
    return tasks

