"""planner.export: a job's layout as Megatron-LM flags and as a torchtitan TOML fragment;
and profiles/published_layouts.yaml, whose every entry must build a valid job."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest

from parasim import profiles
from parasim.planner.export import FORMATS, export_layout
from parasim.simulator import catalog
from parasim.simulator.errors import SpecError
from parasim.simulator.jobfile import job_from_mapping
from parasim.simulator.yamlfile import load_data

# Every flag the Megatron export may write, each checked in NVIDIA/Megatron-LM
# megatron/training/arguments.py (commit 000c4ac): the oracle that no flag is made up.
MEGATRON_FLAGS = {
    "--tensor-model-parallel-size", "--pipeline-model-parallel-size", "--context-parallel-size",
    "--expert-model-parallel-size", "--sequence-parallel", "--use-tp-pp-dp-mapping",
    "--num-layers-per-virtual-pipeline-stage", "--decoder-first-pipeline-num-layers",
    "--decoder-last-pipeline-num-layers", "--pipeline-model-parallel-layout",
    "--micro-batch-size", "--global-batch-size", "--seq-length", "--num-layers", "--hidden-size",
    "--num-attention-heads", "--ffn-hidden-size", "--group-query-attention", "--num-query-groups",
    "--kv-channels", "--qk-layernorm", "--multi-latent-attention", "--q-lora-rank",
    "--kv-lora-rank", "--qk-head-dim", "--qk-pos-emb-head-dim", "--v-head-dim", "--swiglu",
    "--normalization", "--position-embedding-type", "--max-position-embeddings",
    "--untie-embeddings-and-output-weights", "--disable-bias-linear", "--add-qkv-bias",
    "--attention-dropout", "--hidden-dropout", "--use-flash-attn", "--num-experts",
    "--moe-router-topk", "--moe-ffn-hidden-size", "--moe-shared-expert-intermediate-size",
    "--moe-layer-freq", "--moe-expert-capacity-factor", "--moe-token-dispatcher-type",
    "--bf16", "--fp16", "--fp8-format", "--use-distributed-optimizer", "--use-megatron-fsdp",
    "--data-parallel-sharding-strategy", "--recompute-activations", "--recompute-granularity",
    "--recompute-method", "--recompute-num-layers", "--overlap-grad-reduce",
    "--overlap-param-gather", "--tp-comm-overlap", "--overlap-moe-expert-parallel-comm",
    # checked in commit d98e8a6 (2026-08; the gate is a TransformerConfig field made a flag)
    "--grad-reduce-in-bf16", "--accumulate-allreduce-grads-in-fp32", "--moe-shared-expert-gate",
    # megatron/training/arguments.py as stored on 2026-12-05: 'p2p, a2a, allgather or a2a+p2p'
    "--cp-comm-type",
}


def _job(model, cluster, parallel, seq_length=8192, global_batch_size=1024, **training):
    raw = {"model": model, "cluster": cluster, "parallel": parallel,
           "training": {"seq_length": seq_length, "global_batch_size": global_batch_size,
                        **training}}
    return job_from_mapping(raw, base_dir=Path("."), source="test")


def _megatron_args(text: str) -> dict[str, str | None]:
    """The flags after pretrain_gpt.py, checking the shape: comments first, then one command
    with one flag per line, every line but the last ending in a backslash."""
    lines = text.rstrip("\n").split("\n")
    command = [line for line in lines if not line.startswith("#")]
    assert lines[:len(lines) - len(command)] == [line for line in lines if line.startswith("#")]
    assert all(line.endswith(" \\") for line in command[:-1]) and not command[-1].endswith("\\")
    assert all(line.strip().startswith("--") and len(shlex.split(line.rstrip(" \\"))) <= 2
               for line in command[1:])
    tokens = shlex.split(" ".join(line.rstrip(" \\") for line in command))
    tokens = tokens[tokens.index("pretrain_gpt.py") + 1:]
    args: dict[str, str | None] = {}
    for i, token in enumerate(tokens):
        if token.startswith("--"):
            value = tokens[i + 1] if i + 1 < len(tokens) and not tokens[i + 1].startswith("--") \
                else None
            assert token not in args, f"{token} twice"
            args[token] = value
    assert set(args) <= MEGATRON_FLAGS, set(args) - MEGATRON_FLAGS
    return args


def _megatron_layout(text: str) -> list[list[str]]:
    """Megatron's pipeline_parallel_layer_layout.parse_str_to_list, re-done: stages of layer
    letters (E embedding, t transformer, L loss)."""
    text = text.replace(",", "")
    text = re.sub(r"\(([^)]+)\)\*(\d+)", lambda m: m.group(1) * int(m.group(2)), text)
    text = re.sub(r"(.)\*(\d+)", lambda m: m.group(1) * int(m.group(2)), text)
    return [list(stage) for stage in text.split("|")]


@pytest.fixture(scope="module")
def llama70b():
    """Llama 3 70B on 16 DGX H100: tp 8, pp 4 interleaved over 2 chunks, SP, selective, ZeRO-1."""
    return _job("llama3-70b", {"base": "dgx-h100", "num_nodes": 16},
                {"tp": 8, "pp": 4, "vpp": 2, "schedule": "interleaved", "micro_batch_size": 1,
                 "sequence_parallel": True, "recompute": "selective", "zero_stage": 1,
                 "overlap_grad_reduce": True, "overlap_param_gather": True})


# Megatron-LM ---------------------------------------------------------------------------------


def test_megatron_llama70b_flags(llama70b):
    args = _megatron_args(export_layout(llama70b, "megatron"))
    expected = {
        "--tensor-model-parallel-size": "8", "--pipeline-model-parallel-size": "4",
        "--context-parallel-size": "1", "--expert-model-parallel-size": "1",
        "--num-layers-per-virtual-pipeline-stage": "10",  # 80 layers / (pp 4 · vpp 2)
        "--sequence-parallel": None, "--recompute-activations": None,
        "--use-distributed-optimizer": None, "--overlap-grad-reduce": None,
        "--overlap-param-gather": None,
        "--micro-batch-size": "1", "--global-batch-size": "1024", "--seq-length": "8192",
        "--num-layers": "80", "--hidden-size": "8192", "--num-attention-heads": "64",
        "--ffn-hidden-size": "28672", "--group-query-attention": None,
        "--num-query-groups": "8", "--swiglu": None, "--normalization": "RMSNorm",
        "--position-embedding-type": "rope", "--max-position-embeddings": "8192",
        "--untie-embeddings-and-output-weights": None, "--disable-bias-linear": None,
        "--use-flash-attn": None, "--bf16": None,
    }
    assert {k: args.get(k, "missing") for k in expected} == expected
    for absent in ("--fp16", "--fp8-format", "--recompute-granularity", "--num-experts",
                   "--decoder-first-pipeline-num-layers", "--pipeline-model-parallel-layout"):
        assert absent not in args


def test_megatron_launch_line_and_header(llama70b):
    text = export_layout(llama70b, "megatron")
    assert "torchrun --nnodes 16 --nproc-per-node 8 pretrain_gpt.py \\" in text
    assert "# data-parallel size 4 is not a flag" in text  # 128 / (8·4·1)
    assert "not expressed" not in text  # everything of this layout has a flag


def test_megatron_uneven_ends_use_first_and_last_stage_flags():
    """Llama 3.1 405B: 126 layers on 16 stages = 7, 8 x 14, 7 (Llama 3 paper §3.3.2)."""
    job = _job("llama3.1-405b", {"base": "dgx-h100", "num_nodes": 16},
               {"tp": 8, "pp": 16}, global_batch_size=64)
    args = _megatron_args(export_layout(job, "megatron"))
    assert args["--decoder-first-pipeline-num-layers"] == "7"
    assert args["--decoder-last-pipeline-num-layers"] == "7"
    assert "--num-layers-per-virtual-pipeline-stage" not in args


def test_per_stage_full_recompute_is_megatrons_block_method():
    """Megatron-LM recomputes the first --recompute-num-layers blocks of every chunk and
    nothing else: per-stage counts are exported when one N gives min(N, layers) = count on
    every stage, and refused otherwise (issue 17: the export used to take the largest count
    and say so in a comment); torchtitan recomputes every block or none."""
    cluster = {"base": "dgx-h100", "num_nodes": 2}
    even = _job("llama3-70b", cluster, {"tp": 8, "pp": 2, "full_recompute_layers": [5, 5]},
                global_batch_size=64)
    args = _megatron_args(export_layout(even, "megatron"))
    assert (args["--recompute-granularity"], args["--recompute-method"],
            args["--recompute-num-layers"]) == ("full", "block", "5")
    capped = _job("llama3-70b", cluster, {"tp": 8, "pp": 2, "stages": [4, 76],
                                          "full_recompute_layers": [4, 6]}, global_batch_size=64)
    assert _megatron_args(export_layout(capped, "megatron"))["--recompute-num-layers"] == "6"
    uneven = _job("llama3-70b", cluster, {"tp": 8, "pp": 2, "full_recompute_layers": [6, 2]},
                  global_batch_size=64)
    with pytest.raises(SpecError, match=r"\[6, 2\] blocks per virtual stage.*same first N") as err:
        export_layout(uneven, "megatron")
    assert err.value.field == "--export" and "full_recompute_layers=[6,6]" in err.value.valid
    mixed = _job("llama3-70b", cluster, {"tp": 8, "pp": 2, "recompute": "selective",
                                         "full_recompute_layers": [5, 5]}, global_batch_size=64)
    with pytest.raises(SpecError, match="selective recompute of the others"):
        export_layout(mixed, "megatron")
    titan = {"tp": 8, "pp": 2, "sequence_parallel": True, "zero_stage": 3}
    some = _job("llama3-70b", cluster, {**titan, "full_recompute_layers": [6, 2]},
                global_batch_size=64)
    with pytest.raises(SpecError, match="torchtitan checkpoints every block"):
        export_layout(some, "torchtitan")
    whole = _job("llama3-70b", cluster, {**titan, "full_recompute_layers": [40, 40]},
                 global_batch_size=64)
    config = tomllib.loads(export_layout(whole, "torchtitan"))
    assert config["activation_checkpoint"] == {"mode": "full"}


def test_megatron_two_stages_name_only_the_first():
    job = _job("llama3-70b", {"base": "dgx-h100", "num_nodes": 2},
               {"tp": 8, "pp": 2, "stages": [38, 42]}, global_batch_size=64)
    args = _megatron_args(export_layout(job, "megatron"))
    assert args["--decoder-first-pipeline-num-layers"] == "38"
    assert "--decoder-last-pipeline-num-layers" not in args


def test_megatron_uneven_virtual_stages_use_an_explicit_layout():
    """80 layers on pp 4 · vpp 3 = 12 virtual stages do not divide: Megatron's layout string,
    stage v·pp + r on rank r (pipeline_parallel_layer_layout.py), must equal parasim's split."""
    job = _job("llama3-70b", {"base": "dgx-h100", "num_nodes": 16},
               {"tp": 8, "pp": 4, "vpp": 3, "schedule": "interleaved"})
    args = _megatron_args(export_layout(job, "megatron"))
    stages = _megatron_layout(args["--pipeline-model-parallel-layout"])
    assert [stage.count("t") for stage in stages] == list(job.stage_layers)
    assert stages[0][0] == "E" and stages[-1][-1] == "L" and len(stages) == 12
    assert "--num-layers-per-virtual-pipeline-stage" not in args  # Megatron allows only one


