"""Small workers for runtime.launch tests (top level: the spawned ranks import them by name).

Each is `worker(rank, world_size, args)`, run by the launcher inside the default gloo group.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

HANG_S = 3600.0


def allreduce_and_time(rank: int, world_size: int, args: dict) -> dict:
    """A few all-reduces (the group works: the sum is checked) and a short sleep, timed."""
    tensor = torch.full((args.get("elements", 1024),), float(rank + 1))
    times_s = []
    for _ in range(args.get("steps", 3)):
        start_s = time.perf_counter()
        buffer = tensor.clone()
        dist.all_reduce(buffer)
        time.sleep(args.get("sleep_s", 0.01))
        times_s.append(time.perf_counter() - start_s)
        assert buffer[0].item() == world_size * (world_size + 1) / 2, buffer[0].item()
    return {"rank": rank, "times_s": times_s, "pid": os.getpid(),
            "env": {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK",
                                                    "LOCAL_WORLD_SIZE", "GROUP_RANK",
                                                    "GLOO_SOCKET_IFNAME")}}


def raise_on_rank_1(rank: int, world_size: int, args: dict) -> int:
    """Rank 1 raises; the others wait in a collective that never completes."""
    if rank == 1:
        raise ValueError("rank 1 fails on purpose")
    dist.barrier()
    return rank


def hang_on_rank_1(rank: int, world_size: int, args: dict) -> int:
    """Rank 1 sleeps far past any timeout; the others wait for it in a barrier."""
    if rank == 1:
        time.sleep(HANG_S)
    dist.barrier()
    return rank


def exit_on_rank_1(rank: int, world_size: int, args: dict) -> int:
    """Rank 1 leaves the process at once with status 3 (no exception, no cleanup)."""
    if rank == 1:
        os._exit(3)
    dist.barrier()
    return rank


def network_view(rank: int, world_size: int, args: dict) -> dict:
    """Which network namespace the rank runs in, which parasim namespaces exist, and the
    group working across them (an all-reduce)."""
    buffer = torch.ones(4)
    dist.all_reduce(buffer)
    return {"rank": rank, "netns_inode": os.stat("/proc/self/ns/net").st_ino,
            "namespaces": sorted(p for p in os.listdir("/var/run/netns")
                                 if p.startswith("parasim-")),
            "sum": buffer[0].item(), "ifname": os.environ.get("GLOO_SOCKET_IFNAME")}


def send_recv_rate(rank: int, world_size: int, args: dict) -> dict:
    """Rank 0 sends args["bytes"] to every other rank in turn (after a warm-up message);
    each receiver reports the rate it received at, in bit/s."""
    tensor = torch.zeros(args["bytes"] // 4, dtype=torch.float32)
    rates = {}
    for peer in range(1, world_size):
        for timed in (False, True):
            dist.barrier()
            start_s = time.perf_counter()
            if rank == 0:
                dist.send(tensor, peer)
            elif rank == peer:
                dist.recv(tensor, 0)
            if rank == peer and timed:
                rates[peer] = tensor.numel() * 4 * 8 / (time.perf_counter() - start_s)
    return rates


def grandchild_then_raise(rank: int, world_size: int, args: dict) -> int:
    """Rank 1 starts a long `sleep` (its pid written to args["pid_file"]), then raises: the
    launcher must stop the grandchild, which outlives rank 1's own process."""
    if rank == 1:
        child = subprocess.Popen(["sleep", str(HANG_S)])
        Path(args["pid_file"]).write_text(str(child.pid), encoding="utf-8")
        raise RuntimeError("rank 1 fails with a grandchild running")
    dist.barrier()
    return rank


def exit_quietly(rank: int, world_size: int, args: dict) -> int:
    """Rank 1 calls sys.exit(0) in the worker: status 0, but no result."""
    if rank == 1:
        sys.exit(0)
    return rank


def unpicklable_result(rank: int, world_size: int, args: dict):
    """A result that cannot travel back to the parent."""
    return lambda: rank


def fake_train_worker(rank: int, world_size: int, args) -> object:
    """Stands in for runtime.train.train_worker: each step an all-reduce and a sleep (longer on
    higher ranks), timed as a trainer times its steps (warm-up steps not kept)."""
    from parasim.runtime.measure import RankMeasurement
    times_s = []
    for step in range(args.warmup_steps + args.steps):
        start_s = time.perf_counter()
        dist.all_reduce(torch.ones(256))
        time.sleep(0.005 * (rank + 1))
        if step >= args.warmup_steps:
            times_s.append(time.perf_counter() - start_s)
    return RankMeasurement(tuple(times_s), 1e6 * (rank + 1),
                           {"step": sum(times_s) / len(times_s)})
