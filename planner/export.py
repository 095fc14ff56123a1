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

An export expresses the plan exactly or is refused: a layout choice the framework has no
setting for, or one whose setting means something else (a schedule, a rank order, per-stage
recompute counts, a sharding stage, an overlap), is a SpecError naming the choice and the
`--set` that would make the plan expressible. Comment lines (`# ...`) only say what is derived
rather than set (the data-parallel size, the vocabulary) and what to check on the framework's
version. Data, tokenizer, optimizer and checkpoint settings are not part of a layout and are
left out. `--grad-reduce-in-bf16`, `--accumulate-allreduce-grads-in-fp32` and
`--moe-shared-expert-gate` were checked in Megatron-LM commit d98e8a6 (2026-08; the last is a
TransformerConfig field, which `arguments.py` turns into a flag).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable

from parasim.planner.overlaps import applies
from parasim.simulator.layout import recompute_text
from parasim.simulator.errors import SpecError
from parasim.simulator.job import Job, num_microbatches
from parasim.simulator.layout import DUAL_SCHEDULES, Layout
from parasim.simulator.model import ModelSpec
from parasim.simulator.nvfp4 import bf16_blocks

FORMATS = ("megatron", "torchtitan")

Flag = tuple[str, object]  # (flag, value); value None = a switch without a value


def export_layout(job: Job, fmt: str) -> str:
    """The job's layout in framework `fmt` (one of FORMATS), as text ending in a newline;
    SpecError when the framework cannot express the layout exactly (`refusal`)."""
    if fmt not in _EXPORTERS:
        raise SpecError("--export", fmt, "unknown format", ", ".join(FORMATS))
    if job.layout is None:
        raise SpecError("parallel", None, "the job has no layout to export",
                        "set the parallel section, or export a planned layout")
    return _EXPORTERS[fmt](job)


def refusal(fmt: str, why: str, fix: str) -> SpecError:
    """The one-line error of a layout that `fmt` cannot express exactly."""
    return SpecError("--export", fmt, f"cannot express this plan exactly: {why}",
                     f"{fix}, or leave --export out")


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
    flags = (_megatron_parallel(job) + _megatron_pipeline(job)
             + _megatron_batch(job) + _megatron_model(job.model, job)
             + _megatron_precision(job) + _megatron_moments(job) + _megatron_memory(job, notes)
             + _megatron_overlap(job.layout))
    header = [f"# Megatron-LM pretrain_gpt.py for {_summary(job)}",
              f"# data-parallel size {job.layout.dp} is not a flag: Megatron derives it as "
              "world size / (tp·pp·cp)",
              f"# vocabulary {job.model.vocab_size}: comes from the tokenizer "
              "(--tokenizer-type/--tokenizer-model); with NullTokenizer pass --vocab-size",
              *(f"# check: {note}" for note in notes)]
    launch = _megatron_launch(job)
    lines = [launch] + [f"    {_flag_text(flag, value)}" for flag, value in flags]
    return "\n".join(header + [" \\\n".join(lines)]) + "\n"


def _flag_text(flag: str, value: object) -> str:
    """`--flag`, `--flag value`, or for a tuple `--flag v1 v2` (a flag taking a list)."""
    if value is None:
        return flag
    values = value if isinstance(value, tuple) else (value,)
    return " ".join([flag, *(shlex.quote(str(v)) for v in values)])


def _megatron_launch(job: Job) -> str:
    assert job.cluster.is_homogeneous, "mixed node groups are refused (_megatron_parallel)"
    group = job.cluster.node_groups[0]
    return (f"torchrun --nnodes {group.num_nodes} --nproc-per-node {group.gpus_per_node} "
            "pretrain_gpt.py")


