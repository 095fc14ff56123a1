"""Export a job's layout as the settings of a training framework.

- `megatron`: a Megatron-LM `pretrain_gpt.py` launch, one flag per line. Flag names and their
  constraints are those of NVIDIA/Megatron-LM `megatron/training/arguments.py` (2025, commit
  000c4ac; `_add_network_size_args`, `_add_training_args`, `_add_distributed_args`,
  `_add_mixed_precision_args`, `_add_moe_args`, `_add_mla_args`,
  `_add_transformer_engine_args`, and `validate_args` for the virtual-pipeline rules); the
  `--pipeline-model-parallel-layout` grammar is that of
  `megatron/core/transformer/pipeline_parallel_layer_layout.py`.
- `torchtitan`: a TOML fragment of torchtitan's job config, field names from
  pytorch/torchtitan `torchtitan/config/job_config.py` (classes `Training`, `Parallelism`,
  `ActivationCheckpoint`, `Model`, `Float8`); pipeline schedule names from
  `torch.distributed.pipelining.schedules.get_schedule_class`.

What a framework cannot express becomes a comment line (`# ...`), never an error: the export
is a starting point that a person reads before launching. Data, tokenizer, optimizer and
checkpoint settings are not part of a layout and are left out.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable

from parasim.simulator.layout import recompute_text
from parasim.simulator.errors import SpecError
from parasim.simulator.job import Job, num_microbatches
from parasim.simulator.layout import Layout
from parasim.simulator.model import ModelSpec

FORMATS = ("megatron", "torchtitan")

Flag = tuple[str, object]  # (flag, value); value None = a switch without a value


def export_layout(job: Job, fmt: str) -> str:
    """The job's layout in framework `fmt` (one of FORMATS), as text ending in a newline."""
    if fmt not in _EXPORTERS:
        raise SpecError("--export", fmt, "unknown format", ", ".join(FORMATS))
    if job.layout is None:
        raise SpecError("parallel", None, "the job has no layout to export",
                        "set the parallel section, or export a planned layout")
    return _EXPORTERS[fmt](job)


def _summary(job: Job) -> str:
    layout = job.layout
    return (f"{job.model.name} on {job.cluster.name}: {job.cluster.world_size} GPUs, "
            f"tp={layout.tp} pp={layout.pp} dp={layout.dp} cp={layout.cp} ep={layout.ep} "
            f"vpp={layout.vpp} schedule={layout.schedule} micro_batch={layout.micro_batch_size} "
            f"zero={layout.zero_stage} recompute={recompute_text(layout)}")


# Megatron-LM ---------------------------------------------------------------------------------

MEGATRON_ORDERS = {"tp-cp-dp-pp": None, "tp-cp-pp-dp": "--use-tp-pp-dp-mapping"}


def _megatron(job: Job) -> str:
    notes: list[str] = []
    flags = (_megatron_parallel(job, notes) + _megatron_pipeline(job)
             + _megatron_batch(job) + _megatron_model(job.model, job, notes)
             + _megatron_precision(job, notes) + _megatron_memory(job.layout, notes)
             + _megatron_overlap(job.layout, notes))
    header = [f"# Megatron-LM pretrain_gpt.py for {_summary(job)}",
              f"# data-parallel size {job.layout.dp} is not a flag: Megatron derives it as "
              "world size / (tp·pp·cp)",
              f"# vocabulary {job.model.vocab_size}: comes from the tokenizer "
              "(--tokenizer-type/--tokenizer-model); with NullTokenizer pass --vocab-size",
              *(f"# not expressed: {note}" for note in notes)]
    launch = _megatron_launch(job)
    lines = [launch] + [f"    {_flag_text(flag, value)}" for flag, value in flags]
    return "\n".join(header + [" \\\n".join(lines)]) + "\n"


def _flag_text(flag: str, value: object) -> str:
    return flag if value is None else f"{flag} {shlex.quote(str(value))}"


def _megatron_launch(job: Job) -> str:
    cluster = job.cluster
    if cluster.is_homogeneous:
        group = cluster.node_groups[0]
        return (f"torchrun --nnodes {group.num_nodes} --nproc-per-node {group.gpus_per_node} "
                "pretrain_gpt.py")
    return f"torchrun --nnodes {cluster.num_nodes} pretrain_gpt.py"


