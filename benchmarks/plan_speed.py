"""Search time and peak memory of `parasim plan` on the two big jobs of the planner issue.

Targets: under 10 s each on this machine; peak resident memory under 2 GiB.
- Llama-3.1-405B on 16,384 H100s (2,048 DGX H100), 8k sequences, 2,048 per batch.
- DeepSeek-V3 (671B MoE) on 2,048 H800s (256 HGX H800), 4k sequences, 15,360 per batch, fp8
  (DeepSeek-V3 technical report, arXiv:2412.19437 §3-4).
Run: python3 benchmarks/plan_speed.py
This VM's speed varies from day to day (a shared host): the first line times a 10M-iteration
Python loop, so that runs on different days can be compared (0.58 s on a fast day).
"""

from __future__ import annotations

import resource
import time
from pathlib import Path


from parasim.simulator.layout import recompute_text
from parasim.planner.search import search
from parasim.simulator.jobfile import job_from_mapping

JOBS = {
    "llama3.1-405b on 16384 h100-sxm": {
        "model": "llama3.1-405b", "cluster": {"base": "dgx-h100", "num_nodes": 2048},
        "training": {"seq_length": 8192, "global_batch_size": 2048}},
    "deepseek-v3 on 2048 h800": {
        "model": "deepseek-v3", "cluster": {"base": "hgx-h800", "num_nodes": 256},
        "training": {"seq_length": 4096, "global_batch_size": 15360, "precision": "fp8"}},
}


def loop_probe_s() -> float:
    """Seconds of a 10M-iteration pure-Python loop: the machine's speed for this kind of code."""
    start, total = time.perf_counter(), 0
    for i in range(10_000_000):
        total += i
    return time.perf_counter() - start


def main() -> None:
    print(f"speed probe: a 10M-iteration Python loop in {loop_probe_s():.2f} s")
    for name, raw in JOBS.items():
        job = job_from_mapping(raw, base_dir=Path("."), source=name)
        start = time.perf_counter()
        result = search(job, {})
        elapsed = time.perf_counter() - start
        best = result.ranked[0]
        lay = best.layout
        print(f"{name}: {elapsed:.1f} s (target < 10 s: {'met' if elapsed < 10 else 'MISSED'}); "
              f"{result.considered} layouts, {result.ilp_solves} ILP splits; best tp {lay.tp} "
              f"pp {lay.pp} vpp {lay.vpp} dp {lay.dp} cp {lay.cp} ep {lay.ep} mbs "
              f"{lay.micro_batch_size} {lay.schedule} {recompute_text(lay)} ZeRO-{lay.zero_stage}: "
              f"{best.prediction.step_time_s:.2f} s/step, MFU {best.prediction.mfu:.1%}")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory {peak_mib:.0f} MiB (target < 2048)")


if __name__ == "__main__":
    main()