def _megatron_parallel(job: Job) -> list[Flag]:
    layout = job.layout
    flags: list[Flag] = [("--tensor-model-parallel-size", layout.tp),
                         ("--pipeline-model-parallel-size", layout.pp),
                         ("--context-parallel-size", layout.cp),
                         ("--expert-model-parallel-size", layout.ep)]
    if layout.sequence_parallel and layout.tp > 1:
        flags.append(("--sequence-parallel", None))
    mapping = MEGATRON_ORDERS.get(_megatron_order(layout), "")
    if mapping:
        flags.append((mapping, None))
    if not job.cluster.is_homogeneous:
        raise refusal("megatron", "mixed node groups (Megatron-LM gives every node the same "
                      "GPUs and has no setting for which group serves which stage)",
                      "plan on one kind of node")
    if layout.schedule == "gpipe" and layout.pp > 1:
        raise refusal("megatron", "schedule gpipe (Megatron-LM has no GPipe schedule)",
                      "--set parallel.schedule=1f1b")
    if layout.schedule == "zero-bubble":
        raise refusal("megatron", "schedule zero-bubble (ZB-H1 is not in Megatron-LM)",
                      "--set parallel.schedule=1f1b, or interleaved")
    if layout.schedule in DUAL_SCHEDULES:
        raise refusal("megatron", f"schedule {layout.schedule} (Megatron-LM has no DualPipe "
                      "schedule)", "--set parallel.schedule=1f1b, or interleaved")
    return flags


def _megatron_order(layout: Layout) -> str:
    """The layout's rank order as Megatron-LM names it (a MEGATRON_ORDERS key): its dense
    axes, and experts carved out of data parallelism right after tp (Megatron-Core's expert
    order tp-ep-dp-pp, cp folded into dp); SpecError otherwise."""
    axes = layout.order.split("-")
    dense = "-".join(axis for axis in axes if axis != "ep")
    expert = [axis for axis in axes if axis != "cp"]
    ep_follows_tp = "ep" not in expert or expert.index("ep") == expert.index("tp") + 1
    if dense not in MEGATRON_ORDERS or (layout.ep > 1 and not ep_follows_tp):
        raise refusal("megatron", f"rank order {layout.order} (Megatron-LM lays ranks out as "
                      "tp-cp-ep-dp-pp, or tp-cp-ep-pp-dp with --use-tp-pp-dp-mapping)",
                      "--set parallel.order=tp-cp-ep-dp-pp")
    return dense


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


def _megatron_model(model: ModelSpec, job: Job) -> list[Flag]:
    flags: list[Flag] = [("--num-layers", model.num_layers),
                         ("--hidden-size", model.hidden_size),
                         ("--num-attention-heads", model.num_attention_heads),
                         ("--ffn-hidden-size", model.ffn_hidden_size)]
    flags += _megatron_attention(model)
    flags += _megatron_blocks(model, job)
    flags += _megatron_moe(model, job.layout)
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


def _megatron_moe(model: ModelSpec, layout: Layout) -> list[Flag]:
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
    if model.shared_expert_gate:  # a sigmoid gate on the shared experts' output
        flags.append(("--moe-shared-expert-gate", None))
    return flags


# (training precision, gradient buffer) -> the flag that sets it, where it is not the default
# (Megatron-LM keeps bf16 and fp8 runs' gradients in fp32, fp16 runs' in fp16)
MEGATRON_GRADS = {("bf16", "bf16"): "--grad-reduce-in-bf16", ("fp8", "bf16"): "--grad-reduce-in-bf16",
                  ("fp4", "bf16"): "--grad-reduce-in-bf16",
                  ("fp16", "fp32"): "--accumulate-allreduce-grads-in-fp32"}


def _megatron_precision(job: Job) -> list[Flag]:
    precision, grads = job.training.precision, job.training.grad_precision
    flags: list[Flag] = {"bf16": [("--bf16", None)], "fp16": [("--fp16", None)],
                         "fp8": [("--bf16", None), ("--fp8-format", "hybrid")],
                         "fp32": [], "fp4": _megatron_nvfp4(job)}[precision]
    default = "fp16" if precision == "fp16" else "fp32"
    if grads is None or grads == default:
        return flags
    if (precision, grads) not in MEGATRON_GRADS:
        raise refusal("megatron", f"{grads} gradients in a {precision} run (Megatron-LM keeps "
                      f"them in {default}, or bf16 in bf16 runs)",
                      f"--set training.grad_precision={default}")
    return flags + [(MEGATRON_GRADS[precision, grads], None)]


def _megatron_nvfp4(job: Job) -> list[Flag]:
    """NVIDIA's NVFP4 recipe (`simulator.nvfp4`) in Megatron-LM: the fp4 format and recipe,
    and the first and last blocks kept in bf16 as parasim costs them."""
    first, last = bf16_blocks(job.model.num_layers)
    return [("--bf16", None), ("--fp4-format", "e2m1"), ("--fp4-recipe", "nvfp4"),
            ("--first-last-layers-bf16", None), ("--num-layers-at-start-in-bf16", first),
            ("--num-layers-at-end-in-bf16", last)]


