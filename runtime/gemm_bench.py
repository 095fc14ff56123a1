"""GEMM timings: the three matmuls of a linear layer's training step (gemm.csv).

For a (m x k)·(k x n) forward product, autograd's two backward products are the input
gradient (m x n)·(n x k) and the weight gradient (k x m)·(m x n); they are timed as
`torch.matmul` on the same operand layouts autograd uses (transposed views, no copies).
"""

from __future__ import annotations

import itertools

import torch

from parasim.runtime.tasks import Rates, Row, Task, row_task
from parasim.runtime.stability import SPREAD
from parasim.runtime.timing import Timing, timed

COLUMNS = ("m", "n", "k", "forward_s", "backward_input_s", "backward_weight_s")


def measure_gemm(m: int, n: int, k: int, device: str, dtype: torch.dtype,
                 timing: Timing) -> Row:
    """One row: forward, input-gradient and weight-gradient seconds of an m x n x k GEMM (and
    the largest spread of their runs, `SPREAD`)."""
    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(k, n, device=device, dtype=dtype)
    grad = torch.randn(m, n, device=device, dtype=dtype)
    with torch.no_grad():
        forward = timed(lambda: torch.matmul(a, b), device, timing)
        input_ = timed(lambda: torch.matmul(grad, b.t()), device, timing)
        weight = timed(lambda: torch.matmul(a.t(), grad), device, timing)
    return {"m": m, "n": n, "k": k, "forward_s": forward.median_s,
            "backward_input_s": input_.median_s, "backward_weight_s": weight.median_s,
            SPREAD: max(forward.spread, input_.spread, weight.spread)}


def gemm_tasks(ms: tuple[int, ...], ns: tuple[int, ...], ks: tuple[int, ...], device: str,
               dtype: torch.dtype, timing: Timing, rates: Rates) -> list[Task]:
    """One task per cell of the full m x n x k grid."""
    calls = 3 * (timing.warmup + timing.repeats)
    size = torch.empty((), dtype=dtype).element_size()
    return [row_task("gemm", f"gemm {m}x{n}x{k}",
                     rates.estimate_s(calls, 2.0 * m * n * k, (m * k + k * n + m * n) * size),
                     measure_gemm, m, n, k, device, dtype, timing)
            for m, n, k in itertools.product(ms, ns, ks)]
