"""Elementwise (memory-bound) kernel timings by elements processed (elementwise.csv).

`elements` is what `simulator/ops.py`'s memory ops count for each kernel; what is timed:

- layernorm, rmsnorm: tokens·hidden; `F.layer_norm` / the runtime's one-node RMSNorm
  (`runtime.fused.rms_norm`) of (elements/hidden, hidden) with a weight (and a bias);
- gelu: tokens·ffn width (the output); `F.gelu`;
- swiglu: tokens·ffn width (the output); `runtime.fused.swiglu(gate, up)`, gate and up of
  `elements` each;
- rope: rotated query and key values; `runtime.fused.rope` of (1, heads, rows, 128) with the
  tables of positions 0..rows-1, heads·rows·128 = elements;
- softmax: rows·cols; `torch.softmax` over rows of `row_elements`;
- add: tokens·hidden; `a + b` (the residual add);
- copy: elements copied; `x.clone()`, and its backward is the same copy of the gradient;
- embedding: tokens·hidden; `F.embedding` of elements/hidden token ids in a (vocab, hidden)
  table;
- cross_entropy: tokens·vocab; `F.cross_entropy` over fp32 logits of (elements/vocab, vocab).

`hidden` is `row_elements` (4096 by default; less only when `elements` is smaller). Forward
runs with autograd recording, as in training; backward is `out.backward(grad)` after an
untimed forward, input gradients cleared. The embedding's backward includes writing the dense
gradient of its whole table, as a training step does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from parasim.runtime.fused import rms_norm, rope, rope_tables, swiglu
from parasim.runtime.tasks import Rates, Row, Task, row_task, size_text
from parasim.runtime.stability import SPREAD
from parasim.runtime.timing import Timing, timed

COLUMNS = ("kernel", "elements", "forward_s", "backward_s")
TRAFFIC = {"layernorm": 2, "rmsnorm": 2, "gelu": 2, "swiglu": 3, "rope": 2, "softmax": 2,
           "add": 3, "copy": 2, "embedding": 2, "cross_entropy": 3}  # values moved per element
ROPE_HEAD_DIM = 128  # the head width of the rope kernel's rows (Llama's)


@dataclass(frozen=True)
class Case:
    """A built kernel: `forward()` on `leaves` (the tensors that get gradients)."""

    forward: Callable[[], torch.Tensor]
    leaves: tuple[torch.Tensor, ...]
    copy_backward: bool = False  # backward = forward applied to the gradient (a plain copy)


def _rows(elements: int, width: int) -> tuple[int, int]:
    """(rows, cols) of a 2-D tensor of `elements` with rows of `width` (or fewer)."""
    cols = min(width, elements)
    assert elements % cols == 0, f"elements={elements} is not a multiple of the row {cols}"
    return elements // cols, cols


def _leaf(shape: tuple[int, ...], device: str, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(shape, device=device, dtype=dtype, requires_grad=True)


def build(kernel: str, elements: int, width: int, vocab: int, device: str,
          dtype: torch.dtype) -> Case:
    """Tensors and forward function of one kernel at `elements`."""
    rows, cols = _rows(elements, width)
    x = _leaf((rows, cols), device, dtype)
    if kernel in ("layernorm", "rmsnorm"):
        weight = _leaf((cols,), device, dtype)
        if kernel == "rmsnorm":
            return Case(lambda: rms_norm(x, weight, 1e-5), (x, weight))
        bias = _leaf((cols,), device, dtype)
        return Case(lambda: F.layer_norm(x, (cols,), weight, bias), (x, weight, bias))
    if kernel in ("gelu", "softmax", "copy"):
        fn = {"gelu": F.gelu, "softmax": lambda t: torch.softmax(t, -1),
              "copy": torch.clone}[kernel]
        return Case(lambda: fn(x), (x,), copy_backward=kernel == "copy")
    if kernel in ("swiglu", "add"):
        other = _leaf((rows, cols), device, dtype)
        if kernel == "add":
            return Case(lambda: x + other, (x, other))
        return Case(lambda: swiglu(x, other), (x, other))
    if kernel == "rope":
        width = min(ROPE_HEAD_DIM, cols)
        q = _leaf((1, cols // width, rows, width), device, dtype)
        cos, sin = rope_tables(torch.arange(rows, device=device)[None], width, dtype)
        return Case(lambda: rope(q, cos, sin), (q,))
    if kernel == "embedding":
        table = _leaf((vocab, cols), device, dtype)
        ids = torch.randint(0, vocab, (rows,), device=device)
        return Case(lambda: F.embedding(ids, table), (table,))
    assert kernel == "cross_entropy", kernel
    rows, cols = _rows(elements, vocab)
    logits = _leaf((rows, cols), device, torch.float32)
    targets = torch.randint(0, cols, (rows,), device=device)
    return Case(lambda: F.cross_entropy(logits, targets), (logits,))


def measure_elementwise(kernel: str, elements: int, width: int, vocab: int, device: str,
                        dtype: torch.dtype, timing: Timing) -> Row:
    """One row: forward and backward seconds of `kernel` over `elements`."""
    case = build(kernel, elements, width, vocab, device, dtype)
    forward = timed(case.forward, device, timing)
    if case.copy_backward:
        grad = torch.randn_like(case.leaves[0]).detach()
        backward = timed(lambda: grad.clone(), device, timing)
    else:
        grad = torch.randn_like(case.forward()).detach()

        def fresh_forward() -> torch.Tensor:
            for leaf in case.leaves:
                leaf.grad = None
            return case.forward()

        backward = timed(lambda out: out.backward(grad), device, timing, setup=fresh_forward)
    return {"kernel": kernel, "elements": elements, "forward_s": forward.median_s,
            "backward_s": backward.median_s, SPREAD: max(forward.spread, backward.spread)}


def elementwise_tasks(kernels: tuple[str, ...], sizes: tuple[int, ...], width: int, vocab: int,
                      device: str, dtype: torch.dtype, timing: Timing,
                      rates: Rates) -> list[Task]:
    """One task per (kernel, elements)."""
    calls = 3 * (timing.warmup + timing.repeats)  # forward, backward and its setup forward
    size = torch.empty((), dtype=dtype).element_size()
    tasks = []
    for kernel in kernels:
        for elements in sizes:
            moved = elements * TRAFFIC[kernel] * (4 if kernel == "cross_entropy" else size)
            if kernel == "embedding":
                moved += vocab * min(width, elements) * size / 3  # the table's dense gradient
            tasks.append(row_task("elementwise", f"{kernel} {size_text(elements)} elements",
                                  rates.estimate_s(calls, moved_bytes=moved),
                                  measure_elementwise, kernel, elements, width, vocab, device,
                                  dtype, timing))
    return tasks
