"""What selective recompute repeats (`parallel.recompute_modules`, Megatron-Core's
--recompute-modules) and FP8-cached linear inputs: each removes exactly its tensors from the
stored activations and adds its ops to the backward; DeepSeek-V3's published layout with the
memory techniques of its report (arXiv:2412.19437 §3.2.3, §3.3.3)."""

from __future__ import annotations

from pathlib import Path

import pytest

from parasim.planner.export import export_layout
from parasim.planner.search import search
from parasim.simulator.errors import SpecError
from parasim.simulator.jobfile import job_from_mapping
from parasim.simulator.layout import Layout
from parasim.simulator.memory import block_activation_bytes
from parasim.simulator.model import ModelSpec
from parasim.simulator.ops import Shard
from parasim.simulator.predict import predict

DENSE = ModelSpec(name="dense", num_layers=1, hidden_size=4096, num_attention_heads=32,
                  ffn_hidden_size=11008, vocab_size=32000)
MOE = ModelSpec(name="moe", num_layers=1, hidden_size=4096, num_attention_heads=32,
                ffn_hidden_size=11008, vocab_size=32000, num_experts=8, experts_per_token=2,
                moe_ffn_hidden_size=2048)
TOKENS, H = 8192, 4096
BF16 = Shard(micro_batch=1, seq_length=TOKENS)
FP8 = Shard(micro_batch=1, seq_length=TOKENS, linear_input_bytes=1)


def stored(model, shard, modules, moe=False):
    return block_activation_bytes(model, shard, moe, "selective", frozenset(modules))


def test_fp8_keeps_the_four_linear_inputs_of_a_dense_block_at_one_byte():
    """qkv input, output projection input, fc1 input and fc2 input: h + h + h + ffn values per
    token saved at 1 byte instead of 2."""
    saved = stored(DENSE, BF16, ["core_attn"]) - stored(DENSE, FP8, ["core_attn"])
    assert saved == TOKENS * (3 * H + 11008)


def test_layernorm_drops_both_norm_outputs():
    saved = stored(DENSE, BF16, ["core_attn"]) - stored(DENSE, BF16, ["core_attn", "layernorm"])
    assert saved == 2 * TOKENS * H * 2


def test_moe_act_drops_the_experts_activation_output():
    slots = TOKENS * 2
    saved = stored(MOE, FP8, ["core_attn"], True) - stored(MOE, FP8, ["core_attn", "moe_act"], True)
    assert saved == slots * 2048 * 1  # fc2's input, FP8-cached


def test_mla_up_proj_keeps_only_the_latents():
    job = _dsv3({"recompute": "selective", "recompute_modules": ["core_attn"]})
    model, heads = job.model, job.model.num_attention_heads
    with_up = stored(model, BF16, ["core_attn"], True)
    without = stored(model, BF16, ["core_attn", "mla_up_proj"], True)
    per_head = 2 * model.qk_head_dim + model.v_head_dim  # q, k, v of every head
    assert with_up - without == TOKENS * heads * per_head * 2


def test_recomputed_modules_add_their_ops_to_the_backward():
    base = {"recompute": "selective"}
    plain = predict(_dsv3({**base, "recompute_modules": ["core_attn"]})).breakdown.compute_s
    more = predict(_dsv3({**base, "recompute_modules": ["core_attn", "layernorm", "mla_up_proj",
                                                        "moe_act"]})).breakdown.compute_s
    assert plain < more < plain * 1.2  # "a minor overhead" (the report, §3.2.3)


def test_bad_modules_are_refused():
    with pytest.raises(SpecError, match="recompute is none"):
        Layout(recompute_modules=("layernorm",))
    with pytest.raises(SpecError, match="recompute_modules\\[1\\]"):
        Layout(recompute="selective", recompute_modules=("layernorm", "mlp_everything"))
    with pytest.raises(SpecError, match="non-empty"):
        Layout(recompute="selective", recompute_modules=())
    with pytest.raises(SpecError, match="has no MLA"):
        job_from_mapping({"model": "llama3-8b", "cluster": {"base": "dgx-h100", "num_nodes": 1},
                          "training": {"seq_length": 4096, "global_batch_size": 8},
                          "parallel": {"recompute": "selective",
                                       "recompute_modules": ["mla_up_proj"]}},
                         base_dir=Path("."), source="test")