def _megatron_moments(job: Job) -> list[Flag]:
    """BF16 Adam moments: Megatron-LM's precision-aware optimizer (arguments.py
    `--use-precision-aware-optimizer`, `--exp-avg-dtype`, `--exp-avg-sq-dtype`), which runs
    only with the distributed optimizer (megatron/core/optimizer/__init__.py: "only supported
    with distributed optimizer"). The FP8-cached SwiGLU input is TransformerConfig's
    `activation_func_fp8_input_store`, which arguments.py gives no flag (d98e8a6) and which
    applies to dense MLPs too."""
    training, layout = job.training, job.layout
    if training.fp8_moe_act_input:
        raise refusal("megatron", "fp8_moe_act_input (Megatron-LM's command line has no flag "
                      "for TransformerConfig.activation_func_fp8_input_store)",
                      "--set training.fp8_moe_act_input=false")
    if training.optimizer_moment_precision == "fp32":
        return []
    if layout.zero_stage != 1:
        raise refusal("megatron", f"{training.optimizer_moment_precision} Adam moments with "
                      f"ZeRO-{layout.zero_stage} (Megatron-LM's precision-aware optimizer "
                      "needs its distributed optimizer)", "--set parallel.zero_stage=1")
    dtype = training.optimizer_moment_precision
    return [("--use-precision-aware-optimizer", None), ("--exp-avg-dtype", dtype),
            ("--exp-avg-sq-dtype", dtype)]


def _megatron_memory(job: Job, notes: list[str]) -> list[Flag]:
    layout = job.layout
    flags: list[Flag] = {0: [], 1: [("--use-distributed-optimizer", None)],
                         2: [("--use-megatron-fsdp", None),
                             ("--data-parallel-sharding-strategy", "optim_grads")],
                         3: [("--use-megatron-fsdp", None),
                             ("--data-parallel-sharding-strategy", "optim_grads_params")],
                         }[layout.zero_stage]
    if layout.zero_stage >= 2:
        notes.append(f"ZeRO-{layout.zero_stage} is Megatron FSDP "
                     f"({flags[-1][1]}); check that your Megatron-LM version runs it with "
                     "this pipeline and expert layout")
    return flags + _megatron_recompute(layout, job.stage_layers) + _megatron_offload(job)


def _megatron_offload(job: Job) -> list[Flag]:
    """Offloading and ZeRO++ (NVIDIA/Megatron-LM megatron/training/arguments.py, commit
    d98e8a6): the optimizer's CPU offload is `--optimizer-cpu-offload` with the whole state
    (`--optimizer-offload-fraction 1.0`), which validate_args requires with
    `--use-precision-aware-optimizer`, and its copies overlapped with the CPU step
    (`--overlap-cpu-optimizer-d2h-h2d`, what parasim's time assumes). Activation offload is
    `--cpu-offloading-num-layers N` (sets cpu_offloading), N below the layer count, and
    Megatron-Core's TransformerConfig refuses it with pipeline parallelism or recompute.
    ZeRO++ is DeepSpeed's; Megatron-LM has no such setting."""
    layout, flags = job.layout, []
    if layout.zero_pp:
        raise refusal("megatron", "zero_pp (ZeRO++ is DeepSpeed's zero_quantized_weights, "
                      "zero_hpz_partition_size and zero_quantized_gradients; Megatron-LM has "
                      "none of them)", "--set parallel.zero_pp=false")
    if layout.offload.optimizer:
        flags += [("--optimizer-cpu-offload", None), ("--optimizer-offload-fraction", 1.0),
                  ("--use-precision-aware-optimizer", None),
                  ("--overlap-cpu-optimizer-d2h-h2d", None)]
    if layout.offload.activations:
        if layout.pp > 1 or layout.recompute != "none" or layout.full_recompute_layers:
            raise refusal("megatron", "activation offload with pipeline parallelism or "
                          "recompute (Megatron-Core's cpu_offloading supports neither)",
                          "--set parallel.pp=1 --set parallel.recompute=none, or "
                          "parallel.offload.activations=false")
        flags.append(("--cpu-offloading-num-layers", job.model.num_layers - 1))
    return flags


