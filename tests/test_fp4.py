"""training.precision fp4: NVIDIA's NVFP4 pretraining recipe (arXiv:2509.25149), pinned to the
paper's choices - what runs in 4 bits, which blocks stay in BF16, the format's bytes - and the
new Blackwell catalog entries it needs."""

from __future__ import annotations

from pathlib import Path

import pytest

from parasim.simulator import catalog, nvfp4
from parasim.simulator.cost.compute import fp8_cast_bytes, op_time_s
from parasim.simulator.cost.profile import analytic_profile
from parasim.simulator.errors import SpecError
from parasim.simulator.jobfile import job_from_mapping
from parasim.simulator.ops import Shard, attention_ops, gemm, head_ops
from parasim.simulator.predict import predict
from parasim.simulator.step_time import precision_chunks
from parasim.simulator.training import TrainingSpec
from parasim.planner.export import export_layout as export
from tests.builders import gpt
from tests.test_cli_errors import assert_user_error, estimate

GB200 = catalog.gpu("gb200")
BLACKWELL_FP4 = ("b200", "b300", "gb200", "gb300")


def job(precision: str = "fp4", layers: int = 62, pp: int = 2, **parallel):
    model = {"base": "llama3-8b", "num_layers": layers}
    raw = {"model": model, "cluster": {"base": "gb200-nvl72", "num_nodes": 18},
           "training": {"seq_length": 4096, "global_batch_size": 72, "precision": precision},
           "parallel": {"tp": 4, "pp": pp, **parallel}}
    return job_from_mapping(raw, base_dir=Path("."), source="test")


# Catalog -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BLACKWELL_FP4)
def test_blackwell_entries_have_fp4_and_every_source(name):
    entry = catalog.entries("gpus")[name]
    for key in ("peaks", "memory", "nvlink", "tdp", "idle", "price"):
        assert entry["sources"][key].strip(), key
    gpu = catalog.gpu(name)
    # NVIDIA's dense ratios: FP4 above FP8, FP8 twice BF16
    assert gpu.peak_fp4_flop_per_s > gpu.peak_fp8_flop_per_s == 2 * gpu.peak_bf16_flop_per_s


def test_catalog_numbers_as_cited():
    """GB200: NVL72's 1,440 PF FP4 / 720 PF FP8 (sparse) over 72 GPUs, halved; 186 GB (MLPerf);
    B300: 14 PF dense FP4, 288 GB; GB300: 15 PF dense FP4."""
    assert GB200.peak_fp4_flop_per_s == 1440e15 / 72 / 2
    assert GB200.peak_fp8_flop_per_s == 720e15 / 72 / 2
    assert GB200.memory_bytes == 186 * 2**30
    assert catalog.gpu("b300").peak_fp4_flop_per_s == 14e15
    assert catalog.gpu("b300").memory_bytes == 288 * 2**30
    assert catalog.gpu("gb300").peak_fp4_flop_per_s == 15e15
    assert catalog.gpu("b200").peak_fp4_flop_per_s == 72e15 / 8


@pytest.mark.parametrize("name", ["h100-sxm", "h200", "a100-80gb", "mi300x"])
def test_gpus_without_fp4_units_have_none(name):
    assert catalog.gpu(name).peak_fp4_flop_per_s == 0


def test_fp4_refused_on_hopper_naming_the_gpus_that_have_it():
    with pytest.raises(SpecError) as err:
        catalog.gpu("h100-sxm").peak_flop_per_s("fp4")
    text = str(err.value)
    assert "h100-sxm has no fp4 tensor cores" in text
    for name in BLACKWELL_FP4:
        assert name in text


def test_fp4_on_h100_is_a_one_line_cli_error(tmp_path):
    result = estimate(tmp_path, {"training.precision": "fp4"})
    assert_user_error(result, "training.precision", "fp4", "h100-sxm", "gb200", "b300")


# The recipe's choices ------------------------------------------------------------------------


def test_blocks_kept_in_bf16_are_the_recipes_share_half_at_each_end():
    """About 16% of the linear layers stay in BF16 (arXiv:2509.25149 as summarised); which
    blocks is model-specific, so parasim keeps half of them at each end of the stack."""
    assert nvfp4.bf16_blocks(62) == (5, 5)
    assert sum(nvfp4.bf16_blocks(62)) / 62 == pytest.approx(0.16, abs=0.005)
    assert nvfp4.bf16_blocks(32) == (3, 3)
    assert nvfp4.bf16_blocks(126) == (10, 10)
    assert nvfp4.bf16_blocks(4) == (1, 1)  # at least one at each end
    assert nvfp4.bf16_blocks(1) == (1, 0)  # a single block: bf16, never more than exist
    assert nvfp4.precision_spans(0, 62, 62) == [(0, 5, "bf16"), (5, 57, "fp4"),
                                                (57, 62, "bf16")]
    assert nvfp4.precision_spans(31, 62, 62) == [(31, 57, "fp4"), (57, 62, "bf16")]


