"""Plan against the published Megatron-LM weak-scaling layouts (Narayanan et al. 2021, Table 1).

For each configuration (GPT 1.7B to 1T on 32 to 3,072 A100s; profiles/published_layouts.yaml)
it predicts the published layout, plans the same job (model, GPUs, batch, fp16, no flash
attention, as in 2021) with nothing fixed, and prints where the plan chose differently and why (the breakdown component that moved
most), with the published throughput for reference. Both sides use parasim's default profile
(fitted per GPU generation on the published corpus, which never includes this paper: it is
one of the blind tests), so the plan-against-layout columns check the search, and the
measured / predicted TFLOP/s column is a blind check of the model.

Run: python3 benchmarks/megatron_comparison.py [--out reports/megatron_weak_scaling.md]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


from parasim import profiles
from parasim.plan_cli import layout_text
from parasim.planner.search import search
from parasim.simulator.jobfile import job_from_mapping
from parasim.simulator.predict import predict
from parasim.simulator.yamlfile import load_data


def published() -> dict:
    with profiles.path("published_layouts.yaml").open("r", encoding="utf-8") as f:
        return load_data(f)


def job_of(entry: dict, with_layout: bool):
    raw = {"model": entry["model"],
           "cluster": {"base": entry["cluster"], "num_nodes": entry["num_gpus"] // 8},
           "training": {"seq_length": entry["seq_length"],
                        "global_batch_size": entry["global_batch_size"],
                        "precision": entry["precision"],
                        "flash_attention": False}}  # 2021 Megatron-LM: fused softmax, no flash
    if with_layout:
        vpp = entry.get("vpp", 1)
        raw["parallel"] = {"tp": entry["tp"], "pp": entry["pp"], "dp": entry["dp"], "vpp": vpp,
                           "schedule": "interleaved" if vpp > 1 else "1f1b",
                           "micro_batch_size": entry["micro_batch_size"],
                           "recompute": entry["recompute"], "zero_stage": 0,
                           "sequence_parallel": False}
    return job_from_mapping(raw, base_dir=Path("."), source=entry["model"])


def compare(name: str, entry: dict, fixed: dict) -> dict:
    fixed_job = job_of(entry, True)
    theirs = predict(fixed_job)
    result = search(job_of(entry, False), fixed)
    ours = result.ranked[0]
    a, b = theirs.breakdown.as_dict(), ours.prediction.breakdown.as_dict()
    moved = max(a, key=lambda k: abs(a[k] - b[k]))
    return {"name": name, "gpus": entry["num_gpus"], "published": layout_text(fixed_job.layout),
            "published_s": theirs.step_time_s, "published_fits": theirs.fits,
            "plan": layout_text(ours.layout), "plan_s": ours.prediction.step_time_s,
            "why": f"{moved} {a[moved]:.2f} s -> {b[moved]:.2f} s",
            "measured_tflops": entry["tflops_per_gpu"],
            # Table 1 counts the recomputed forward (Eq. 3): compare hardware FLOP/s
            "predicted_tflops": theirs.hardware_flop_per_step / theirs.step_time_s / theirs.num_gpus
            / 1e12}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", help="also write the table as markdown")
    args = parser.parse_args(argv)
    text = "\n\n".join(
        f"## {title}\n\n" + table([compare(name, entry, fixed)
                                    for name, entry in published().items()])
        for title, fixed in (("Every layout parasim searches", {}),
                             ("Without the distributed optimizer (ZeRO-0, as in 2021)",
                              {"zero_stage": 0})))
    print(text)
    if args.out:
        Path(args.out).write_text("# Plans against Megatron-LM's published layouts\n\n"
                                  f"Made by `python3 benchmarks/megatron_comparison.py --out "
                                  f"{args.out}`. {__doc__.split(chr(10) + chr(10))[1]}\n\n"
                                  f"{text}\n", encoding="utf-8")
    return 1 if "worse:" in text else 0


def table(rows: list[dict]) -> str:
    lines = ["| run | GPUs | published layout | TFLOP/s measured / predicted | predicted s | plan | "
             "predicted s | change | most moved |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['gpus']} | {r['published']}"
                     f"{'' if r['published_fits'] else ' (predicted not to fit)'} | "
                     f"{r['measured_tflops']:.0f} / {r['predicted_tflops']:.0f} | "
                     f"{r['published_s']:.2f} | {r['plan']} | {r['plan_s']:.2f} | "
                     f"{r['plan_s'] / r['published_s'] - 1:+.1%} | {r['why']} |")
    worse = [r["name"] for r in rows if r["plan_s"] > r["published_s"] * (1 + 1e-9)]
    lines.append(f"\nplan no worse than the published layout in {len(rows) - len(worse)} of "
                 f"{len(rows)} configurations" + (f"; worse: {', '.join(worse)}" if worse else ""))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
