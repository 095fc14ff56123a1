"""How busy this host was with other work while a job ran: the report's noise witness.

A local validation times ranks that each own one core; any other process on the host takes
cores from them and shows up as error that is no fault of the model. So each job's row
carries the mean number of cores that processes other than `parasim validate` and its ranks
kept busy while it ran: the host's busy time from /proc/stat (user, nice, system and steal;
proc(5)) minus the CPU time of this process and its finished children (`os.times`; the ranks
are children, reaped before the sample after them). Interrupt and softirq time is left out:
no process is charged for it, and much of it is the job's own network traffic. Linux only;
None elsewhere.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

PROC_STAT = Path("/proc/stat")
BUSY_FIELDS = (0, 1, 2, 7)  # user nice system [idle iowait irq softirq] steal


@dataclass(frozen=True)
class CpuSample:
    """Cumulative CPU seconds at one moment."""

    wall_s: float  # monotonic clock
    host_busy_s: float  # every core's non-idle time since boot
    ours_s: float  # this process and its reaped children, user + system


def cpu_sample() -> CpuSample | None:
    try:
        line = PROC_STAT.read_text(encoding="ascii").splitlines()[0]
    except (OSError, IndexError):
        return None
    fields = line.split()
    if fields[0] != "cpu" or len(fields) < 9:
        return None
    ticks = [int(fields[1 + i]) for i in BUSY_FIELDS]
    own = os.times()
    return CpuSample(wall_s=time.monotonic(),
                     host_busy_s=sum(ticks) / os.sysconf("SC_CLK_TCK"),
                     ours_s=own.user + own.system + own.children_user + own.children_system)


def other_load_cores(before: CpuSample | None, after: CpuSample | None) -> float | None:
    """Mean cores kept busy by other processes between the samples (never below 0: the two
    clocks tick at different resolutions)."""
    if before is None or after is None or after.wall_s <= before.wall_s:
        return None
    other = (after.host_busy_s - before.host_busy_s) - (after.ours_s - before.ours_s)
    return max(0.0, other / (after.wall_s - before.wall_s))