def test_nvfp4_bytes_follow_the_format():
    """§2: E2M1 elements (4 bits) with one FP8 E4M3 scale per 16 values; the cast reads the
    16-bit tensor twice (amax, then quantise) and writes two NVFP4 copies."""
    assert nvfp4.STORED_BYTES_PER_VALUE == 0.5 + 1 / 16
    assert nvfp4.CAST_BYTES_PER_VALUE == 2 + 2 + 2 * (0.5 + 1 / 16)
    training = TrainingSpec(seq_length=4096, global_batch_size=8, precision="fp4")
    assert training.linear_input_bytes_per_value == 0.5625  # vs 1 in fp8, 2 in bf16
    assert training.linear_input_bytes_for("bf16") == 2
    # master weights and Adam states in FP32, the working weights in BF16, as fp8 runs
    assert (training.weight_bytes_per_param, training.grad_bytes_per_param,
            training.optimizer_bytes_per_param) == (2, 4, 12)


def test_fp4_speeds_up_only_the_block_linear_layers():
    """A block GEMM at the FP4 peak plus its NVFP4 cast; the LM head, the router and fused
    attention at the bf16 peak exactly as in a bf16 run."""
    profile = analytic_profile()
    block = gemm("fc1", 8192, 16384, 4096, 2)
    bandwidth = GB200.memory_bytes_per_s * profile.memory_bandwidth_efficiency
    expected = block.flop / (GB200.peak_fp4_flop_per_s * profile.gemm.efficiency(block.flop, 4096)) \
        + 8192 * 4096 * nvfp4.CAST_BYTES_PER_VALUE / bandwidth
    assert op_time_s(block, GB200, "fp4", profile) == pytest.approx(expected, rel=1e-12)
    assert fp8_cast_bytes(block, True, profile, "fp4") == 8192 * 16384 * 5.125
    assert op_time_s(block, GB200, "fp4", profile) < op_time_s(block, GB200, "fp8", profile)
    model = gpt(2, 4096, 32)
    shard = Shard(micro_batch=1, seq_length=4096)
    head = next(op for op in head_ops(model, shard) if op.name == "lm_head")
    core = next(op for op in attention_ops(model, shard) if op.kind == "attention")
    router = gemm("router", 8192, 64, 4096, 2, fp8=False)
    for op in (head, core, router):
        for backward in (False, True):
            assert op_time_s(op, GB200, "fp4", profile, backward) == \
                op_time_s(op, GB200, "bf16", profile, backward)


def test_pipeline_stages_keep_their_end_blocks_in_bf16():
    j = job(pp=2)
    first = precision_chunks(j, 0)
    last = precision_chunks(j, 1)
    assert [(p, sum(g.count for g in gs)) for p, gs in first] == [("bf16", 5), ("fp4", 26)]
    assert [(p, sum(g.count for g in gs)) for p, gs in last] == [("fp4", 26), ("bf16", 5)]
    assert [p for p, _ in precision_chunks(job("fp8"), 1)] == ["fp8"]


def test_fp4_step_and_memory_between_the_others():
    """fp4 is faster than fp8, which is faster than bf16 (linear GEMMs only), and stores less."""
    runs = {p: predict(job(p)) for p in ("bf16", "fp8", "fp4")}
    assert runs["fp4"].step_time_s < runs["fp8"].step_time_s < runs["bf16"].step_time_s
    acts = {p: r.stages[1].activations_bytes for p, r in runs.items()}
    assert acts["fp4"] < acts["fp8"] < acts["bf16"]


def test_megatron_export_sets_the_recipe_and_its_bf16_blocks():
    text = export(job(), "megatron")
    for flag in ("--fp4-format e2m1", "--fp4-recipe nvfp4", "--first-last-layers-bf16",
                 "--num-layers-at-start-in-bf16 5", "--num-layers-at-end-in-bf16 5"):
        assert flag in text, flag


def test_torchtitan_export_refuses_fp4_naming_the_set():
    with pytest.raises(SpecError) as err:
        export(job(sequence_parallel=True), "torchtitan")
    assert "training.precision=fp8" in str(err.value)