def test_megatron_deepseek_v3_on_h800():
    """DeepSeek-V3 §3.2: PP 16, EP 64, ZeRO-1 DP on 2048 H800s; FP8 training (§3.3)."""
    job = _job("deepseek-v3", {"base": "hgx-h800", "num_nodes": 256},
               {"pp": 16, "ep": 64, "zero_stage": 1, "recompute": "selective"},
               seq_length=4096, global_batch_size=15360, precision="fp8")
    args = _megatron_args(export_layout(job, "megatron"))
    expected = {
        "--pipeline-model-parallel-size": "16", "--expert-model-parallel-size": "64",
        "--tensor-model-parallel-size": "1", "--num-experts": "256", "--moe-router-topk": "8",
        "--moe-ffn-hidden-size": "2048", "--moe-shared-expert-intermediate-size": "2048",
        "--moe-layer-freq": "([0]*3+[1]*58)", "--moe-token-dispatcher-type": "alltoall",
        "--multi-latent-attention": None, "--q-lora-rank": "1536", "--kv-lora-rank": "512",
        "--qk-head-dim": "128", "--qk-pos-emb-head-dim": "64", "--v-head-dim": "128",
        "--bf16": None, "--fp8-format": "hybrid", "--use-distributed-optimizer": None,
        "--ffn-hidden-size": "18432",
    }
    assert {k: args.get(k, "missing") for k in expected} == expected
    assert "--group-query-attention" not in args and "--sequence-parallel" not in args
    stages = _megatron_layout(args["--pipeline-model-parallel-layout"])  # 61 = 3,3,4 x 13,3
    assert [stage.count("t") for stage in stages] == list(job.stage_layers)


