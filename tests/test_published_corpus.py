"""The published-run corpus (profiles/published/sources) and its reader
(simulator/datasets/published.py): the schema, the sources that must never be in it, the counts
it is held to, and rows becoming jobs with a measured step time or a counted skip reason.

Tests that need the shared datasets folder (MosaicML, Hagemann et al., vTrain) skip when it is
not found (found as `parasim --data-dir` finds it: $PARASIM_DATA or shared/data above here).
"""

from __future__ import annotations

import csv
import math
import re
from collections import Counter
from pathlib import Path

import pytest

from parasim.data_dir import data_dir as find_data_dir
from parasim.simulator.datasets import published as pub
from parasim.simulator.errors import SpecError
from parasim.simulator.flops import model_flop_per_step

CORPUS = pub.default_corpus_dir()
FILES = pub.corpus_files(CORPUS)
# Blind-test sources (issue 16; profiles/published/README.md says why): none may appear in
# the corpus. Patterns are case-insensitive; a note that says a source was not used must not
# name it either.
RESERVED = (r"2104\.04473", r"2205\.05198", r"2402\.15027", r"2407\.21783", r"torchtitan",
            r"tr11", r"bloom-176b", r"megatron-bridge", r"performance[-_ ]summar",
            r"megatron-lm\S{0,80}readme", r"megatron-lm readme", r"opt-175b", r"opt 175b",
            r"deepseek[- ]v3")
# What the issue asks of the corpus (raw rows and usable runs alike).
MINIMUM = {"rows": 150, "sources": 6, "H100/H200/H800": 50, "MoE": 20, "seq >= 16384": 20}


def _raw_rows() -> list[dict[str, str]]:
    return [row for path in FILES for _, row in pub.read_rows(path)]


@pytest.fixture(scope="module")
def corpus():
    return pub.load_published(CORPUS, None)


@pytest.fixture(scope="module")
def shared_dir() -> Path:
    try:
        return find_data_dir(None, "mosaicml")
    except SpecError:
        pytest.skip("shared datasets folder (shared/data) not found")


@pytest.fixture(scope="module")
def everything(shared_dir):
    return pub.load_published(CORPUS, shared_dir)


# Schema -------------------------------------------------------------------------------------


def test_the_corpus_is_found_from_either_folder():
    assert pub.corpus_files(CORPUS) == pub.corpus_files(CORPUS / "sources")
    assert pub.header(CORPUS) == pub.header(CORPUS / "sources")


def test_every_file_has_the_header_and_a_note():
    header = pub.header(CORPUS)
    assert len(header) == 57 and len(set(header)) == 57
    assert len(FILES) >= 6
    for path in FILES:
        with path.open(newline="", encoding="utf-8") as f:
            assert next(csv.reader(f)) == header, path.name
        assert path.with_suffix(".md").is_file(), f"{path.stem}.md (how the source was read)"


def test_every_row_names_its_source_table_and_fits_the_header():
    header = pub.header(CORPUS)
    for path in FILES:
        for line, row in pub.read_rows(path):
            where = f"{path.name}:{line}"
            assert None not in row and list(row) == header, f"{where}: wrong number of cells"
            assert row["source_id"] == path.stem, where
            assert row["source_ref"].strip() and row["table_or_fig"].strip(), where
            assert row["row_label"].strip(), where


def test_shared_files_use_the_corpus_schema(shared_dir):
    header = pub.header(CORPUS)
    for source, rel in pub.SHARED_FILES.items():
        with (shared_dir / rel).open(newline="", encoding="utf-8") as f:
            assert next(csv.reader(f)) == header, rel
        assert {row["source_id"] for _, row in pub.read_rows(shared_dir / rel)} == {source}


def _reserved_hits(text: str) -> list[str]:
    return [p for p in RESERVED if re.search(p, text, re.IGNORECASE)]


def test_no_reserved_source_appears_in_the_corpus():
    for path in [*FILES, *(p.with_suffix(".md") for p in FILES)]:
        hits = _reserved_hits(path.read_text(encoding="utf-8"))
        assert not hits, f"{path.name} names a reserved blind-test source: {hits}"


def test_no_reserved_source_appears_in_the_shared_files(shared_dir):
    for rel in pub.SHARED_FILES.values():
        assert not _reserved_hits((shared_dir / rel).read_text(encoding="utf-8")), rel


