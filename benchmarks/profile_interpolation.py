"""How well does a measured profile predict shapes it did not measure?

Picks 20 shapes inside the profile's grids but on none of its points (10 GEMMs, 10 causal
attentions; seeded, log-uniform), predicts each one's forward + backward time by
`simulator.profile.ProfileDB` interpolation, re-measures it on this machine with the
profiler's own timing, and prints every error and the median absolute error (target: < 10%).

Run: python3 benchmarks/profile_interpolation.py [--profile DIR]
Without --profile it first measures a quick CPU profile (about two minutes).
Needs the runtime extra (PyTorch).
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import tempfile
from pathlib import Path


import torch

from parasim.runtime.attention_bench import measure_attention
from parasim.runtime.gemm_bench import measure_gemm
from parasim.runtime.grids import default_timing
from parasim.runtime.profiler import profile
from parasim.simulator.ops import Op, gemm
from parasim.simulator.profile import ProfileDB, load_profile

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _between(rng: random.Random, axis, multiple: int = 8) -> int:
    """A size strictly inside the grid's range and on none of its points."""
    low, high = float(axis[0]), float(axis[-1])
    while True:
        value = int(round(math.exp(rng.uniform(math.log(low), math.log(high))) / multiple)) \
            * multiple
        if low < value < high and value not in set(int(a) for a in axis):
            return value


def gemm_shapes(db: ProfileDB, rng: random.Random, count: int) -> list[tuple[int, int, int]]:
    axes = db.gemm["forward"].axes
    return [tuple(_between(rng, a) for a in axes) for _ in range(count)]


def attention_shapes(db: ProfileDB, rng: random.Random, count: int) -> list[tuple[int, int]]:
    seq_axis, head_axis = db.attention["forward"].axes
    return [(_between(rng, seq_axis, 64), int(rng.choice(list(head_axis)))) for _ in range(count)]


def compare(db: ProfileDB, device: str, dtype: torch.dtype) -> list[tuple[str, float, float]]:
    """(shape, predicted seconds, measured seconds) of 20 unmeasured shapes."""
    rng, timing = random.Random(2026), default_timing(device, quick=False)
    rows = []
    for m, n, k in gemm_shapes(db, rng, 10):
        op = gemm("probe", m, n, k, 2)
        predicted = db.op_time(op, False).seconds + db.op_time(op, True).seconds
        row = measure_gemm(m, n, k, device, dtype, timing)
        measured = row["forward_s"] + row["backward_input_s"] + row["backward_weight_s"]
        rows.append((f"gemm {m}x{n}x{k}", predicted, measured))
    batch_heads = db.attention_batch_heads
    for seq, head_dim in attention_shapes(db, rng, 10):
        op = Op("probe", "attention", 0.0, 0.0, (1, int(batch_heads), seq, seq, head_dim, head_dim))
        predicted = db.op_time(op, False).seconds + db.op_time(op, True).seconds
        row = measure_attention(1, int(batch_heads), seq, head_dim, device, dtype, timing)
        rows.append((f"attention s={seq} d={head_dim}", predicted, row["forward_s"] + row["backward_s"]))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", help="a profile folder (default: measure a quick CPU one)")
    args = parser.parse_args(argv)
    folder = Path(args.profile) if args.profile else Path(tempfile.mkdtemp()) / "cpu-quick"
    if not args.profile:
        print(f"measuring a quick CPU profile into {folder} ...", flush=True)
        profile(device="cpu", quick=True, out_dir=folder)
    db = load_profile(folder)
    device = db.meta["device"]
    rows = compare(db, device, DTYPES[db.meta["dtype"]])
    errors = []
    print(f"profile {folder} ({db.meta['device_name']}, {db.meta['dtype']}); forward + backward")
    for shape, predicted, measured in rows:
        error = predicted / measured - 1
        errors.append(abs(error))
        print(f"  {shape:28s} predicted {predicted * 1e3:9.3f} ms  measured "
              f"{measured * 1e3:9.3f} ms  error {error:+7.1%}")
    median = statistics.median(errors)
    print(f"median absolute error over {len(rows)} unmeasured shapes: {median:.1%} "
          f"(worst {max(errors):.1%}); target < 10%: {'met' if median < 0.10 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