def test_megatron_gpt_full_recompute_fp16_and_unexpressible_gpipe():
    """A Megatron GPT (learned positions, tied embeddings, biases, dropout): no flags for what
    is Megatron's default; gpipe has no Megatron schedule and is refused (issue 17: it was a
    comment)."""
    parallel = {"tp": 8, "pp": 2, "recompute": "full"}
    job = _job("gpt-18.4b", {"base": "dgx-a100", "num_nodes": 2}, parallel,
               seq_length=2048, global_batch_size=64, precision="fp16")
    text = export_layout(job, "megatron")
    args = _megatron_args(text)
    assert args["--recompute-granularity"] == "full" and args["--recompute-method"] == "uniform"
    assert args["--recompute-num-layers"] == "1" and "--fp16" in args
    assert args["--max-position-embeddings"] == "2048"
    for absent in ("--swiglu", "--normalization", "--position-embedding-type",
                   "--untie-embeddings-and-output-weights", "--disable-bias-linear",
                   "--attention-dropout", "--bf16", "--recompute-activations"):
        assert absent not in args
    assert "not expressed" not in text
    gpipe = _job("gpt-18.4b", {"base": "dgx-a100", "num_nodes": 2},
                 {**parallel, "schedule": "gpipe"}, seq_length=2048, global_batch_size=64,
                 precision="fp16")
    with pytest.raises(SpecError, match="schedule gpipe") as err:
        export_layout(gpipe, "megatron")
    assert err.value.valid == "--set parallel.schedule=1f1b, or leave --export out"