def test_the_reserved_patterns_catch_what_they_are_for():
    assert _reserved_hits("Narayanan et al., arXiv:2104.04473, Table 1")
    assert _reserved_hits("NVIDIA/Megatron-LM@abc123:README.md")
    assert _reserved_hits("NeMo performance summary")
    assert not _reserved_hits("Megatron-LM commit 2196398, nvcr.io/nvidia/nemo:24.03 container")


# Counts -------------------------------------------------------------------------------------


def test_the_raw_corpus_has_the_counts_the_issue_asks():
    counts = pub.corpus_counts(_raw_rows())
    for key, least in MINIMUM.items():
        assert counts[key] >= least, (key, counts)


def test_the_usable_corpus_has_the_counts_the_issue_asks(corpus):
    runs, _ = corpus
    counts = pub.run_counts(runs)
    for key, least in MINIMUM.items():
        assert counts[key] >= least, (key, counts)


def test_every_row_is_a_run_or_a_counted_skip(corpus):
    runs, skipped = corpus
    per_source = Counter(r["source_id"] for r in _raw_rows())
    used = Counter(r.source for r in runs)
    dropped = Counter()
    for (source, reason), n in skipped.items():
        assert reason and n > 0
        dropped[source] += n
    assert used + dropped == per_source
    assert sum(skipped.values()) > 0


def test_shared_rows_are_runs_or_counted_skips(everything, shared_dir):
    runs, skipped = everything
    for source, rel in pub.SHARED_FILES.items():
        rows = sum(1 for _ in pub.read_rows(shared_dir / rel))
        used = sum(r.source == source for r in runs)
        dropped = sum(n for (s, _), n in skipped.items() if s == source)
        assert used + dropped == rows, source


# Runs ---------------------------------------------------------------------------------------


def _check_run(run: pub.PublishedRun) -> None:
    where = f"{run.file}:{run.line}"
    job = run.job
    assert job.layout is not None and job.layout.world_size == job.cluster.world_size, where
    assert run.generation in ("ampere", "hopper", "blackwell"), where
    assert run.moe == job.model.is_moe, where
    if run.basis == "none":
        assert run.measured_step_s is None, where
    else:
        assert run.basis in ("iteration_time", "throughput", "tflops", "mfu"), where
        assert math.isfinite(run.measured_step_s) and run.measured_step_s > 0, where
        assert not run.oom, where
    if run.measured_memory_bytes is not None:
        assert 1 * pub.GiB < run.measured_memory_bytes < 200 * pub.GiB, where


def test_every_corpus_run_has_a_job_and_a_positive_step_time(corpus):
    runs, _ = corpus
    assert runs
    for run in runs:
        _check_run(run)
        assert run.measured_step_s is not None or run.oom or run.measured_memory_bytes, run.label


def test_every_shared_run_has_a_job_and_a_checked_time(everything):
    runs, skipped = everything
    for run in runs:
        _check_run(run)
    by_source = Counter(r.source for r in runs)
    timed = Counter(r.source for r in runs if r.measured_step_s is not None)
    assert by_source["vtrain"] == timed["vtrain"] == 1549
    # llm-foundry's tokens/s and MFU agree with parasim's FLOP count on every row
    assert by_source["mosaicml_llmfoundry"] == timed["mosaicml_llmfoundry"] == 216
    hagemann = [r for r in runs if r.source == "hagemann2023"]
    assert len(hagemann) == 964 and sum(r.oom for r in hagemann) == 563
    assert all(r.measured_step_s is None for r in hagemann)  # global batch unknown
    assert skipped[("hagemann2023", "status Kernel not available")] == 19


def test_run_points_at_its_row(corpus):
    runs, _ = corpus
    run = runs[0]
    assert run.file.startswith("sources/")
    lines = (CORPUS / run.file).read_text(encoding="utf-8").splitlines()
    assert run.label in lines[run.line - 1]


# Mapping rules on small rows ----------------------------------------------------------------


def _row(**cells: str) -> dict[str, str]:
    """A corpus row: a timed Llama-2-7B run on 8 H100s unless cells say otherwise."""
    row = dict.fromkeys(pub.header(CORPUS), "")
    row.update(source_id="test", source_ref="ref", table_or_fig="T1", row_label="test row",
               model_name="Llama-2-7B", arch="Llama (RMSNorm, SwiGLU, RoPE, MHA)",
               num_layers="32", hidden_size="4096", ffn_hidden_size="11008", num_heads="32",
               seq_len="4096", gpu_model="NVIDIA H100 80GB", num_gpus="8", tp="2", pp="1",
               micro_batch_size="1", global_batch_size="64", status="ok",
               iteration_time_s="2.5")
    row.update(cells)
    return row