def _megatron_parallel(job: Job, notes: list[str]) -> list[Flag]:
    layout = job.layout
    flags: list[Flag] = [("--tensor-model-parallel-size", layout.tp),
                         ("--pipeline-model-parallel-size", layout.pp),
                         ("--context-parallel-size", layout.cp),
                         ("--expert-model-parallel-size", layout.ep)]
    if layout.sequence_parallel and layout.tp > 1:
        flags.append(("--sequence-parallel", None))
    dense_order = "-".join(axis for axis in layout.order.split("-") if axis != "ep")
    if dense_order not in MEGATRON_ORDERS:
        notes.append(f"rank order {layout.order} (Megatron-LM offers tp-cp-ep-dp-pp, or "
                     "tp-cp-ep-pp-dp with --use-tp-pp-dp-mapping)")
    elif MEGATRON_ORDERS[dense_order]:
        flags.append((MEGATRON_ORDERS[dense_order], None))
    if not job.cluster.is_homogeneous:
        notes.append("mixed node groups: Megatron-LM assumes the same GPUs on every node")
    if layout.schedule == "gpipe" and layout.pp > 1:
        notes.append("schedule gpipe: Megatron-LM has no GPipe schedule and runs 1F1B")
    if layout.schedule == "zero-bubble":
        notes.append("schedule zero-bubble (ZB-H1): not in Megatron-LM, which runs 1F1B")
    return flags


def _megatron_pipeline(job: Job) -> list[Flag]:
    """The layer-to-stage split. Even: nothing, or layers per virtual stage. Uneven only at the
    ends (one stage per rank): the first/last stage sizes. Anything else: an explicit layout,
    stages listed as Megatron orders them (virtual stage v of rank r at v·pp + r, as parasim)."""
    layout, stages = job.layout, job.stage_layers
    if layout.pp == 1:
        return []
    if len(set(stages)) == 1:
        return [("--num-layers-per-virtual-pipeline-stage", stages[0])] if layout.vpp > 1 else []
    if layout.vpp == 1 and layout.pp == 2:
        return [("--decoder-first-pipeline-num-layers", stages[0])]
    if layout.vpp == 1 and len(set(stages[1:-1])) == 1:
        middle = stages[1]
        return ([("--decoder-first-pipeline-num-layers", stages[0])] if stages[0] != middle
                else []) + ([("--decoder-last-pipeline-num-layers", stages[-1])]
                            if stages[-1] != middle else [])
    return [("--pipeline-model-parallel-layout", _megatron_layout_string(stages))]


def _megatron_layout_string(stages: tuple[int, ...]) -> str:
    """`E` embedding, `t` transformer layer, `L` loss, stages split by `|` (`t*7` = 7 layers)."""
    parts = [f"t*{n}" for n in stages]
    parts[0] = "E" + parts[0]
    parts[-1] = parts[-1] + "L"
    return "|".join(parts)


def _megatron_batch(job: Job) -> list[Flag]:
    return [("--micro-batch-size", job.layout.micro_batch_size),
            ("--global-batch-size", job.training.global_batch_size),
            ("--seq-length", job.training.seq_length)]


def _megatron_model(model: ModelSpec, job: Job, notes: list[str]) -> list[Flag]:
    flags: list[Flag] = [("--num-layers", model.num_layers),
                         ("--hidden-size", model.hidden_size),
                         ("--num-attention-heads", model.num_attention_heads),
                         ("--ffn-hidden-size", model.ffn_hidden_size)]
    flags += _megatron_attention(model)
    flags += _megatron_blocks(model, job)
    flags += _megatron_moe(model, job.layout, notes)
    return flags