def test_megatron_gradient_precision_is_a_flag_or_refused():
    def grads(precision, grad_precision):
        return _job("llama3-8b", {"base": "dgx-h100", "num_nodes": 1}, {"tp": 8},
                    global_batch_size=8, precision=precision, grad_precision=grad_precision)
    assert "--grad-reduce-in-bf16" in _megatron_args(export_layout(grads("bf16", "bf16"),
                                                                   "megatron"))
    assert "--accumulate-allreduce-grads-in-fp32" in _megatron_args(
        export_layout(grads("fp16", "fp32"), "megatron"))
    assert "--grad-reduce-in-bf16" not in _megatron_args(export_layout(grads("bf16", "fp32"),
                                                                       "megatron"))
    with pytest.raises(SpecError, match="fp16 gradients in a bf16 run"):
        export_layout(grads("bf16", "fp16"), "megatron")


def test_megatron_rank_order_and_zero3():
    job = _job("llama3-8b", {"base": "dgx-h100", "num_nodes": 2},
               {"tp": 2, "pp": 2, "order": "tp-cp-ep-pp-dp", "zero_stage": 3},
               global_batch_size=64)
    args = _megatron_args(export_layout(job, "megatron"))
    assert "--use-tp-pp-dp-mapping" in args
    assert args["--data-parallel-sharding-strategy"] == "optim_grads_params"
    odd = _job("llama3-8b", {"base": "dgx-h100", "num_nodes": 2},
               {"tp": 2, "pp": 2, "order": "dp-tp-cp-pp"}, global_batch_size=64)
    with pytest.raises(SpecError, match="rank order dp-tp-cp-pp"):
        export_layout(odd, "megatron")


# torchtitan ----------------------------------------------------------------------------------


def test_torchtitan_refuses_what_it_cannot_express(llama70b):
    """ZeRO-1 (torchtitan has FSDP2 or DDP) and selective recompute (torchtitan's selective
    checkpointing saves other tensors): refused, naming the fix (issue 17: comments)."""
    with pytest.raises(SpecError, match="ZeRO-1") as err:
        export_layout(llama70b, "torchtitan")
    assert "parallel.zero_stage=3" in err.value.valid
    sharded = _job("llama3-70b", {"base": "dgx-h100", "num_nodes": 16},
                   {"tp": 8, "pp": 4, "vpp": 2, "schedule": "interleaved",
                    "sequence_parallel": True, "recompute": "selective", "zero_stage": 3})
    with pytest.raises(SpecError, match="recompute selective"):
        export_layout(sharded, "torchtitan")


