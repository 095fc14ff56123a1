"""runtime.shrink: every catalog model under assorted layouts shrinks to a job that still
resolves (the layout divides the shrunk model, batch and sequence), is small per rank, and
keeps the family (attention kind and ratio, MoE-ness, flags). Pure: no torch."""

from __future__ import annotations

from pathlib import Path

import pytest

from parasim.runtime.shrink import shrink_job
from parasim.simulator import catalog
from parasim.simulator.errors import SpecError
from parasim.simulator.jobfile import job_from_mapping
from parasim.simulator.params import total_params

NODE = {"gpu": "h100-sxm", "gpus_per_node": 8,
        "intra_node": {"bandwidth_GBps": 450, "latency_us": 3},
        "inter_node": {"bandwidth_Gbps": 400, "nics_per_node": 8, "latency_us": 5}}
LAYOUTS = [
    {"tp": 1},
    {"tp": 2, "sequence_parallel": True, "pp": 2},
    {"tp": 8, "pp": 4, "vpp": 2, "schedule": "interleaved", "micro_batch_size": 4},
    {"tp": 4, "cp": 2, "sequence_parallel": True, "pp": 2, "uneven": True},
    {"tp": 2, "ep": 4, "pp": 2, "zero_stage": 1},
]
MAX_PARAMS_PER_RANK = 2e6  # a step of this many weights takes milliseconds on one core


def job(model: str, parallel: dict, nodes: int = 4):
    if parallel.pop("uneven", False):  # two stages, a third and two thirds of the layers
        layers = catalog.model(model).num_layers
        parallel["stages"] = [layers // 3, layers - layers // 3]
    raw = {"model": model, "cluster": {**NODE, "num_nodes": nodes},
           "training": {"seq_length": 4096, "global_batch_size": 1024}, "parallel": parallel}
    return job_from_mapping(raw, base_dir=Path("."), source="test")


def cases():
    """Jobs where the layout divides the model (the others are the simulator's SpecErrors,
    tested there)."""
    for model in catalog.names("models"):
        for index, parallel in enumerate(LAYOUTS):
            try:
                yield pytest.param(job(model, dict(parallel)), id=f"{model}-layout{index}")
            except SpecError:
                continue


@pytest.mark.parametrize("original", list(cases()))
def test_shrunk_job_resolves_small_and_same_family(original):
    small = shrink_job(original)
    a, b = original.model, small.model
    assert small.layout.tp == original.layout.tp and small.layout.ep == original.layout.ep
    assert small.layout.cp == original.layout.cp and small.layout.dp == original.layout.dp
    assert small.layout.num_virtual_stages == original.layout.num_virtual_stages
    assert a.num_attention_heads // a.kv_heads == b.num_attention_heads // b.kv_heads
    assert (a.kv_heads == 1) == (b.kv_heads == 1)
    assert (original.layout.tp > a.kv_heads) == (small.layout.tp > b.kv_heads)
    assert a.is_moe == b.is_moe and (a.num_shared_experts > 0) == (b.num_shared_experts > 0)
    assert (a.first_dense_layers > 0) == (b.first_dense_layers > 0)
    assert (a.experts_per_token > 1) == (b.experts_per_token > 1)
    for flag in ("activation", "norm", "position_embedding", "tied_embeddings", "linear_bias",
                 "qkv_bias", "qk_norm", "capacity_factor", "shared_expert_gate"):
        assert getattr(a, flag) == getattr(b, flag), flag
    assert (a.mla is None) == (b.mla is None)
    assert b.vocab_size % small.layout.tp == 0
    assert total_params(b) / (small.layout.tp * small.layout.pp) < MAX_PARAMS_PER_RANK
    assert small.training.seq_length <= 64 and small.training.global_batch_size <= 4 * 64


def test_uneven_stages_stay_uneven():
    small = shrink_job(job("llama3-8b", {"tp": 2, "pp": 2, "stages": [10, 22]}))
    assert small.layout.stages == (1, 2) and small.model.num_layers == 3


def test_per_stage_full_recompute_keeps_its_fraction():
    """Llama-3-70B (80 blocks) on pp 2, stages of 38 and 42: 30 and 0 blocks recomputed in
    full become round(30/38 · n) and 0 of the shrunk stages' blocks."""
    from pathlib import Path

    from parasim.runtime.shrink import shrink_job
    from parasim.simulator.jobfile import job_from_mapping

    raw = {"model": "llama3-70b", "cluster": {"base": "dgx-h100", "num_nodes": 2},
           "training": {"seq_length": 4096, "global_batch_size": 64},
           "parallel": {"tp": 8, "pp": 2, "stages": [38, 42], "full_recompute_layers": [30, 0]}}
    job = job_from_mapping(raw, base_dir=Path("."), source="t")
    small = shrink_job(job)
    assert small.layout.full_recompute_layers == (round(30 / 38 * small.stage_layers[0]), 0)
