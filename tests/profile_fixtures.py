"""A tiny measured profile written by the tests themselves (never this machine's timings).

Times follow exact power laws, so log-log interpolation between grid points must reproduce
them, and a test knows every right answer.
"""

from __future__ import annotations

import csv
import json
from itertools import product
from pathlib import Path

GEMM_FLOP_PER_S = 1e12  # the fake device: every GEMM at 1 TFLOP/s
ATTENTION_FLOP_PER_S = 5e11
ELEMENTS_PER_S = 1e10
SIZES = (256, 1024, 4096)


def gemm_time(m: float, n: float, k: float) -> float:
    return 2 * m * n * k / GEMM_FLOP_PER_S


def attention_time(batch_heads: float, seq: float, head_dim: float) -> float:
    """Causal: half of 4·s²·d per head (scores and values)."""
    return 0.5 * 4 * batch_heads * seq * seq * head_dim / ATTENTION_FLOP_PER_S


def _write(path: Path, header: list[str], rows: list[list]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def write_profile(folder: Path, *, gpu: str = "h100-sxm", dtype: str = "bf16",
                  collective_sizes: tuple[int, ...] = (2,)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"device": "cuda", "device_name": "test", "gpu": gpu, "dtype": dtype,
            "torch": "test", "date": "2026-11-22", "quick": True}
    (folder / "meta.json").write_text(json.dumps(meta))
    _write(folder / "gemm.csv", ["m", "n", "k", "forward_s", "backward_input_s",
                                 "backward_weight_s"],
           [[m, n, k, gemm_time(m, n, k), gemm_time(m, k, n), gemm_time(k, n, m)]
            for m, n, k in product(SIZES, SIZES, SIZES)])
    _write(folder / "attention.csv", ["batch", "heads", "seq_length", "head_dim", "forward_s",
                                      "backward_s"],
           [[1, 8, s, d, attention_time(8, s, d), 2.5 * attention_time(8, s, d)]
            for s, d in product((512, 2048, 8192), (64, 128))])
    _write(folder / "elementwise.csv", ["kernel", "elements", "forward_s", "backward_s"],
           [[kernel, e, e / ELEMENTS_PER_S, 2 * e / ELEMENTS_PER_S]
            for kernel in ("rmsnorm", "swiglu", "add") for e in (2**16, 2**20, 2**24)])
    _write(folder / "optimizer.csv", ["params", "step_s"],
           [[p, p * 1e-10] for p in (10**6, 10**8, 10**10)])
    _write(folder / "collectives.csv", ["collective", "group_size", "bytes", "time_s"],
           [[kind, n, b, 1e-5 + b / 1e11] for kind in ("all_reduce", "all_gather")
            for n in collective_sizes for b in (2**10, 2**20, 2**30)])
    return folder