def _dsv3(parallel: dict):
    raw = {"model": "deepseek-v3", "cluster": {"base": "hgx-h800", "num_nodes": 256},
           "training": {"seq_length": 4096, "global_batch_size": 15360, "precision": "fp8"},
           "parallel": {"tp": 1, "pp": 16, "ep": 64, "micro_batch_size": 1, "zero_stage": 1,
                        **parallel}}
    return job_from_mapping(raw, base_dir=Path("."), source="deepseek-v3")


def test_deepseek_v3_published_layout_with_its_reports_memory_techniques():
    """2,048 H800, pp 16, ep 64, fp8, 1F1B (report §3.2): 89.6 GiB per GPU without recompute
    (FP8-cached linear inputs), 85.0 with the norms recomputed, 57.0 with the MLA
    up-projections too, 53.5 with the MoE activation too (§3.2.3, §3.3.3), within the 75 GiB
    parasim counts usable on an 80 GiB GPU. (Before the experts' outputs were dropped from the
    stored activations, Megatron-Core's weighted SwiGLU, the same steps read 114, 109.5, 81.5,
    78.0.) DualPipe with the report's layout: tests/test_dualpipe.py."""
    peaks = [predict(_dsv3(p)).peak_stage.peak_bytes / 2**30 for p in (
        {"recompute": "none"},
        {"recompute": "selective"},
        {"recompute": "selective", "recompute_modules": ["core_attn", "layernorm"]},
        {"recompute": "selective",
         "recompute_modules": ["core_attn", "layernorm", "mla_up_proj", "moe_act"]})]
    assert peaks == sorted(peaks, reverse=True) and peaks[0] > peaks[-1] + 30
    assert 50 < peaks[-1] < 57


def test_moe_layers_keep_no_expert_outputs_for_the_combine():
    """Megatron-Core applies the routing probabilities inside the experts' SwiGLU, so the
    combine saves nothing: an MoE block keeps the dispatched inputs (FP8) and the experts'
    SwiGLU inputs, not their k·h outputs."""
    slots = TOKENS * 2
    kept = stored(MOE, FP8, ["core_attn"], True) - stored(MOE, FP8, ["core_attn"], False)
    # beyond the norm input both keep: the dense MLP its fc1 input (FP8), SwiGLU input (gate
    # and up, 16 bits) and fc2 input (FP8); the MoE its router input (16 bits), fp32 router
    # probabilities and per expert slot the same three
    dense_ffn = TOKENS * (H + 2 * 11008 * 2 + 11008)
    moe_ffn = TOKENS * 2 * H + TOKENS * 4 * 8 + slots * (H + 2 * 2048 * 2 + 2048)
    assert kept == moe_ffn - dense_ffn


def test_fp8_moe_act_input_halves_the_experts_swiglu_input():
    """DeepSeek-V3 report §3.3.3: the SwiGLU inputs in MoE cached in FP8."""
    cached = Shard(micro_batch=1, seq_length=TOKENS, linear_input_bytes=1, moe_act_input_bytes=1)
    saved = stored(MOE, FP8, ["core_attn"], True) - stored(MOE, cached, ["core_attn"], True)
    assert saved == TOKENS * 2 * (2 * 2048) * 1
    assert stored(DENSE, FP8, ["core_attn"]) == stored(DENSE, cached, ["core_attn"])


def test_megatron_export_lists_the_modules():
    job = _dsv3({"recompute": "selective", "recompute_modules": ["core_attn", "moe_act"]})
    text = export_layout(job, "megatron")
    assert "--recompute-granularity selective" in text
    assert "--recompute-modules core_attn moe_act" in text


def test_the_planner_holds_fixed_recompute_modules():
    """Fixed modules are planned under selective recompute; the full-recompute fallback of a
    layout that does not fit as it is drops them (full recompute names no modules)."""
    modules = ["core_attn", "layernorm"]
    raw = {"model": "llama3-8b", "cluster": {"base": "dgx-h100", "num_nodes": 1},
           "training": {"seq_length": 8192, "global_batch_size": 16},
           "parallel": {"recompute": "selective", "recompute_modules": modules}}
    job = job_from_mapping(raw, base_dir=Path("."), source="test")
    result = search(job, {"recompute": "selective", "recompute_modules": modules})
    assert all(s.layout.recompute_modules == tuple(modules) or s.layout.recompute == "full"
               for s in result.ranked)
    assert result.chosen.layout.recompute_modules == tuple(modules)
