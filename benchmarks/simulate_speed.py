"""Median time to simulate one step of Llama-3.1-405B on 16,384 H100s: pp 16 (interleaved,
vpp 2), 128 micro-batches. Target (issue "Event-driven step simulator"): under 50 ms.

Prints the pipeline simulation alone (`schedule.simulate` over its 8,192 tasks) and the whole
estimate around it (stage costs, simulation, data-parallel tail, memory), topology cached.
Run: python3 benchmarks/simulate_speed.py
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path


from parasim.simulator.jobfile import job_from_mapping
from parasim.simulator.predict import predict
from parasim.simulator.schedule import TaskTimes, simulate

JOB = {
    "model": "llama3.1-405b",
    "cluster": {"base": "dgx-h100", "num_nodes": 2048},
    "training": {"seq_length": 8192, "global_batch_size": 16384},  # dp 128 x 128 micro-batches
    "parallel": {"tp": 8, "pp": 16, "vpp": 2, "schedule": "interleaved", "micro_batch_size": 1,
                 "sequence_parallel": True, "zero_stage": 1, "overlap_grad_reduce": True},
}


def median_s(fn, repeats: int) -> float:
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    job = job_from_mapping(JOB, base_dir=Path("."), source="benchmark")
    prediction = predict(job)
    assert prediction.microbatches == 128, prediction.microbatches
    times = [TaskTimes(1.0, 2.0, send_s=0.01)] * 32
    alone = median_s(lambda: simulate(job.layout, 128, times), 20)
    whole = median_s(lambda: predict(job), 20)
    print(f"llama3.1-405b, 16384 h100-sxm, pp 16 x vpp 2, 128 micro-batches: pipeline "
          f"simulation {alone * 1e3:.1f} ms, whole estimate {whole * 1e3:.1f} ms (median of 20; "
          f"target < 50 ms: {'met' if whole < 0.05 else 'MISSED'}); predicted step "
          f"{prediction.step_time_s:.2f} s, MFU {prediction.mfu:.1%}")


if __name__ == "__main__":
    main()