def _megatron_recompute(layout: Layout, stages: tuple[int, ...]) -> list[Flag]:
    """Megatron-LM's block method recomputes the first N blocks of every model chunk (virtual
    stage) in full and nothing else (`recompute_num_layers`, megatron/core TransformerConfig):
    parasim's per-stage counts c_v are that exactly when one N gives min(N, layers_v) = c_v
    on every stage and the other blocks are not recomputed; else the export is refused."""
    counts = layout.full_recompute_layers
    if not counts or not any(counts):
        if layout.recompute_modules:
            return [("--recompute-granularity", "selective"),
                    ("--recompute-modules", tuple(layout.recompute_modules))]
        return {"none": [], "selective": [("--recompute-activations", None)],
                "full": [("--recompute-granularity", "full"), ("--recompute-method", "uniform"),
                         ("--recompute-num-layers", 1)]}[layout.recompute]
    if layout.recompute == "selective":
        raise refusal("megatron", f"full recompute of {list(counts)} blocks per virtual stage "
                      "with selective recompute of the others (Megatron-LM takes one "
                      "--recompute-granularity for every block)",
                      "--set parallel.recompute=none (whole blocks only), or "
                      "parallel.recompute=full")
    most = max(counts)
    if any(min(most, layers) != c for c, layers in zip(counts, stages)):
        raise refusal("megatron", f"full recompute of {list(counts)} blocks per virtual stage "
                      f"(of {list(stages)}): Megatron-LM's --recompute-num-layers recomputes "
                      "the same first N blocks of every stage",
                      f"--set parallel.full_recompute_layers=[{','.join([str(most)] * len(counts))}]"
                      ", or parallel.recompute=full")
    return [("--recompute-granularity", "full"), ("--recompute-method", "block"),
            ("--recompute-num-layers", most)]


def _needs(present: bool, field: str, needed: str, flag: str, needed_flag: str) -> None:
    """Refuse a `parallel.field` whose Megatron-LM flag needs another one that is off."""
    if not present:
        raise refusal("megatron", f"{field} without {needed} (Megatron-LM's {flag} needs "
                      f"{needed_flag})", f"--set parallel.{needed}=true")


def _megatron_overlap(layout: Layout) -> list[Flag]:
    """The overlaps that act on this layout (an overlap of an axis of size 1, or of ZeRO
    gathers without ZeRO, changes nothing and needs no flag)."""
    flags: list[Flag] = []
    if layout.overlap_grad_reduce:
        flags.append(("--overlap-grad-reduce", None))
    if layout.overlap_param_gather and layout.zero_stage >= 1:
        _needs(layout.overlap_grad_reduce, "overlap_param_gather", "overlap_grad_reduce",
               "--overlap-param-gather", "--overlap-grad-reduce")
        flags.append(("--overlap-param-gather", None))
    if layout.tp_comm_overlap and layout.tp > 1:
        _needs(layout.sequence_parallel, "tp_comm_overlap", "sequence_parallel",
               "--tp-comm-overlap", "--sequence-parallel")
        flags.append(("--tp-comm-overlap", None))
    if layout.ep_comm_overlap and layout.ep > 1:
        if not applies(layout, "ep_comm_overlap"):
            raise refusal("megatron", "ep_comm_overlap with full recompute, or with pp > 1 "
                          "outside the interleaved schedule (Megatron-Core's "
                          "--overlap-moe-expert-parallel-comm runs with neither)",
                          "--set parallel.ep_comm_overlap=false")
        flags.append(("--overlap-moe-expert-parallel-comm", None))
    if layout.cp > 1 and layout.cp_style == "ulysses":
        flags.append(("--cp-comm-type", "a2a"))  # Megatron-Core's DeepSpeed-Ulysses style
    elif layout.cp > 1 and not layout.cp_comm_overlap:
        raise refusal("megatron", "cp_comm_overlap false (Megatron-LM's ring attention always "
                      "overlaps)", "--set parallel.cp_comm_overlap=true")
    return flags


# torchtitan ----------------------------------------------------------------------------------

TORCHTITAN_SCHEDULES = {"gpipe": "GPipe", "1f1b": "1F1B", "interleaved": "Interleaved1F1B",
                        "zero-bubble": "ZBVZeroBubble", "dualpipev": "DualPipeV"}

Section = dict[str, object]


