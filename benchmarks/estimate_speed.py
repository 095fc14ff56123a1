"""Median in-process time of one estimate: Llama-3.1-405B on 16,384 H100s.

Target (issue "Foundation"): under 5 ms. Run: python3 benchmarks/estimate_speed.py
Each repetition loads nothing from disk (catalogs are cached after the first call) but builds
the job from its mapping and runs the whole prediction, as `parasim estimate` does; the
topology and the routed phases of each axis are cached per cluster and placement, as they are
when the planner scores many layouts on one cluster.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path


from parasim.simulator.cost.comm import clear_network_cache
from parasim.simulator.jobfile import job_from_mapping
from parasim.simulator.ops import block_ops, embedding_ops, head_ops
from parasim.simulator.predict import predict
from parasim.simulator.topology import build_topology

JOB = {
    "model": "llama3.1-405b",
    "cluster": {"base": "dgx-h100", "num_nodes": 2048},
    "training": {"seq_length": 8192, "global_batch_size": 2048, "tokens": 15e12},
    # Llama 3 paper Table 4: tp 8, cp 1, pp 16, dp 128 on 16,384 GPUs
    "parallel": {"tp": 8, "pp": 16, "vpp": 2, "schedule": "interleaved", "micro_batch_size": 1,
                 "sequence_parallel": True, "zero_stage": 1, "recompute": "none"},
}


def one_estimate() -> float:
    start = time.perf_counter()
    job = job_from_mapping(JOB, base_dir=Path("."), source="benchmark")
    predict(job)
    return time.perf_counter() - start


def main(repeats: int = 200) -> None:
    one_estimate()  # warm the catalog caches
    warm = [one_estimate() for _ in range(repeats)]
    for cache in (block_ops, head_ops, embedding_ops, build_topology):
        cache.cache_clear()
    clear_network_cache()
    cold = one_estimate()
    median_ms = statistics.median(warm) * 1e3
    print(f"estimate llama3.1-405b on 16384 h100-sxm: median {median_ms:.3f} ms over {repeats} "
          f"runs (p90 {sorted(warm)[int(0.9 * repeats)] * 1e3:.3f} ms); target < 5 ms: "
          f"{'met' if median_ms < 5 else 'MISSED'}. First estimate, building the 16,384-GPU "
          f"topology and routing every axis: {cold * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
