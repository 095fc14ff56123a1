"""Processes that run one multi-process measurement, and the guarantee that none outlives it.

Shared by `runtime.launch` (the ranks of a plan) and `runtime.collectives_bench` (one group per
collective table). The parent hosts the `TCPStore` (port 0: the OS picks a free one, no race),
starts the processes with the spawn method, reads their messages from one queue and stops them
all, whatever happened: on an error, a dead process, the deadline, Ctrl-C or success.

Each child leaves the parent's process group first thing (`detach_from_parent`), so the parent
can signal the child together with anything the child started (`os.killpg`), a terminal's
Ctrl-C reaches only the parent, and the kernel kills the child if the parent dies first
(PR_SET_PDEATHSIG): no rank or grandchild is left behind.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import pickle
import queue as queue_module
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch.distributed as dist

from parasim.runtime.errors import MeasurementError

HOST = "127.0.0.1"
STOP_GRACE_S = 5.0  # after SIGTERM, before SIGKILL
POLL_S = 0.5  # how often the parent checks for dead processes while waiting
SETTLE_S = 2.0  # after a failure, how long to gather the failures it caused (to find the cause)
MAX_SECONDARY_CHARS = 200  # of each failure after the first in the one-line message
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# Held back while the parent starts a child: a Ctrl-C (or SIGTERM) inside `Process.start()`
# cuts the pipe the spawned child reads its bootstrap from, and the child prints an EOFError
# traceback after the parent's one-line message. The child inherits the mask through exec
# and lifts it in `detach_from_parent`, where any signal held meanwhile is delivered.
DEFERRED_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def host_store(world_size: int, timeout_s: float, host: str = HOST) -> dist.TCPStore:
    """The rendezvous store, served by the parent so that it outlives every rank."""
    return dist.TCPStore(host, 0, world_size, is_master=True, wait_for_workers=False,
                         timeout=timedelta(seconds=timeout_s))


# In the child ---------------------------------------------------------------------------------


def detach_from_parent() -> None:
    """Own process group (the parent kills it whole), die with the parent, leave Ctrl-C to it.

    Runs before the child starts anything, so every grandchild lands in the child's group."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, DEFERRED_SIGNALS)
    os.setpgrp()
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != multiprocessing.parent_process().pid:
            os._exit(1)  # the parent died before prctl: nobody would stop this process


def report_outcome(rank: int, results: Any, run: Callable[[], Any]) -> None:
    """Run `run()` and send ("result", rank, pickled value) or ("error", rank, line, traceback).

    The one place where any exception of a measuring process is caught: it is forwarded to the
    parent (which raises MeasurementError naming the rank) and the process exits with status 1.
    The value is pickled here so that an unpicklable result is an error, not a silent hang."""
    try:
        payload = pickle.dumps(run())
    except Exception as err:  # forwarded whole to the parent, never swallowed
        results.put(("error", rank, error_line(err), traceback.format_exc()))
        raise SystemExit(1) from None
    results.put(("result", rank, payload))


def error_line(err: BaseException) -> str:
    """`Type: message` on one line (the message's first line)."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


# In the parent --------------------------------------------------------------------------------


@contextmanager
def running(processes: list, results: Any) -> Iterator[None]:
    """Start `processes`; on leaving, stop every one of them and close the queue."""
    try:
        held = signal.pthread_sigmask(signal.SIG_BLOCK, DEFERRED_SIGNALS)
        try:
            for process in processes:
                process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)  # a held Ctrl-C is raised here
        yield
    finally:
        stop(processes)
        results.close()
        results.join_thread()


def next_message(label: str, processes: list, results: Any, deadline_s: float,
                 timeout_s: float, pending: Callable[[], str] = lambda: "",
                 member: str = "rank") -> tuple | None:
    """The next queued message, or None after POLL_S; raises if a process died or time is up.

    `label` starts every error message; `pending()` names what had not finished at the
    deadline; `member` is what a process is called in them (a rank, or an emulated node)."""
    left_s = deadline_s - time.monotonic()
    if left_s <= 0:
        raise MeasurementError(f"{label}: {len(processes)} processes did not finish within "
                               f"{timeout_s:g} s{pending()}; stopped them")
    try:
        return results.get(timeout=min(POLL_S, left_s))
    except queue_module.Empty:
        pass
    if any(process.exitcode not in (None, 0) for process in processes):
        raise_failure(label, processes, results, member=member)
    return None


def raise_failure(label: str, processes: list, results: Any, first: tuple | None = None,
                  member: str = "rank") -> None:
    """MeasurementError for a failed run: its first failure, then the others within SETTLE_S.

    One failure brings down the others (peers of a dead rank see their connections reset), and
    the cause is not always the first to arrive: a rank that died without a word (os._exit, a
    signal) is named first, then the errors in their order of arrival. `first`: an
    ("error", rank, line, traceback) message already read."""
    errors = [first] if first is not None else []
    settle_s = time.monotonic() + SETTLE_S
    while time.monotonic() < settle_s and not all(p.exitcode is not None for p in processes):
        errors += _errors_in(results, timeout_s=POLL_S / 5)
    errors += _errors_in(results, timeout_s=0.0)
    told = {message[1] for message in errors}
    causes = [f"{member} {rank} {_exit_text(process.exitcode)}" for rank, process
              in enumerate(processes) if process.exitcode not in (None, 0) and rank not in told]
    causes += [f"{member} {rank} failed: {line}" for _, rank, line, _ in errors]
    assert causes, "raise_failure without a failure"
    then = "; ".join(cause[:MAX_SECONDARY_CHARS] for cause in causes[1:])
    raise MeasurementError(f"{label}: {causes[0]}" + (f"; then {then}" if then else ""),
                           errors[0][3] if errors else "")


def _errors_in(results: Any, timeout_s: float) -> list[tuple]:
    """The error messages queued now (waiting up to timeout_s for the first)."""
    errors = []
    while True:
        try:
            message = results.get(timeout=timeout_s) if timeout_s else results.get_nowait()
        except queue_module.Empty:
            return errors
        timeout_s = 0.0
        if message[0] == "error":
            errors.append(message)


def _exit_text(exitcode: int) -> str:
    if exitcode < 0:
        return f"was killed by {signal.Signals(-exitcode).name}"
    return f"exited with code {exitcode}"


def join(processes: list, deadline_s: float) -> None:
    """Wait for finished processes to exit by themselves (until the deadline)."""
    for process in processes:
        process.join(max(0.0, deadline_s - time.monotonic()))


def stop(processes: list) -> None:
    """SIGTERM every process group, SIGKILL what survives STOP_GRACE_S, reap every process."""
    started = [p for p in processes if p.pid is not None]
    for process in started:
        _signal_group(process, signal.SIGTERM)
    deadline_s = time.monotonic() + STOP_GRACE_S
    for process in started:
        process.join(max(0.0, deadline_s - time.monotonic()))
    for process in started:
        _signal_group(process, signal.SIGKILL)  # also grandchildren that ignored SIGTERM
        process.join()


def _signal_group(process: Any, signum: int) -> None:
    """Signal the process's group (itself and what it started); the process alone if it has
    not reached `detach_from_parent` yet (its group is still the parent's)."""
    try:
        os.killpg(process.pid, signum)
        return
    except ProcessLookupError:
        pass  # no group of that id: not detached yet, or the whole group is gone
    if process.exitcode is None:
        try:
            os.kill(process.pid, signum)
        except ProcessLookupError:
            pass  # exited meanwhile