def _torchtitan(job: Job) -> str:
    notes: list[str] = []
    if not job.cluster.is_homogeneous:
        raise refusal("torchtitan", "mixed node groups (torchtitan has no setting for which "
                      "group serves which stage)", "plan on one kind of node")
    _titan_offload(job.layout)
    sections = {"parallelism": _titan_parallelism(job, notes),
                "training": _titan_training(job),
                "activation_checkpoint": _titan_checkpoint(job)}
    if job.layout.tp_comm_overlap and job.layout.tp > 1:
        sections["training"]["compile"] = True  # async tensor parallel runs only compiled
    sections.update(_titan_float8(job))
    header = [f"# torchtitan job config (TOML) for {_summary(job)}",
              f"# [model] name/flavor: the torchtitan model matching {job.model.name} "
              "(not derived here)",
              *(f"# check: {note}" for note in notes)]
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


def _titan_offload(layout: Layout) -> None:
    """torchtitan has no equivalent (pytorch/torchtitan torchtitan/config/configs.py, commit
    b5bcd76): `training.enable_cpu_offload` is FSDP2's CPUOffloadPolicy, which moves the
    weights and gradients to the host too (parameter offload, not modelled here); activation
    offload exists only in experiments/graph_trainer; ZeRO++ is DeepSpeed's."""
    if layout.zero_pp:
        raise refusal("torchtitan", "zero_pp (ZeRO++ is DeepSpeed's; torchtitan's FSDP2 has "
                      "no quantized or hierarchical gathers)", "--set parallel.zero_pp=false")
    if layout.offload.any:
        raise refusal("torchtitan", "parallel.offload (torchtitan's enable_cpu_offload moves "
                      "the weights and gradients to the host as well, and it has no "
                      "activation offload outside experiments)",
                      "--set parallel.offload.optimizer=false --set "
                      "parallel.offload.activations=false")


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
        raise refusal("torchtitan", f"ZeRO-{layout.zero_stage} (torchtitan shards with FSDP2, "
                      "which is ZeRO-3, or replicates with DDP, ZeRO-0)",
                      "--set parallel.zero_stage=3, or parallel.zero_stage=0")
    if not sharded and (layout.tp > 1 or layout.pp > 1 or layout.cp > 1):
        notes.append("ZeRO-0 (DDP) with tp/pp/cp: older torchtitan raises 'DDP has not "
                     "supported > 1D parallelism'")
    if layout.cp > 1 and layout.cp_style == "ulysses":
        raise refusal("torchtitan", "cp_style ulysses (torchtitan's context parallelism is "
                      "ring attention; its rotate method only changes how the ring passes "
                      "keys and values)", "--set parallel.cp_style=ring")
    shard = layout.dp if sharded else 1
    if layout.ep > 1 and not layout.cp <= layout.ep <= shard * layout.cp:
        raise refusal("torchtitan", f"expert_parallel_degree {layout.ep} (torchtitan needs "
                      "context_parallel_degree <= ep <= data_parallel_shard_degree · cp)",
                      "another --set parallel.ep")
    if layout.tp > 1 and not layout.sequence_parallel:
        raise refusal("torchtitan", "sequence_parallel false (torchtitan's tensor-parallel "
                      "plan always shards the norms over tp)",
                      "--set parallel.sequence_parallel=true")
    if layout.tp_comm_overlap and layout.tp > 1:
        values["enable_async_tensor_parallel"] = True
        notes.append("tp_comm_overlap is torchtitan's async tensor parallel, which runs only "
                     "under torch.compile ([training] compile = true): compiling also fuses "
                     "other ops, which parasim's prediction does not model")
    dense = "-".join(axis for axis in layout.order.split("-") if axis != "ep")
    if dense != "tp-cp-dp-pp" or (layout.ep > 1 and layout.order != "tp-cp-ep-dp-pp"):
        raise refusal("torchtitan", f"rank order {layout.order} (torchtitan's device mesh "
                      "lays ranks out as tp-cp-ep-dp-pp)", "--set parallel.order=tp-cp-ep-dp-pp")
    if layout.pp > 1:
        values.update(_titan_pipeline(job, notes))
    return values


