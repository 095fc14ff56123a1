"""How fast this machine computes now against when it was profiled: the report's drift witness.

A validation predicts every job from one profile and runs the jobs minutes later. On a shared
VM the machine's speed drifts over minutes (noisy neighbours, memory bandwidth taken by other
guests): on the 2-core VM of `reports/local` the same single-process forward + backward took
0.70 s and, 30 minutes later, 0.75 s, and one job measured 0.93 s and 1.13 s in two runs of
the suite. Such drift is error no model can remove, so each job's row says how large it was.

The probe times, at the profile's thread count, two kernels the profile holds: the forward
GEMM of PROBE_GEMM (compute-bound) and the residual add of PROBE_ADD elements
(memory-bound). Speed = the profile's summed time of the two over their summed time now:
1.0 as profiled, 0.9 when the machine is 10% slower now. It is reported, never used to
correct a prediction.
"""

from __future__ import annotations

import torch

from parasim.runtime.timing import Timing, median_time_s
from parasim.simulator.profile import ProfileDB

PROBE_GEMM = (512, 512, 512)  # m, n, k: inside every CPU grid (runtime/grids.py)
PROBE_ADD = 2**20  # elements: inside every elementwise grid
PROBE_TIMING = Timing(warmup=3, repeats=15)


def machine_speed(db: ProfileDB, threads: int) -> float | None:
    """Profiled over current time of the probe kernels; None if the profile lacks them."""
    gemm = db.gemm.get("forward")
    add = db.elementwise.get(("add", "forward"))
    profiled = [gemm.lookup(PROBE_GEMM) if gemm else None,
                add.lookup((PROBE_ADD,)) if add else None]
    if any(p is None or p.source != "measured" for p in profiled):
        return None
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        m, n, k = PROBE_GEMM
        a, b = torch.randn(m, k), torch.randn(k, n)
        x, y = torch.randn(PROBE_ADD), torch.randn(PROBE_ADD)
        now_s = (median_time_s(lambda: a @ b, "cpu", PROBE_TIMING)
                 + median_time_s(lambda: x + y, "cpu", PROBE_TIMING))
    finally:
        torch.set_num_threads(before)
    return sum(p.seconds for p in profiled) / now_s