def _megatron_attention(model: ModelSpec) -> list[Flag]:
    if model.mla is not None:
        mla = model.mla
        flags: list[Flag] = [("--multi-latent-attention", None)]
        if mla.q_lora_rank:
            flags.append(("--q-lora-rank", mla.q_lora_rank))
        return flags + [("--kv-lora-rank", mla.kv_lora_rank),
                        ("--qk-head-dim", mla.qk_nope_head_dim),
                        ("--qk-pos-emb-head-dim", mla.qk_rope_head_dim),
                        ("--v-head-dim", mla.v_head_dim)]
    flags = []
    if model.kv_heads != model.num_attention_heads:
        flags += [("--group-query-attention", None), ("--num-query-groups", model.kv_heads)]
    if model.head_dim and model.head_dim * model.num_attention_heads != model.hidden_size:
        flags.append(("--kv-channels", model.head_dim))
    if model.qk_norm:
        flags.append(("--qk-layernorm", None))
    return flags


def _megatron_blocks(model: ModelSpec, job: Job) -> list[Flag]:
    flags: list[Flag] = []
    if model.activation == "swiglu":
        flags.append(("--swiglu", None))
    if model.norm == "rmsnorm":
        flags.append(("--normalization", "RMSNorm"))
    if model.position_embedding == "rope":
        flags += [("--position-embedding-type", "rope"),
                  ("--max-position-embeddings", job.training.seq_length)]
    else:
        flags.append(("--max-position-embeddings", model.max_position_embeddings))
    if not model.tied_embeddings:
        flags.append(("--untie-embeddings-and-output-weights", None))
    if not model.linear_bias:
        flags.append(("--disable-bias-linear", None))
    if model.qkv_bias:
        flags.append(("--add-qkv-bias", None))
    if not model.dropout:
        flags += [("--attention-dropout", 0.0), ("--hidden-dropout", 0.0)]
    if job.training.flash_attention:
        flags.append(("--use-flash-attn", None))
    return flags


def _megatron_moe(model: ModelSpec, layout: Layout, notes: list[str]) -> list[Flag]:
    if not model.is_moe:
        return []
    flags: list[Flag] = [("--num-experts", model.num_experts),
                         ("--moe-router-topk", model.experts_per_token),
                         ("--moe-ffn-hidden-size", model.moe_ffn_hidden_size)]
    if model.num_shared_experts:
        flags.append(("--moe-shared-expert-intermediate-size",
                      model.num_shared_experts * model.shared_ffn_hidden_size))
    if model.first_dense_layers:
        dense, moe = model.first_dense_layers, model.num_moe_layers
        flags.append(("--moe-layer-freq", f"([0]*{dense}+[1]*{moe})"))
    if model.capacity_factor is not None:
        flags.append(("--moe-expert-capacity-factor", model.capacity_factor))
    if layout.ep > 1:
        flags.append(("--moe-token-dispatcher-type", "alltoall"))
    if model.shared_expert_gate:
        notes.append("shared-expert sigmoid gate (no Megatron-LM flag checked)")
    return flags


def _megatron_precision(job: Job, notes: list[str]) -> list[Flag]:
    precision, grads = job.training.precision, job.training.grad_precision
    flags: list[Flag] = {"bf16": [("--bf16", None)], "fp16": [("--fp16", None)],
                         "fp8": [("--bf16", None), ("--fp8-format", "hybrid")],
                         "fp32": []}[precision]
    if grads is not None and grads != {"fp16": "fp16", "fp32": "fp32"}.get(precision, "fp32"):
        notes.append(f"{grads} gradient buffer (Megatron-LM keeps {precision} runs' gradients "
                     f"in {'fp16' if precision == 'fp16' else 'fp32'})")
    return flags


def _megatron_memory(layout: Layout, notes: list[str]) -> list[Flag]:
    flags: list[Flag] = {0: [], 1: [("--use-distributed-optimizer", None)],
                         2: [("--use-megatron-fsdp", None),
                             ("--data-parallel-sharding-strategy", "optim_grads")],
                         3: [("--use-megatron-fsdp", None),
                             ("--data-parallel-sharding-strategy", "optim_grads_params")],
                         }[layout.zero_stage]
    if layout.zero_stage >= 2:
        notes.append(f"ZeRO-{layout.zero_stage} is mapped to Megatron FSDP; check that it "
                     "supports this pipeline/expert layout")
    return flags + _megatron_recompute(layout, notes)