def _skip_reason(row: dict[str, str]) -> str:
    with pytest.raises(pub.Unusable) as err:
        pub.row_run(row, "test.csv", 2)
    return err.value.reason


def test_a_plain_row_becomes_a_timed_run():
    run = pub.row_run(_row(), "test.csv", 2)
    assert (run.measured_step_s, run.basis, run.generation) == (2.5, "iteration_time", "hopper")
    layout, model = run.job.layout, run.job.model
    assert (layout.tp, layout.dp, layout.zero_stage, layout.recompute) == (2, 4, 0, "none")
    assert (model.activation, model.norm, model.vocab_size) == ("swiglu", "rmsnorm", 32000)
    assert run.job.training.global_batch_size == 64 and run.job.training.precision == "bf16"


def test_time_from_throughput_tflops_and_mfu():
    base = dict(iteration_time_s="")
    run = pub.row_run(_row(**base, tokens_per_s_per_gpu="4096"), "t.csv", 2)
    assert run.basis == "throughput"
    assert run.measured_step_s == pytest.approx(64 * 4096 / (8 * 4096))
    flop = model_flop_per_step(run.job.model, run.job.training)
    run = pub.row_run(_row(**base, tflops_per_gpu="400"), "t.csv", 2)
    assert run.basis == "tflops" and run.measured_step_s == pytest.approx(flop / (400e12 * 8))
    run = pub.row_run(_row(**base, mfu_pct="40"), "t.csv", 2)
    assert run.basis == "mfu"
    assert run.measured_step_s == pytest.approx(flop / (0.4 * 989.4e12 * 8))


def test_causal_flop_count_takes_half_the_attention_off():
    full = pub.row_run(_row(iteration_time_s="", tflops_per_gpu="150", seq_len="65536",
                            global_batch_size="1", tp="8"), "t.csv", 2)
    causal = pub.row_run(_row(source_id="usp2024", iteration_time_s="", tflops_per_gpu="150",
                              seq_len="65536", global_batch_size="1", tp="8"), "t.csv", 2)
    assert 0.5 < causal.measured_step_s / full.measured_step_s < 0.75


def test_inconsistent_rows_are_skipped_not_repaired():
    assert _skip_reason(_row(dp="8")) == "tp·pp·dp·cp != num_gpus"
    assert _skip_reason(_row(tflops_per_gpu="400", mfu_pct="40", peak_tflops_per_gpu="99")) \
        == "tflops_per_gpu != mfu_pct · peak_tflops_per_gpu"
    assert _skip_reason(_row(iteration_time_s="", tokens_per_s_per_gpu="4096",
                             tflops_per_gpu="900")) \
        == "time from throughput and from tflops disagree"
    assert _skip_reason(_row(global_batch_tokens="1000")) \
        == "global_batch_tokens != global_batch_size · seq_len"
    assert _skip_reason(_row(hidden_size="")) == "missing hidden_size"
    assert _skip_reason(_row(memory_gib="90")) == "memory_gib exceeds the GPU's memory"
    assert _skip_reason(_row(gpu_model="NVIDIA B300")) == "GPU not in the catalog"
    assert _skip_reason(_row(status="Kernel not available")) == "status Kernel not available"


def test_fit_only_rows():
    oom = pub.row_run(_row(status="OOM", global_batch_size="", pp="2", tp="1", dp="4",
                           micro_batch_size="2", zero_or_sharding="ZeRO-1"), "t.csv", 2)
    assert oom.oom and oom.measured_step_s is None and oom.basis == "none"
    assert oom.job.training.global_batch_size == 2 * 4 * 2 * 2  # m = 2·pp micro-batches
    assert _skip_reason(_row(global_batch_size="", micro_batch_size="")) \
        == "fit-only row without micro_batch_size"
    assert _skip_reason(_row(global_batch_size="")) == "fit-only row with unstated sharding"
    memory = pub.row_run(_row(global_batch_size="", zero_or_sharding="FSDP", memory_gib="50"),
                         "t.csv", 2)
    assert memory.measured_memory_bytes == 50 * pub.GiB and not memory.oom