def test_torchtitan_llama70b_parses():
    llama70b = _job("llama3-70b", {"base": "dgx-h100", "num_nodes": 16},
                    {"tp": 8, "pp": 4, "vpp": 2, "schedule": "interleaved", "micro_batch_size": 1,
                     "sequence_parallel": True, "recompute": "full", "zero_stage": 3})
    text = export_layout(llama70b, "torchtitan")
    config = tomllib.loads(text)
    par, train = config["parallelism"], config["training"]
    assert par["tensor_parallel_degree"] == 8 and par["pipeline_parallel_degree"] == 4
    assert par["context_parallel_degree"] == 1 and par["expert_parallel_degree"] == 1
    assert par["data_parallel_shard_degree"] == 4 and par["data_parallel_replicate_degree"] == 1
    assert par["pipeline_parallel_schedule"] == "Interleaved1F1B"
    assert par["pipeline_parallel_microbatch_size"] == 1
    assert par["pipeline_parallel_split_points"] == [f"layers.{10 * i}" for i in range(1, 8)]
    assert train == {"local_batch_size": 256, "global_batch_size": 1024, "seq_len": 8192,
                     "mixed_precision_param": "bfloat16"}
    assert config["activation_checkpoint"]["mode"] == "full"
    assert "not expressed" not in text


def test_torchtitan_zero2_is_refused_zero3_is_fsdp():
    parallel = {"tp": 2, "micro_batch_size": 2, "recompute": "full", "sequence_parallel": True}
    job = _job("llama3-8b", {"base": "dgx-h100", "num_nodes": 1}, {**parallel, "zero_stage": 2},
               global_batch_size=64)
    with pytest.raises(SpecError, match="ZeRO-2"):
        export_layout(job, "torchtitan")
    job = _job("llama3-8b", {"base": "dgx-h100", "num_nodes": 1}, {**parallel, "zero_stage": 3},
               global_batch_size=64)
    config = tomllib.loads(export_layout(job, "torchtitan"))
    assert config["parallelism"]["data_parallel_shard_degree"] == 4
    assert "pipeline_parallel_schedule" not in config["parallelism"]  # no pipeline
    assert config["training"]["local_batch_size"] == 2  # micro-batches, accumulated to 64
    assert config["activation_checkpoint"] == {"mode": "full"}


@pytest.mark.parametrize("schedule, vpp, name", [
    ("1f1b", 1, "1F1B"), ("gpipe", 1, "GPipe"), ("interleaved", 2, "Interleaved1F1B")])
def test_torchtitan_schedules(schedule, vpp, name):
    job = _job("llama3-8b", {"base": "dgx-h100", "num_nodes": 1},
               {"pp": 4, "tp": 2, "schedule": schedule, "vpp": vpp, "zero_stage": 3,
                "sequence_parallel": True}, global_batch_size=64)
    text = export_layout(job, "torchtitan")
    par = tomllib.loads(text)["parallelism"]
    assert par["pipeline_parallel_schedule"] == name
    assert len(par["pipeline_parallel_split_points"]) == 4 * vpp - 1


def test_torchtitan_refuses_zero_bubble():
    """parasim's ZB-H1 has one stage per rank, torchtitan's ZBVZeroBubble two (issue 17:
    the export halved the stages and said so in a comment)."""
    job = _job("llama3-8b", {"base": "dgx-h100", "num_nodes": 1},
               {"pp": 4, "tp": 2, "schedule": "zero-bubble", "zero_stage": 3,
                "sequence_parallel": True}, global_batch_size=64)
    with pytest.raises(SpecError, match="schedule zero-bubble"):
        export_layout(job, "torchtitan")


def test_torchtitan_fp8_and_fp16():
    parallel = {"tp": 8, "zero_stage": 3, "sequence_parallel": True}
    fp8 = _job("llama3-8b", {"base": "dgx-h100", "num_nodes": 1}, parallel,
               global_batch_size=8, precision="fp8")
    config = tomllib.loads(export_layout(fp8, "torchtitan"))
    assert config["model"]["converters"] == ["float8"]
    fp16 = _job("llama3-8b", {"base": "dgx-h100", "num_nodes": 1}, parallel,
                global_batch_size=8, precision="fp16")
    with pytest.raises(SpecError, match="precision fp16"):
        export_layout(fp16, "torchtitan")


@pytest.mark.parametrize("fmt", FORMATS)
def test_mixed_node_groups_are_refused(fmt):
    cluster = {"node_groups": [{"base": "dgx-h100", "num_nodes": 1},
                               {"base": "dgx-a100", "num_nodes": 1}]}
    job = _job("llama3-8b", cluster, {"tp": 8, "pp": 2, "zero_stage": 3,
                                      "sequence_parallel": True, "recompute": "full"},
               global_batch_size=64)
    with pytest.raises(SpecError, match="mixed node groups") as err:
        export_layout(job, fmt)
    assert err.value.valid == "plan on one kind of node, or leave --export out"


