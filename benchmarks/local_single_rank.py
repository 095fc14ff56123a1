"""One process alone: a suite model's forward + backward against the profile's op sum.

Times the runtime's model (runtime/model.py) in this process on one thread, with no other rank
beside it, and prints measured / predicted compute for the models of the local suites. Set
beside `parasim validate`'s two-rank runs, it separates what the op list misses (here) from
what running two ranks at once costs (there): reports/local/analysis.md.

    python3 benchmarks/local_single_rank.py --profile reports/local-calibration/profile
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from parasim import profiles
from parasim.suite import SUITES, local_cluster
from parasim.runtime.model import build_model
from parasim.simulator.jobfile import job_from_mapping
from parasim.simulator.predict import predict
from parasim.simulator.profile import load_profile
from parasim.simulator.yamlfile import load_data

CASES = (("llama-narrow", 768, 2), ("llama-narrow", 512, 4), ("llama-wide", 256, 8),
         ("llama-wide", 512, 4), ("llama-tiny", 512, 4))  # model, sequence, micro-batches


def suite_models() -> dict[str, dict]:
    """The model mappings of the shipped local suites, by name."""
    models = {}
    for name in SUITES:
        with profiles.path(f"suites/{name}.yaml").open("r", encoding="utf-8") as f:
            models.update(load_data(f)["models"])
    return models


def measured_s(model, seq: int, micro_batches: int, repeats: int = 3) -> float:
    """Median wall time of `micro_batches` forward + backward passes of one sequence each."""
    tokens = torch.randint(0, model.spec.vocab_size, (1, seq))
    positions = torch.arange(seq)[None].contiguous()

    def step():
        for _ in range(micro_batches):
            model.loss(model(tokens, positions), tokens).backward()

    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", required=True, help="a measured CPU profile, 1 thread")
    args = parser.parse_args()
    torch.set_num_threads(1)
    db = load_profile(Path(args.profile))
    models = suite_models()
    for name, seq, micro_batches in CASES:
        job = job_from_mapping({
            "model": {"name": name, **models[name]}, "cluster": local_cluster(db, 1, 1, None),
            "training": {"seq_length": seq, "global_batch_size": micro_batches,
                         "precision": "fp32"},
            "parallel": {"dp": 1, "micro_batch_size": 1}}, base_dir=Path("."), source=name)
        predicted = predict(job, measured=db).breakdown.compute_s
        measured = measured_s(build_model(job.model), seq, micro_batches)
        print(f"{name:13s} sequence {seq:4d} x {micro_batches} micro-batches: measured "
              f"{measured:.3f} s, predicted compute {predicted:.3f} s, "
              f"measured / predicted {measured / predicted:.3f}", flush=True)


if __name__ == "__main__":
    main()