@pytest.mark.parametrize("text, stage", [
    ("PyTorch FSDP FULL_SHARD (FULL_SHARD~ZeRO-3, SHARD_GRAD_OP~ZeRO-2)", 3),
    ("PyTorch FSDP SHARD_GRAD_OP (FULL_SHARD~ZeRO-3, SHARD_GRAD_OP~ZeRO-2)", 2),
    ("ZeRO-1 style optimizer sharding (torch ZeroRedundancyOptimizer)", 1),
    ("HSDP (FSDP2; shard within node)", 3), ("Gemini (ZeRO-3-style chunked sharding)", 3),
    ("ZeRO-2", 2), ("none (DDP)", 0), ("none (ZeRO-0)", 0), ("", 0)])
def test_zero_stage_wording(text, stage):
    assert pub.zero_stage(_row(zero_or_sharding=text), fit_only=False, data_parallel=8) == stage


@pytest.mark.parametrize("text, mode", [
    ("none", "none"), ("", "none"), ("full (checkpoint every layer)", "full"),
    ("gradient checkpointing (layer-level; forward recomputed incl. attention)", "full"),
    ("rematerialization-aware checkpointing (checkpoint at FlashAttention output)", "full"),
    ("remat_policy=minimal_flash", "selective")])
def test_recompute_wording(text, mode):
    assert pub.recompute_mode(_row(recompute=text)) == mode


def test_recompute_from_a_paxml_checkpoint_policy():
    row = _row(other_settings="configs.py GPT5B CHECKPOINT_POLICY=SAVE_DOT_WITH_NO_BATCH_DIM")
    assert pub.recompute_mode(row) == "full"


def test_flash_attention_wording():
    assert pub.flash_attention(_row(flash_attention="no (native PyTorch attention)")) is False
    assert pub.flash_attention(_row(flash_attention="not stated in table (attn_impl='triton')"))
    assert pub.flash_attention(_row(flash_attention=""))


def test_gpu_and_cluster_mapping():
    a800 = pub.row_run(_row(gpu_model="NVIDIA A800 80GB", num_gpus="16", tp="8", dp="2"),
                       "t.csv", 2)
    group = a800.job.cluster.node_groups[0]
    assert a800.generation == "ampere" and group.num_nodes == 2
    assert group.gpu.nvlink_bytes_per_s == 200e9 and group.intra_node.bytes_per_s == 200e9
    small = pub.row_run(_row(gpu_model="NVIDIA A100", gpu_mem_gb="40", num_gpus="2"), "t.csv", 2)
    assert small.job.cluster.node_groups[0].gpus_per_node == 2
    assert small.job.cluster.node_groups[0].gpu.name == "a100-40gb"
    assert _skip_reason(_row(num_gpus="12", tp="4", global_batch_size="48")) \
        == "num_gpus does not fill whole 8-GPU nodes"


def test_moe_row():
    row = _row(model_name="Qwen2-57B-A14B", num_layers="28", hidden_size="3584", num_heads="28",
               num_kv_heads="4", ffn_hidden_size="", vocab_size="151936", tp="2", ep="4",
               framework="Megatron-Core",
               arch="Qwen2-MoE decoder (RMSNorm, SwiGLU, RoPE, GQA 28q/4kv), 64 routed experts "
                    "top-8 + 1 shared expert (intermediate 20480)",
               moe_num_experts="64", moe_top_k="8", moe_shared_experts="1",
               moe_expert_ffn_hidden="2560",
               other_settings="token-dropping with capacity factor 1 used for benchmarking")
    run = pub.row_run(row, "t.csv", 2)
    model = run.job.model
    assert run.moe and model.num_experts == 64 and model.shared_ffn_hidden_size == 20480
    assert model.qkv_bias and model.shared_expert_gate and model.capacity_factor == 1.0
    assert run.job.layout.sequence_parallel  # Megatron-Core needs it with tp and ep > 1
    assert _skip_reason({**row, "moe_top_k": ""}) == "MoE row without moe_top_k"


def test_excluded_rows_say_why():
    assert _skip_reason(_row(source_id="coat2024", row_label="Llama-2-7B / 1 GPU / COAT")) \
        == "COAT's FP8 optimizer states and activations not modelled"


def test_summary_prints_counts_and_skips(capsys):
    assert pub.main([]) == 0
    out = capsys.readouterr().out
    assert "usable corpus runs" in out and "skipped" in out


def test_assumptions_name_every_rule_family():
    for word in ("model", "cluster", "training", "layout", "time", "fit-only", "Hagemann"):
        assert word in pub.ASSUMPTIONS
