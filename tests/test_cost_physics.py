"""The cost model's physics added with the published corpus (issue 16), each pinned to its
formula: FP8 only where it runs, the attention head-dimension factor, per-generation constants,
the framework overlap defaults, and the default profile."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

from parasim.simulator import catalog
from parasim.simulator.cost.compute import fp8_cast_bytes, op_time_s
from parasim.simulator.cost.profile import (
    KernelEfficiency,
    analytic_profile,
    default_profile,
    profile_from_mapping,
    profile_mapping,
)
from parasim.simulator.jobfile import job_from_mapping
from parasim.simulator.layout import Layout
from parasim.simulator.ops import Shard, attention_ops, gemm, head_ops
from parasim.simulator.predict import predict
from tests.builders import gpt

H100 = catalog.gpu("h100-sxm")
A100 = catalog.gpu("a100-80gb")


def test_fp8_runs_block_linears_in_fp8_and_pays_their_casts():
    """A block GEMM at the FP8 peak plus its cast traffic (4 bytes per input value); the LM
    head and fused attention at the bf16 peak, as in bf16 training."""
    profile = analytic_profile()
    block = gemm("fc1", 8192, 16384, 4096, 2)
    flop = block.flop
    expected = flop / (H100.peak_flop_per_s("fp8") * profile.gemm.efficiency(flop, 4096)) \
        + 8192 * 4096 * 4 / (H100.memory_bytes_per_s * profile.memory_bandwidth_efficiency)
    assert op_time_s(block, H100, "fp8", profile) == pytest.approx(expected, rel=1e-12)
    assert fp8_cast_bytes(block, True, profile) == 8192 * 16384 * 4  # backward: output grad
    model = gpt(2, 4096, 32)
    shard = Shard(micro_batch=1, seq_length=4096)
    head = next(op for op in head_ops(model, shard) if op.name == "lm_head")
    core = next(op for op in attention_ops(model, shard) if op.kind == "attention")
    for op in (head, core):
        assert op_time_s(op, H100, "fp8", profile) == op_time_s(op, H100, "bf16", profile)


def test_attention_efficiency_falls_with_head_dim_below_the_reference():
    kernel = KernelEfficiency(max_efficiency=0.5, half_efficiency_flop=1e9, backward_factor=2.5,
                              shape_exponent=0.5, reference_width=128)
    big = 1e15
    assert kernel.efficiency(big, 128) == pytest.approx(0.5 / (1 + 1e-6))
    assert kernel.efficiency(big, 256) == kernel.efficiency(big, 128)
    assert kernel.efficiency(big, 64) == pytest.approx(kernel.efficiency(big, 128)
                                                       * math.sqrt(0.5))


def test_generations_override_constants_for_their_gpus_only():
    raw = profile_mapping(analytic_profile())
    raw["generations"] = {"hopper": {"gpus": ["h100-sxm"], "gemm": {"max_efficiency": 0.6}}}
    profile = profile_from_mapping(raw)
    assert profile.for_gpu("h100-sxm").gemm.max_efficiency == 0.6
    assert profile.for_gpu("h100-sxm").attention == profile.attention
    assert profile.for_gpu("a100-80gb").gemm.max_efficiency == profile.gemm.max_efficiency
    assert profile_from_mapping(profile_mapping(profile)) == profile


def test_a_job_is_timed_with_its_generations_constants():
    raw = profile_mapping(analytic_profile())
    raw["generations"] = {"hopper": {"gpus": ["h100-sxm"], "gemm": {"max_efficiency": 0.4}}}
    slow_hopper = profile_from_mapping(raw)
    job = job_from_mapping({"model": "llama3-8b", "cluster": {"base": "dgx-h100", "num_nodes": 1},
                            "training": {"seq_length": 4096, "global_batch_size": 8},
                            "parallel": {"tp": 8}}, base_dir=Path("."), source="t")
    plain = predict(job, profile=analytic_profile()).breakdown.compute_s
    assert predict(job, profile=slow_hopper).breakdown.compute_s > 1.5 * plain


def test_overlap_defaults_are_the_frameworks():
    """DDP, FSDP and Megatron-Core's distributed optimizer overlap the gradient reduction and
    the parameter gathers by default; the job file can still turn them off."""
    layout = Layout()
    assert layout.overlap_grad_reduce and layout.overlap_param_gather
    assert not replace(layout, overlap_grad_reduce=False).overlap_grad_reduce


def test_estimate_uses_the_published_fit_unless_told_analytic():
    job = job_from_mapping({"model": "llama3-8b", "cluster": {"base": "dgx-h100", "num_nodes": 1},
                            "training": {"seq_length": 4096, "global_batch_size": 8},
                            "parallel": {"tp": 8}}, base_dir=Path("."), source="t")
    assert predict(job).step_time_s == predict(job, profile=default_profile()).step_time_s
    shipped = default_profile()
    hopper = shipped.for_gpu("h100-sxm")
    assert hopper.band.calibrated and hopper.band.runs > 0
