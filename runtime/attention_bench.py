"""Core attention timings: causal `scaled_dot_product_attention` (attention.csv).

Forward is timed as training runs it (autograd recording, so the kernel also keeps what its
backward needs); backward is `out.backward(grad)` after an untimed forward, gradients of Q, K
and V cleared first. PyTorch picks the kernel (flash, memory-efficient or math) as it would in
training.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from parasim.runtime.tasks import Rates, Row, Task, row_task
from parasim.runtime.stability import SPREAD
from parasim.runtime.timing import Timing, timed

COLUMNS = ("batch", "heads", "seq_length", "head_dim", "forward_s", "backward_s")
CAUSAL_WORK_FRACTION = 0.5  # the work estimate only
BACKWARD_WORK_FACTOR = 2.5  # FlashAttention-2: backward ~2.5x forward (work estimate only)


def measure_attention(batch: int, heads: int, seq_length: int, head_dim: int, device: str,
                      dtype: torch.dtype, timing: Timing) -> Row:
    """One row: forward and backward seconds of causal attention over (batch, heads, s, d)."""
    shape = (batch, heads, seq_length, head_dim)
    q, k, v = (torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
               for _ in range(3))
    grad = torch.randn(shape, device=device, dtype=dtype)

    def forward() -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def fresh_forward() -> torch.Tensor:
        q.grad = k.grad = v.grad = None
        return forward()

    forward_t = timed(forward, device, timing)
    backward = timed(lambda out: out.backward(grad), device, timing, setup=fresh_forward)
    return {"batch": batch, "heads": heads, "seq_length": seq_length, "head_dim": head_dim,
            "forward_s": forward_t.median_s, "backward_s": backward.median_s,
            SPREAD: max(forward_t.spread, backward.spread)}


def attention_tasks(seq_lengths: tuple[int, ...], head_dims: tuple[int, ...], batch: int,
                    heads: int, device: str, dtype: torch.dtype, timing: Timing,
                    rates: Rates) -> list[Task]:
    """One task per (seq_length, head_dim) at fixed batch and heads."""
    calls = 2 * (timing.warmup + timing.repeats)  # the backward's setup forward included
    tasks = []
    for s, d in itertools.product(seq_lengths, head_dims):
        flop = 4.0 * batch * heads * s * s * d * CAUSAL_WORK_FRACTION
        weight_s = rates.estimate_s(calls, flop * (1 + BACKWARD_WORK_FACTOR))
        tasks.append(row_task("attention", f"attention s={s} d={d}", weight_s,
                              measure_attention, batch, heads, s, d, device, dtype, timing))
    return tasks