def _titan_pipeline(job: Job, notes: list[str]) -> Section:
    """torchtitan's pipeline: DualPipeV is torch.distributed.pipelining's ScheduleDualPipeV
    (torch 2.13), whose V gives rank r stages r and 2·pp-1-r as parasim's does (torchtitan
    distributed/pipeline_parallel.py, style "v"); its F&B pairs (OVERLAP_F_B) run one after
    the other unless a function is registered for them, which torchtitan does only in
    experiments/graph_trainer (b5bcd76). DualPipe's two copies have no torchtitan schedule."""
    layout = job.layout
    if layout.schedule == "zero-bubble":
        raise refusal("torchtitan", "schedule zero-bubble (parasim's ZB-H1 has one stage per "
                      "rank; torchtitan's ZBVZeroBubble two, V-shaped)",
                      "--set parallel.schedule=1f1b, or interleaved")
    if layout.schedule == "dualpipe":
        raise refusal("torchtitan", "schedule dualpipe (torch.distributed.pipelining has only "
                      "the V variant, ScheduleDualPipeV)", "--set parallel.schedule=dualpipev")
    if layout.schedule == "dualpipev" and layout.ep > 1:
        notes.append("DualPipeV hides the expert all-to-alls of each F&B pair behind the other "
                      "micro-batch's compute only with an OVERLAP_F_B function registered on "
                      "the schedule (torch register_custom_function); stock torchtitan runs "
                      "the pair one after the other, slower than predicted")
    schedule = TORCHTITAN_SCHEDULES[layout.schedule]
    stages = job.stage_layers
    bounds, total = [], 0
    for n in stages[:-1]:
        total += n
        bounds.append(f"layers.{total}")
    return {"pipeline_parallel_schedule": schedule,
            "pipeline_parallel_microbatch_size": layout.micro_batch_size,
            "pipeline_parallel_split_points": bounds}


def _titan_training(job: Job) -> Section:
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
    elif training.precision == "fp4":
        raise refusal("torchtitan", "precision fp4 (torchtitan has no NVFP4 training "
                      "recipe; its float8 / MX converters train in 8 bits)",
                      "--set training.precision=fp8")
    else:
        raise refusal("torchtitan", "precision fp16 (torchtitan's mixed_precision_param is "
                      "bfloat16 or float32)", "--set training.precision=bf16")
    if training.grad_precision not in (None, "fp32"):
        raise refusal("torchtitan", f"{training.grad_precision} gradients (torchtitan reduces "
                      "them in float32)", "--set training.grad_precision=fp32")
    if training.optimizer_moment_precision != "fp32":
        raise refusal("torchtitan", f"{training.optimizer_moment_precision} Adam moments "
                      "(torchtitan's AdamW keeps them in the parameters' float32)",
                      "--set training.optimizer_moment_precision=fp32")
    if training.fp8_moe_act_input:
        raise refusal("torchtitan", "fp8_moe_act_input (torchtitan keeps the experts' "
                      "activation input in the compute precision)",
                      "--set training.fp8_moe_act_input=false")
    if layout.pp > 1:
        assert num_microbatches(training, layout) * layout.micro_batch_size == local
    return values


def _titan_checkpoint(job: Job) -> Section:
    """torchtitan's activation checkpointing: none, or every block in full (`full`); its
    `selective` modes (per op, or every n-th block) are not parasim's selective recompute
    (Korthikanti et al. 2022's attention core) nor its first-N-blocks-per-stage counts."""
    layout = job.layout
    counts = layout.full_recompute_layers
    if counts and any(counts):
        if list(counts) != list(job.stage_layers):
            raise refusal("torchtitan", f"full recompute of {list(counts)} blocks per virtual "
                          "stage (torchtitan checkpoints every block, every n-th, or none)",
                          "--set parallel.recompute=full, or parallel.recompute=none")
        return {"mode": "full"}
    if layout.recompute == "selective":
        raise refusal("torchtitan", "recompute selective (torchtitan's selective checkpointing "
                      "saves other tensors than the attention core parasim recomputes)",
                      "--set parallel.recompute=full, or parallel.recompute=none")
    return {"mode": layout.recompute}


def _titan_float8(job: Job) -> dict[str, Section]:
    if job.training.precision != "fp8":
        return {}
    return {"model": {"converters": ["float8"]}, "float8": {"recipe_name": "tensorwise"}}


_EXPORTERS: dict[str, Callable[[Job], str]] = {"megatron": _megatron, "torchtitan": _torchtitan}