def test_unknown_format_is_a_spec_error(llama70b):
    with pytest.raises(SpecError) as err:
        export_layout(llama70b, "deepspeed")
    assert (err.value.field, err.value.value, err.value.why, err.value.valid) == \
        ("--export", "deepspeed", "unknown format", "megatron, torchtitan")
    assert FORMATS == ("megatron", "torchtitan")


# Published layouts ---------------------------------------------------------------------------


def _published() -> dict[str, dict]:
    with profiles.path("published_layouts.yaml").open("r", encoding="utf-8") as f:
        return load_data(f)


PUBLISHED = _published()


def _published_job(entry: dict):
    gpus_per_node = catalog.entry("clusters", entry["cluster"], "cluster")["gpus_per_node"]
    assert entry["num_gpus"] % gpus_per_node == 0
    parallel = {"tp": entry["tp"], "pp": entry["pp"], "dp": entry["dp"],
                "vpp": entry["vpp"], "micro_batch_size": entry["micro_batch_size"],
                "schedule": "interleaved" if entry["interleaved"] else "1f1b",
                "recompute": entry["recompute"]}
    return _job(entry["model"],
                {"base": entry["cluster"], "num_nodes": entry["num_gpus"] // gpus_per_node},
                parallel, seq_length=entry["seq_length"],
                global_batch_size=entry["global_batch_size"], precision=entry["precision"])


def test_published_layouts_cover_table_1():
    models = {entry["model"] for entry in PUBLISHED.values()}
    assert models == {"gpt-1.7b", "gpt-3.6b", "gpt-7.5b", "gpt-18.4b", "gpt-39.1b",
                      "gpt-76.1b", "gpt-145.6b", "gpt-310.1b", "gpt-529.6b", "gpt-1t"}
    # Narayanan et al. 2021 abstract: 1T parameters at 502 petaFLOP/s on 3072 GPUs, 52% of peak
    # (163 teraFLOP/s per GPU is rounded: 502 / 3072 = 163.4)
    top = PUBLISHED["narayanan2021-1t"]
    assert top["num_gpus"] * top["tflops_per_gpu"] / 1000 == pytest.approx(502, rel=0.005)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_layout_is_consistent_and_builds(name):
    entry = PUBLISHED[name]
    assert entry["tp"] * entry["pp"] * entry["dp"] == entry["num_gpus"]
    assert entry["interleaved"] == (entry["vpp"] > 1)
    assert entry["source"] and "arXiv:2104.04473" in entry["source"]
    peak = catalog.gpu(catalog.entry("clusters", entry["cluster"], "c")["gpu"]).peak_fp16_flop_per_s
    assert 100 * entry["tflops_per_gpu"] * 1e12 / peak == pytest.approx(
        entry["percent_of_peak"], abs=0.5)  # the table's rounding
    job = _published_job(entry)  # must not raise
    assert job.layout.dp == entry["dp"] and job.cluster.world_size == entry["num_gpus"]
    args = _megatron_args(export_layout(job, "megatron"))
    assert args["--micro-batch-size"] == str(entry["micro_batch_size"])
    assert args["--global-batch-size"] == str(entry["global_batch_size"])
    if entry["vpp"] > 1:  # the sc21 script's --num-layers-per-virtual-pipeline-stage
        per_chunk = job.model.num_layers // (entry["pp"] * entry["vpp"])
        assert args["--num-layers-per-virtual-pipeline-stage"] == str(per_chunk)


@pytest.mark.parametrize("parallel,needed", [
    ({"zero_stage": 1, "overlap_grad_reduce": False, "overlap_param_gather": True},
     "overlap_grad_reduce"),
    ({"tp": 8, "sequence_parallel": False, "tp_comm_overlap": True}, "sequence_parallel")])
def test_megatron_refuses_an_overlap_whose_flag_needs_another(parallel, needed):
    job = _job("llama3-70b", {"base": "dgx-h100", "num_nodes": 16},
               {"tp": 8, "pp": 4, "micro_batch_size": 1, **parallel})
    with pytest.raises(SpecError, match=f"without {needed}") as err:
        export_layout(job, "megatron")
    assert f"parallel.{needed}=true" in err.value.valid
