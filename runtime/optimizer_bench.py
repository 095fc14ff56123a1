"""Optimizer step timings by parameter count (optimizer.csv).

One `torch.optim.AdamW` step (PyTorch's default implementation: `foreach` on the device) over
fp32 parameters with fp32 gradients, split into tensors of at most `CHUNK_PARAMS` elements
as a model's weights are. The first (warm-up) step allocates the moment buffers.
"""

from __future__ import annotations

import torch

from parasim.runtime.tasks import Rates, Row, Task, row_task, size_text
from parasim.runtime.stability import SPREAD
from parasim.runtime.timing import Timing, timed

COLUMNS = ("params", "step_s")
CHUNK_PARAMS = 2**24  # largest single tensor (a 4096 x 4096 weight)
BYTES_PER_PARAM = 4 * 7  # AdamW reads p, g, m, v and writes p, m, v in fp32 (estimate only)


def _chunks(params: int) -> list[int]:
    full, rest = divmod(params, CHUNK_PARAMS)
    return [CHUNK_PARAMS] * full + ([rest] if rest else [])


def measure_optimizer(params: int, device: str, timing: Timing) -> Row:
    """One row: seconds of one AdamW step over `params` fp32 parameters."""
    tensors = []
    for size in _chunks(params):
        tensor = torch.zeros(size, device=device, dtype=torch.float32, requires_grad=True)
        tensor.grad = torch.randn(size, device=device, dtype=torch.float32)
        tensors.append(tensor)
    optimizer = torch.optim.AdamW(tensors, lr=1e-4)
    step = timed(optimizer.step, device, timing)
    return {"params": params, "step_s": step.median_s, SPREAD: step.spread}


def optimizer_tasks(sizes: tuple[int, ...], device: str, timing: Timing,
                    rates: Rates) -> list[Task]:
    """One task per parameter count."""
    calls = timing.warmup + timing.repeats
    return [row_task("optimizer", f"adamw {size_text(params)} params",
                     rates.estimate_s(calls, moved_bytes=params * BYTES_PER_PARAM),
                     measure_optimizer, params, device, timing)
            for params in sizes]