def _megatron_recompute(layout: Layout, notes: list[str]) -> list[Flag]:
    """Megatron-LM's block method recomputes the first N blocks of every model chunk (virtual
    stage) in full; parasim may choose N per stage, and may mix it with selective recompute,
    which Megatron-LM's one --recompute-granularity cannot."""
    counts = layout.full_recompute_layers
    if not counts:
        return {"none": [], "selective": [("--recompute-activations", None)],
                "full": [("--recompute-granularity", "full"), ("--recompute-method", "uniform"),
                         ("--recompute-num-layers", 1)]}[layout.recompute]
    most = max(counts)
    if len(set(counts)) > 1:
        notes.append(f"full recompute of {list(counts)} blocks per virtual stage: Megatron-LM "
                     f"takes one --recompute-num-layers for all; the most ({most}) is used")
    if layout.recompute == "selective":
        notes.append("selective recompute of the other blocks (Megatron-LM has one "
                     "--recompute-granularity)")
    return [("--recompute-granularity", "full"), ("--recompute-method", "block"),
            ("--recompute-num-layers", most)]


def _megatron_overlap(layout: Layout, notes: list[str]) -> list[Flag]:
    flags: list[Flag] = []
    if layout.overlap_grad_reduce:
        flags.append(("--overlap-grad-reduce", None))
    if layout.overlap_param_gather:
        if layout.zero_stage >= 1 and layout.overlap_grad_reduce:
            flags.append(("--overlap-param-gather", None))
        else:
            notes.append("overlap_param_gather (Megatron-LM needs the distributed optimizer "
                         "and --overlap-grad-reduce)")
    if layout.tp_comm_overlap:
        if layout.tp > 1 and layout.sequence_parallel:
            flags.append(("--tp-comm-overlap", None))
        else:
            notes.append("tp_comm_overlap (Megatron-LM needs tp > 1 with --sequence-parallel)")
    if layout.ep_comm_overlap and layout.ep > 1:
        flags.append(("--overlap-moe-expert-parallel-comm", None))
    if layout.cp > 1 and not layout.cp_comm_overlap:
        notes.append("cp_comm_overlap false (Megatron-LM's ring attention always overlaps)")
    return flags


# torchtitan ----------------------------------------------------------------------------------

TORCHTITAN_SCHEDULES = {"gpipe": "GPipe", "1f1b": "1F1B", "interleaved": "Interleaved1F1B",
                        "zero-bubble": "ZBVZeroBubble"}

Section = dict[str, object]


def _torchtitan(job: Job) -> str:
    notes: list[str] = []
    sections = {"parallelism": _titan_parallelism(job, notes),
                "training": _titan_training(job, notes),
                "activation_checkpoint": _titan_checkpoint(job.layout, notes)}
    sections.update(_titan_float8(job))
    header = [f"# torchtitan job config (TOML) for {_summary(job)}",
              f"# [model] name/flavor: the torchtitan model matching {job.model.name} "
              "(not derived here)",
              *(f"# not expressed: {note}" for note in notes)]
    body = [_toml_section(name, values) for name, values in sections.items()]
    return "\n".join(header) + "\n\n" + "\n\n".join(body) + "\n"


def _toml_section(name: str, values: Section) -> str:
    return "\n".join([f"[{name}]"] + [f"{key} = {_toml_value(v)}" for key, v in values.items()])


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    assert isinstance(value, list), value
    return "[" + ", ".join(_toml_value(v) for v in value) + "]"


