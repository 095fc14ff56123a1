"""The vTrain measurements: Megatron-DeepSpeed iterations on A100 as parasim jobs.

The data (../shared/data/vtrain/, README there) is from the vTrain repository (VIA-Research/
vTrain, commit f8dda84, `data/`): 1,440 runs on one node of 2-8 A100s and 109 runs on 64-512.
Each row names the model (hidden size, heads, layers, sequence length), the batch and the
layout; `vtrain_job` adds what the vTrain repository states about all of them (ASSUMPTIONS).
One definition: the published baseline (benchmarks/published_baseline.py), the calibration
runs reader (simulator.calibration.runs) and the vtrain suite (parasim.vtrain_suite) use it.
"""

from __future__ import annotations

import math
from typing import Any

FILES = {"single": "vtrain/ground_truth_single.csv", "multi": "vtrain/ground_truth_multi.csv"}
PUBLISHED_MAPE_PCT = {"single": 8.37, "multi": 14.73}  # vTrain's own simulator (data README)
TIME_COLUMN = "iteration time (ms)"
COLUMNS = ("# GPUs", "global batch", "micro batch", "hidden size", "attention heads",
           "# layers", "sequence length", "tensor parallelism", "data parallelism",
           "pipeline parallelism", TIME_COLUMN)  # both files; multi adds the size in billions
GPUS_PER_NODE = 8

ASSUMPTIONS = """\
vTrain   GPT: gelu, layernorm, learned positions (max(seq, 2048) rows), tied embeddings,
         linear biases, dropout, ffn 4h, vocab 50257; fp16 (Megatron-DeepSpeed mixed
         precision); flash_attention false (vTrain's Megatron-DeepSpeed predates FlashAttention);
         recompute full, 1f1b, no sequence parallelism, ZeRO-0, no overlap of the gradient
         reduction (bucketing off: overlap_grad_reduce false); a100-80gb (memory size
         unknown; it does not change the time); cluster dgx-a100 preset (NVLink 300 GB/s per GPU, 8 x 200 Gb/s NICs per
         node), ceil(gpus/8) nodes (single-node rows with < 8 GPUs: one node of that many).
         vTrain's own simulator used 150 GB/s intra-node and 800 Gb/s per node, half the
         preset's rates; at 150 GB/s the calibration half's fitted NVLink efficiency sat at
         its bound of 1.0 (the links are faster than that), so the physical rates are used."""


def vtrain_job(row: dict[str, str]) -> dict[str, Any]:
    """A vTrain row as a job mapping (ASSUMPTIONS); its numbers checked by the job builder."""
    gpus, seq, hidden = int(row["# GPUs"]), int(row["sequence length"]), int(row["hidden size"])
    model = {"name": f"gpt-{row['# layers']}x{hidden}", "num_layers": int(row["# layers"]),
             "hidden_size": hidden, "num_attention_heads": int(row["attention heads"]),
             "ffn_hidden_size": 4 * hidden, "vocab_size": 50257, "activation": "gelu",
             "norm": "layernorm", "position_embedding": "learned",
             "max_position_embeddings": max(seq, 2048), "tied_embeddings": True,
             "linear_bias": True, "dropout": True}
    cluster: dict[str, Any] = {"base": "dgx-a100", "num_nodes": math.ceil(gpus / GPUS_PER_NODE)}
    if gpus < GPUS_PER_NODE:
        cluster = {"base": "dgx-a100", "num_nodes": 1, "gpus_per_node": gpus}
    return {
        "model": model,
        "cluster": cluster,
        "training": {"seq_length": seq, "global_batch_size": int(row["global batch"]),
                     "precision": "fp16", "flash_attention": False},
        "parallel": {"tp": int(row["tensor parallelism"]), "pp": int(row["pipeline parallelism"]),
                     "dp": int(row["data parallelism"]), "micro_batch_size": int(row["micro batch"]),
                     "recompute": "full", "schedule": "1f1b", "sequence_parallel": False,
                     "zero_stage": 0, "overlap_grad_reduce": False,
                     "overlap_param_gather": False},
    }


def measured_step_s(row: dict[str, str]) -> float:
    return float(row[TIME_COLUMN]) / 1e3