def _titan_parallelism(job: Job, notes: list[str]) -> Section:
    layout = job.layout
    sharded = layout.zero_stage > 0
    values: Section = {"data_parallel_replicate_degree": 1 if sharded else layout.dp,
                       "data_parallel_shard_degree": layout.dp if sharded else 1,
                       "tensor_parallel_degree": layout.tp,
                       "context_parallel_degree": layout.cp,
                       "expert_parallel_degree": layout.ep,
                       "pipeline_parallel_degree": layout.pp}
    if layout.zero_stage in (1, 2):
        notes.append(f"ZeRO-{layout.zero_stage}: torchtitan shards with FSDP2 (ZeRO-3); "
                     "data_parallel_shard_degree is set as the nearest setting")
    if not sharded and (layout.tp > 1 or layout.pp > 1 or layout.cp > 1):
        notes.append("ZeRO-0 (DDP) with tp/pp/cp: older torchtitan raises 'DDP has not "
                     "supported > 1D parallelism'; use data_parallel_shard_degree there")
    shard = layout.dp if sharded else 1
    if layout.ep > 1 and not layout.cp <= layout.ep <= shard * layout.cp:
        notes.append(f"expert_parallel_degree {layout.ep}: torchtitan needs "
                     "context_parallel_degree <= ep <= data_parallel_shard_degree · cp")
    if layout.tp > 1 and not layout.sequence_parallel:
        notes.append("sequence_parallel false: torchtitan's tensor-parallel plan always "
                     "shards norms over tp")
    if layout.tp_comm_overlap:
        values["enable_async_tensor_parallel"] = True
        notes.append("tp_comm_overlap: async tensor parallel takes effect only with "
                     "[training] compile = true")
    if layout.order != "tp-cp-ep-dp-pp":
        notes.append(f"rank order {layout.order} (torchtitan builds its own device mesh)")
    if layout.pp > 1:
        values.update(_titan_pipeline(job, notes))
    return values


def _titan_pipeline(job: Job, notes: list[str]) -> Section:
    layout = job.layout
    schedule = TORCHTITAN_SCHEDULES[layout.schedule]
    stages = job.stage_layers
    if layout.schedule == "zero-bubble":
        notes.append("schedule zero-bubble: parasim models ZB-H1 with one stage per rank; "
                     "torchtitan's ZBVZeroBubble needs two (V-shaped) stages per rank, so the "
                     "split points below are parasim's stages halved")
        stages = _halve_stages(stages)
    bounds, total = [], 0
    for n in stages[:-1]:
        total += n
        bounds.append(f"layers.{total}")
    return {"pipeline_parallel_schedule": schedule,
            "pipeline_parallel_microbatch_size": layout.micro_batch_size,
            "pipeline_parallel_split_points": bounds}


def _halve_stages(stages: tuple[int, ...]) -> tuple[int, ...]:
    """Each stage split in two (the larger half first); a 1-layer stage cannot be halved."""
    halves: list[int] = []
    for n in stages:
        halves += [n - n // 2, n // 2] if n > 1 else [n]
    return tuple(halves)


def _titan_training(job: Job, notes: list[str]) -> Section:
    layout, training = job.layout, job.training
    if layout.pp > 1:  # a pipeline step takes the whole per-replica batch as micro-batches
        local = training.global_batch_size // layout.dp
    else:  # gradient accumulation over micro-batches of micro_batch_size
        local = layout.micro_batch_size
    values: Section = {"local_batch_size": local,
                       "global_batch_size": training.global_batch_size,
                       "seq_len": training.seq_length}
    if training.precision in ("bf16", "fp8"):
        values["mixed_precision_param"] = "bfloat16"
    elif training.precision == "fp32":
        values["mixed_precision_param"] = "float32"
    else:
        notes.append("precision fp16: torchtitan's mixed_precision_param is bfloat16 or float32")
    if layout.pp > 1:
        assert num_microbatches(training, layout) * layout.micro_batch_size == local
    return values


def _titan_checkpoint(layout: Layout, notes: list[str]) -> Section:
    if layout.full_recompute_layers:
        notes.append(f"full recompute of {list(layout.full_recompute_layers)} blocks per virtual "
                     "stage: torchtitan checkpoints every block or every n-th, so all are")
        return {"mode": "full"}
    values: Section = {"mode": layout.recompute}
    if layout.recompute == "selective":
        values["selective_ac_option"] = "op"
        notes.append("recompute selective (attention core, Korthikanti 2022) is approximated "
                     "by torchtitan's per-op selective checkpointing")
    return values


def _titan_float8(job: Job) -> dict[str, Section]:
    if job.training.precision != "fp8":
        return {}
    return {"model": {"converters": ["float8"]}, "float8": {"recipe_name": "tensorwise"}}


_EXPORTERS: dict[str, Callable[[Job], str]] = {"megatron": _megatron, "torchtitan": _torchtitan}
