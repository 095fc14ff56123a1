"""The published-run corpus: measured training runs from papers and READMEs as parasim jobs.

Three kinds of file, one row schema (57 columns, `profiles/published/sources/HEADER.csv`, the
column meanings in `profiles/published/README.md`):

- the corpus, `profiles/published/sources/<source_id>.csv`, one file per source, each with a
  `.md` note saying how it was read;
- two files of the shared datasets folder (../shared/data, README there) in the same schema:
  `mosaicml/runs.csv` (llm-foundry's throughput tables) and `hagemann2023/layouts.csv`
  (Hagemann et al. 2023, arXiv:2311.05610, with OOM labels);
- vTrain's two files, read with `simulator.datasets.vtrain`.

`load_published` turns every row into a `PublishedRun` (a `Job` plus what was measured) or
counts why it could not: rows are never repaired or guessed. A row's missing settings get the
defaults stated in `ASSUMPTIONS`; a row missing what a job cannot do without (model dims, GPU
count, layout) is skipped with its reason. The measured step time comes from the most direct
column the row has (`TIME_BASES`); internally inconsistent rows are skipped (`_check_*`).
The published baseline (benchmarks/published_baseline.py) takes its Hagemann jobs from here.
"""

from __future__ import annotations

import csv
import math
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parasim import profiles
from parasim.simulator import catalog
from parasim.simulator.datasets import vtrain
from parasim.simulator.errors import SpecError
from parasim.simulator.flops import (BACKWARD_FACTOR, block_forward_flop, model_flop_per_step,
                                     narayanan_flop_per_step, uniform_blocks)
from parasim.simulator.job import Job
from parasim.simulator.jobfile import job_from_mapping
from parasim.simulator.params import total_params

GiB = 2**30
GPUS_PER_NODE = 8
HEADER_FILE = "HEADER.csv"
# Files of the shared datasets folder in the corpus schema, by source_id.
SHARED_FILES = {"mosaicml_llmfoundry": "mosaicml/runs.csv",
                "hagemann2023": "hagemann2023/layouts.csv"}
HAGEMANN_FILE = SHARED_FILES["hagemann2023"]
OK_STATUS, OOM_STATUS = ("ok",), ("OOM", "OOM Error")
# Fit-only rows (no usable time): m = 2·pp micro-batches per step (2 when pp = 1). 1F1B's peak
# holds min(pp - rank, m) micro-batches, so any m >= pp gives the same peak memory.
MICROBATCHES_PER_STAGE = 2
# Cross-checks between two measures of one row (relative disagreement allowed).
TIME_TOLERANCE = 0.03  # a derived time vs the throughput it was derived from (rounding)
PEAK_TOLERANCE = 0.05  # tflops_per_gpu vs mfu_pct · peak_tflops_per_gpu
FLOP_TOLERANCE = 0.10  # time from throughput vs from TFLOP/s or MFU (the source's FLOP count)

CORPUS_ASSUMPTIONS = """\
Published corpus (profiles/published/sources, mosaicml, hagemann2023), stated, not fitted:
  model    family from `arch` (+ model_name): GPT-2/3 and Paxml GPT: gelu, layernorm, learned
           positions, tied embeddings, linear biases; MPT: the same without biases; Llama/LLaMA,
           Mixtral, Qwen2(-MoE), OLMo-2: swiglu, rmsnorm, rope, untied (Qwen2: q/k/v bias and a
           gated shared expert; OLMo-2: q/k norm). No dropout (the flash-attention GPT-3 and
           llm-foundry MPT recipes set every dropout to 0; assumed for Paxml). Keywords in `arch`
           (SwiGLU, GeLU, RoPE, learned pos, RMSNorm, LayerNorm, biases) override the family.
           Learned position table = seq_len rows. Vocabulary from the row, else the family's
           tokenizer: 32000 for Llama/LLaMA-1/2 and Mixtral-8x22B v0.1, 50257 for GPT; MoE
           rows without a dense FFN width take the expert width (no dense layer uses it);
           shared-expert width from `arch` ('shared expert (intermediate N)'); capacity
           factor from `other_settings` ('capacity factor N'), else dropless.
  cluster  catalog GPU by `gpu_model`: A100 40/80 GB by gpu_mem_gb (unstated: 80 GB, as the
           data README says is likely), A800 80GB = a100-80gb with NVLink 400 GB/s both ways
           (200 GB/s one way, gpu and intra_node overridden), H100 = h100-sxm, H200, H800,
           B200; preset dgx-a100 / dgx-h100 / hgx-h200 / hgx-h800 / dgx-b200; num_gpus/8
           nodes, a run of fewer than 8 GPUs one node of that many. distflashattn2023's two
           DGX boxes are joined by 100 Gb/s InfiniBand (paper §4): 100 Gb/s per NIC with the
           preset's 8 NICs (the count is not stated; one 100 Gb/s link could not carry its
           Megatron-LM tp=16 rows' traffic in their measured time). Other stated networks match
           their preset (8 x 200 Gb/s on A100 = 1.6 Tb/s; 8 x 400 Gb/s on H100); unstated
           networks are the preset's.
  training global batch (sequences): global_batch_size, else global_batch_tokens / seq_len,
           else micro_batch · dp · grad_accum. Precision from the text (fp8 > bf16/bfloat16 >
           fp16; PyTorch AMP = fp16); unstated: bf16. FlashAttention unless the row says 'no'
           (unstated: on, the default of every framework in the corpus after 2022).
  layout   tp, pp from the row (none: skipped); cp, ep, vpp unstated = 1; dp unstated =
           num_gpus / (tp·pp·cp); vpp > 1 -> interleaved, else 1f1b; micro batch unstated = 1.
           Sequence parallelism when the row says so ('yes', 'TP-sp', 'Megatron ... sequence
           parallel'), and for Megatron rows with tp > 1 and ep > 1 (Megatron-Core requires
           it); else off. Recompute: 'none' -> none; 'selective' and MaxText minimal_flash ->
           selective; any other checkpointing or remat wording (layer checkpointing, HF,
           DistFlashAttn's rematerialization-aware one, Paxml SAVE_DOT_WITH_NO_BATCH_DIM) ->
           full; unstated -> none. ZeRO: FSDP FULL_SHARD / FSDP / HSDP / Gemini / JAX fsdp -> 3,
           SHARD_GRAD_OP / ZeRO-2 -> 2, ZeRO-1 / distributed optimizer / ZeroRedundancyOptimizer
           -> 1, DDP / none -> 0; unstated -> 0 for timed rows; a fit-only row (below) with
           dp·cp > 1 and no stated sharding is skipped (its memory depends on it). HSDP
           (shard within a node) is modelled as ZeRO-3 over all of dp. MoE Parallel Folding
           rows (attention and expert layers mapped differently, expert TP 1) are modelled
           with Megatron-Core's coupled mapping: their layout is the attention layout.
  time     only when the global batch is stated or derivable; from, in order: iteration_time_s,
           derived_iteration_time_s, global batch tokens / tokens/s, global batch / samples/s
           ('throughput'), model FLOPs per step / (tflops_per_gpu · GPUs) ('tflops'),
           model FLOPs / (mfu_pct · peak · GPUs) ('mfu'; peak from the row, else the catalog's
           for the precision). Model FLOPs are parasim's (simulator.flops.model_flop_per_step:
           3 x forward, full s x s attention), except usp2024, whose MFU counts the causal half
           of attention (arXiv:2405.07719 §5.2): there half of the attention score/value FLOPs
           is taken off, and colossalai, whose TFLOP/s are 8·N·tokens where its row says so and
           Narayanan et al. 2021 eq. 3 otherwise (the README rows match it to 0.1%). A row
           whose time from throughput and from TFLOP/s or MFU differ by more than 10% is
           skipped (model dims or FLOP definition not what the source used).
  fit-only rows (OOM rows, and rows whose global batch is not known): they say whether the
           layout fitted (ok) or not (OOM), and the memory where measured. They need a stated
           micro batch, and a stated sharding when dp·cp > 1; global batch = micro_batch · dp ·
           2·pp (m = 2·pp micro-batches: 1F1B's peak is the same for any m >= pp).
           memory_gib is read as GiB (sources that print 'GB' are taken as GiB: framework
           tools divide by 2^30)."""

HAGEMANN_ASSUMPTIONS = """\
  Hagemann LLaMA-1 (hagemann2023): swiglu, rmsnorm, rope, untied, vocab 32000, ffn from the
           row; bf16, ZeRO-1, 1f1b; dgx-a100 with a100-80gb, num_gpus/8 nodes; recompute
           'none' -> none, 'full (checkpoint every layer)' -> full; sequence_parallel 'yes' ->
           true, 'no*' -> false; flash_attention 'FlashAttention*' -> true, 'no (...)' ->
           false. The global batch is not in the spreadsheets, so every row is fit-only
           (m = 2·pp micro-batches)."""
ASSUMPTIONS = CORPUS_ASSUMPTIONS + "\n" + HAGEMANN_ASSUMPTIONS + "\n" + \
    "vTrain     see simulator/datasets/vtrain.py."


@dataclass(frozen=True, kw_only=True)
class PublishedRun:
    """One measured run as a parasim job, with what the source measured."""

    source: str  # source_id: one fold of leave-one-source-out (vtrain, hagemann2023, ...)
    file: str  # file it came from, relative to its data folder
    line: int  # line in that file where the row starts (header = 1)
    label: str  # row_label
    job: Job  # model, cluster, training, layout
    measured_step_s: float | None  # None for an OOM row or where no time can be derived
    basis: str  # how measured_step_s was obtained: iteration_time|throughput|tflops|mfu|none
    generation: str  # ampere (A100/A800) | hopper (H100/H200/H800) | blackwell (B200/B300)
    oom: bool  # the source says it ran out of memory
    measured_memory_bytes: float | None  # peak memory per GPU the source reports
    moe: bool  # the model has routed experts


class Unusable(Exception):
    """A row that cannot become a run; `reason` is what the skip Counter counts."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


# Reading ------------------------------------------------------------------------------------


def default_corpus_dir() -> Path:
    """The corpus shipped with parasim: profiles/published (its rows are in sources/)."""
    return Path(str(profiles.path("published")))


def sources_dir(corpus_dir: Path) -> Path:
    """The folder of the source files: `corpus_dir/sources`, or corpus_dir itself when it is
    that folder."""
    return corpus_dir / "sources" if (corpus_dir / "sources").is_dir() else corpus_dir


def corpus_files(corpus_dir: Path) -> list[Path]:
    """Every source file of the corpus (HEADER.csv is the schema, not a source)."""
    return sorted(p for p in sources_dir(corpus_dir).glob("*.csv") if p.name != HEADER_FILE)


def header(corpus_dir: Path) -> list[str]:
    with (sources_dir(corpus_dir) / HEADER_FILE).open(newline="", encoding="utf-8") as f:
        return next(csv.reader(f))


def read_rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """(line where the row starts, row) for every data row; the header is line 1."""
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        start = 2
        for row in reader:
            yield start, row
            start = reader.line_num + 1


def _text(row: dict[str, str], column: str) -> str:
    return (row.get(column) or "").strip()


def _number(row: dict[str, str], column: str) -> float | None:
    text = _text(row, column)
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise Unusable(f"{column} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise Unusable(f"{column} is not a finite number >= 0")
    return value


def _int(row: dict[str, str], column: str) -> int | None:
    value = _number(row, column)
    if value is None:
        return None
    if value != int(value):
        raise Unusable(f"{column} is not a whole number")
    return int(value)


def _required_int(row: dict[str, str], column: str) -> int:
    value = _int(row, column)
    if not value:
        raise Unusable(f"missing {column}")
    return value


def _first_match(table, text: str, flags: int = re.IGNORECASE):
    """The value of the first (pattern, value) whose pattern occurs in `text`, else None."""
    return next((value for pattern, value in table if re.search(pattern, text, flags)), None)


# Model --------------------------------------------------------------------------------------

_GPT = {"activation": "gelu", "norm": "layernorm", "position_embedding": "learned",
        "tied_embeddings": True, "linear_bias": True}
_LLAMA = {"activation": "swiglu", "norm": "rmsnorm", "position_embedding": "rope",
          "tied_embeddings": False}
# Architecture families, matched in order on `arch` + `model_name`: (pattern, model fields,
# vocabulary of the family's tokenizer or None when the row must state it).
FAMILIES = (
    (r"\bMPT\b", {**_GPT, "linear_bias": False}, None),
    (r"Mixtral", _LLAMA, 32000),
    (r"Qwen2", {**_LLAMA, "qkv_bias": True, "shared_expert_gate": True}, None),
    (r"OLMo-2", {**_LLAMA, "qk_norm": True}, None),
    (r"\bGPT", _GPT, 50257),
    (r"Llama|LLaMA", _LLAMA, 32000),
)
# Words of `arch` that override the family.
ARCH_KEYWORDS = (
    (r"SwiGLU", {"activation": "swiglu"}),
    (r"\bGe[Ll][Uu]\b", {"activation": "gelu"}),
    (r"\bRoPE\b", {"position_embedding": "rope"}),
    (r"learned (abs )?pos", {"position_embedding": "learned"}),
    (r"RMSNorm", {"norm": "rmsnorm"}),
    (r"\bLayerNorm", {"norm": "layernorm"}),
    (r"\bno biases", {"linear_bias": False}),
    (r"(?<!no )\bbiases", {"linear_bias": True}),
    (r"QK-norm", {"qk_norm": True}),
)


def model_name(row: dict[str, str]) -> str:
    base = _text(row, "model_name").split(" (")[0].lower()
    return re.sub(r"[^a-z0-9.]+", "-", base).strip("-") or "published"


def architecture(row: dict[str, str]) -> tuple[dict[str, Any], int | None]:
    """(model fields of the family and the `arch` keywords, the family's vocabulary)."""
    arch = _text(row, "arch")
    family = next(((fields, vocab) for pattern, fields, vocab in FAMILIES
                   if re.search(pattern, f"{arch} {_text(row, 'model_name')}")), None)
    if family is None:
        raise Unusable("architecture family not recognised")
    fields = dict(family[0])
    for pattern, change in ARCH_KEYWORDS:
        if re.search(pattern, arch):
            fields.update(change)
    return fields, family[1]


def moe_fields(row: dict[str, str]) -> dict[str, Any]:
    """The routed and shared experts of a MoE row ({} for a dense one)."""
    experts = _int(row, "moe_num_experts") or 0
    if experts == 0:
        return {}
    top_k = _int(row, "moe_top_k")
    if not top_k:
        raise Unusable("MoE row without moe_top_k")
    fields = {"num_experts": experts, "experts_per_token": top_k,
              "moe_ffn_hidden_size": _required_int(row, "moe_expert_ffn_hidden"),
              "num_shared_experts": _int(row, "moe_shared_experts") or 0}
    shared = re.search(r"shared expert \(intermediate (\d+)\)", _text(row, "arch"))
    if shared and fields["num_shared_experts"]:
        fields["shared_expert_ffn_hidden_size"] = int(shared.group(1))
    capacity = re.search(r"capacity factor (\d+(?:\.\d+)?)", _text(row, "other_settings"))
    if capacity:
        fields["capacity_factor"] = float(capacity.group(1))
    return fields


def model_mapping(row: dict[str, str]) -> dict[str, Any]:
    """The job file's `model:` mapping of a row (ASSUMPTIONS: model)."""
    dims = {key: _required_int(row, column) for key, column in (
        ("num_layers", "num_layers"), ("hidden_size", "hidden_size"),
        ("num_attention_heads", "num_heads"))}
    fields, family_vocab = architecture(row)
    moe = moe_fields(row)
    ffn = _int(row, "ffn_hidden_size") or moe.get("moe_ffn_hidden_size")
    if not ffn:
        raise Unusable("missing ffn_hidden_size")
    vocab = _int(row, "vocab_size") or family_vocab
    if not vocab:
        raise Unusable("missing vocab_size")
    model = {"name": model_name(row), **dims, "num_kv_heads": _int(row, "num_kv_heads"),
             "ffn_hidden_size": ffn, "vocab_size": vocab, **fields, **moe}
    if model["position_embedding"] == "learned":
        model["max_position_embeddings"] = _required_int(row, "seq_len")
    return model


# Cluster ------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class GpuKind:
    """A GPU of the corpus in parasim's catalog."""

    gpu: str  # catalog GPU name (the base, for a variant)
    preset: str  # cluster preset of its usual node
    generation: str  # ampere | hopper | blackwell
    variant: str | None = None  # name of a variant of `gpu` with its own NVLink rate
    nvlink_GBps: float | None = None  # the variant's NVLink, one direction


# Matched in order on `gpu_model`; A100 is resolved by memory size (a100_kind).
GPU_KINDS = (
    (r"A800", GpuKind(gpu="a100-80gb", preset="dgx-a100", generation="ampere",
                      variant="a800-80gb", nvlink_GBps=200)),
    (r"A100", None),
    (r"H100", GpuKind(gpu="h100-sxm", preset="dgx-h100", generation="hopper")),
    (r"H200", GpuKind(gpu="h200", preset="hgx-h200", generation="hopper")),
    (r"H800", GpuKind(gpu="h800", preset="hgx-h800", generation="hopper")),
    (r"B200", GpuKind(gpu="b200", preset="dgx-b200", generation="blackwell")),
)
# Networks a source states that differ from its preset's (ASSUMPTIONS: cluster).
INTER_NODE = {"distflashattn2023": {"bandwidth_Gbps": 100}}


def a100_kind(row: dict[str, str]) -> GpuKind:
    memory = _int(row, "gpu_mem_gb")
    if memory is None:
        found = re.search(r"\b(40|80)\s*GB", _text(row, "gpu_model"))
        memory = int(found.group(1)) if found else 80
    if memory not in (40, 80):
        raise Unusable("A100 memory size not 40 or 80 GB")
    return GpuKind(gpu=f"a100-{memory}gb", preset="dgx-a100", generation="ampere")


def gpu_kind(row: dict[str, str]) -> GpuKind:
    text = _text(row, "gpu_model")
    for pattern, kind in GPU_KINDS:
        if re.search(pattern, text):
            return kind if kind is not None else a100_kind(row)
    raise Unusable("GPU not in the catalog" if text else "missing gpu_model")


def cluster_mapping(row: dict[str, str], kind: GpuKind, num_gpus: int) -> dict[str, Any]:
    """The job's `cluster:` mapping: the GPU's preset, num_gpus/8 nodes (ASSUMPTIONS)."""
    if (_int(row, "gpus_per_node") or GPUS_PER_NODE) != GPUS_PER_NODE:
        raise Unusable("gpus_per_node is not 8 (no preset)")
    if num_gpus > GPUS_PER_NODE and num_gpus % GPUS_PER_NODE:
        raise Unusable("num_gpus does not fill whole 8-GPU nodes")
    cluster: dict[str, Any] = {"base": kind.preset, "num_nodes": max(1, num_gpus // GPUS_PER_NODE)}
    if num_gpus < GPUS_PER_NODE:
        cluster["gpus_per_node"] = num_gpus
    preset = catalog.entry("clusters", kind.preset, "cluster.base")
    if catalog.canonical_name("gpus", preset["gpu"], "cluster.gpu") != kind.gpu:
        cluster["gpu"] = kind.gpu
    if kind.variant is not None:
        cluster["gpu"] = {"base": kind.gpu, "name": kind.variant, "nvlink_GBps": kind.nvlink_GBps}
        cluster["intra_node"] = {**preset["intra_node"], "bandwidth_GBps": kind.nvlink_GBps}
    source = _text(row, "source_id")
    if source in INTER_NODE:
        cluster["inter_node"] = {**preset["inter_node"], **INTER_NODE[source]}
    return cluster


# Training and layout ------------------------------------------------------------------------

PRECISIONS = ((r"fp8", "fp8"), (r"bf16|bfloat16", "bf16"), (r"fp16|float16|PyTorch AMP", "fp16"))
RECOMPUTE = ((r"^none", "none"), (r"selective|minimal_flash", "selective"),
             (r"checkpoint|remat|^full", "full"))
# Paxml remat policies (configs.py CHECKPOINT_POLICY), when the recompute column is empty:
# what is saved decides what is recomputed (jax.checkpoint_policies).
PAX_POLICIES = {"SAVE_DOT_WITH_NO_BATCH_DIM": "full", "SAVE_NOTHING": "full",
                "SAVE_EVERYTHING": "none"}
ZERO_STAGES = ((r"FP8 ZeRO", None), (r"SHARD_GRAD_OP|ZeRO-2|zero2", 2),
               (r"FULL_SHARD|FSDP|HSDP|Gemini|ZeRO-3", 3),
               (r"ZeRO-1|zero1|distributed optimizer|ZeroRedundancyOptimizer", 1),
               (r"^none|DDP|ZeRO-0|pure DP", 0))
SEQUENCE_PARALLEL = r"^yes|TP-sp|Megatron TP \+ sequence parallel|Megatron sequence parallel"


def precision(row: dict[str, str]) -> str:
    text = _text(row, "precision")
    found = _first_match(PRECISIONS, text)
    if text and found is None:
        raise Unusable("precision not recognised")
    return found or "bf16"


def flash_attention(row: dict[str, str]) -> bool:
    return not re.match(r"no\b", _text(row, "flash_attention").lower())


def recompute_mode(row: dict[str, str]) -> str:
    text = _text(row, "recompute")
    if not text:
        policy = re.search(r"CHECKPOINT_POLICY=(\w+)", _text(row, "other_settings"))
        if policy is None:
            return "none"
        if policy.group(1) not in PAX_POLICIES:
            raise Unusable("remat policy not recognised")
        return PAX_POLICIES[policy.group(1)]
    mode = _first_match(RECOMPUTE, text)
    if mode is None:
        raise Unusable("recompute wording not recognised")
    return mode


def zero_stage(row: dict[str, str], fit_only: bool, data_parallel: int) -> int:
    """ZeRO stage from the sharding wording, parenthesised remarks left out (ASSUMPTIONS)."""
    text = re.sub(r"\(.*?\)", "", _text(row, "zero_or_sharding")).strip()
    if not text:
        if fit_only and data_parallel > 1:
            raise Unusable("fit-only row with unstated sharding")
        return 0
    stages = [stage for pattern, stage in ZERO_STAGES if re.search(pattern, text, re.IGNORECASE)]
    if not stages:
        raise Unusable("sharding wording not recognised")
    if stages[0] is None:
        raise Unusable("FP8 ZeRO (FP8 optimizer states) not modelled")
    return stages[0]


def sequence_parallel(row: dict[str, str], tp: int, ep: int) -> bool:
    if re.search(SEQUENCE_PARALLEL, _text(row, "sequence_parallel")):
        return True
    return "megatron" in _text(row, "framework").lower() and tp > 1 and ep > 1


@dataclass(frozen=True, kw_only=True)
class Degrees:
    """The parallel degrees of a row, checked against its GPU count."""

    tp: int
    pp: int
    dp: int
    cp: int
    ep: int
    vpp: int
    num_gpus: int


def degrees(row: dict[str, str]) -> Degrees:
    tp, pp = _int(row, "tp"), _int(row, "pp")
    if not tp or not pp:
        raise Unusable("layout not stated (tp/pp)")
    cp, ep, vpp = (_int(row, k) or 1 for k in ("cp", "ep", "vpp"))
    num_gpus, dp = _int(row, "num_gpus"), _int(row, "dp")
    if not num_gpus:
        if not dp:
            raise Unusable("num_gpus not stated")
        num_gpus = tp * pp * dp * cp
    if not dp:
        if num_gpus % (tp * pp * cp):
            raise Unusable("tp·pp·cp does not divide num_gpus")
        dp = num_gpus // (tp * pp * cp)
    if tp * pp * dp * cp != num_gpus:
        raise Unusable("tp·pp·dp·cp != num_gpus")
    if ep > 1 and (dp * cp) % ep:
        raise Unusable("ep does not divide dp·cp (MoE parallel folding)")
    return Degrees(tp=tp, pp=pp, dp=dp, cp=cp, ep=ep, vpp=vpp, num_gpus=num_gpus)


def stated_global_batch(row: dict[str, str], seq: int, dp: int) -> int | None:
    """Sequences per step when the row states or implies them (ASSUMPTIONS: training)."""
    batch = _int(row, "global_batch_size")
    tokens = _int(row, "global_batch_tokens")
    if tokens is not None and batch is not None and tokens != batch * seq:
        raise Unusable("global_batch_tokens != global_batch_size · seq_len")
    if batch is None and tokens is not None:
        if tokens % seq:
            raise Unusable("global_batch_tokens not a multiple of seq_len")
        batch = tokens // seq
    micro, accumulation = _int(row, "micro_batch_size"), _int(row, "grad_accum")
    if micro and accumulation:
        if batch is None:
            batch = micro * dp * accumulation
        elif batch != micro * dp * accumulation:
            raise Unusable("micro_batch · dp · grad_accum != global batch")
    return batch


def parallel_mapping(row: dict[str, str], d: Degrees, zero: int) -> dict[str, Any]:
    """The job's `parallel:` mapping (ASSUMPTIONS: layout)."""
    return {"tp": d.tp, "pp": d.pp, "dp": d.dp, "cp": d.cp, "ep": d.ep, "vpp": d.vpp,
            "micro_batch_size": _int(row, "micro_batch_size") or 1,
            "schedule": "interleaved" if d.vpp > 1 else "1f1b",
            "sequence_parallel": sequence_parallel(row, d.tp, d.ep),
            "recompute": recompute_mode(row), "zero_stage": zero}


def fit_global_batch(micro_batch: int, d: Degrees) -> int:
    """m = 2·pp micro-batches per step for a row measured for memory only."""
    return micro_batch * d.dp * MICROBATCHES_PER_STAGE * max(d.pp, 1)


# Measured time ------------------------------------------------------------------------------


def _per_s(row: dict[str, str], column: str, count: float) -> float | None:
    rate = _number(row, column)
    return count / rate if rate else None


def throughput_time(row: dict[str, str], batch: int, seq: int, num_gpus: int) -> float | None:
    """Step time from tokens/s or samples/s: the global batch over the rate."""
    per_gpu = _number(row, "tokens_per_s_per_gpu")
    tokens_total = _number(row, "tokens_per_s_total") or (per_gpu * num_gpus if per_gpu else None)
    if tokens_total:
        return batch * seq / tokens_total
    return _per_s(row, "samples_per_s", batch)


def peak_flop_per_s(row: dict[str, str], job: Job) -> float:
    stated = _number(row, "peak_tflops_per_gpu")
    if stated:
        return stated * 1e12
    return job.cluster.node_groups[0].gpu.peak_flop_per_s(job.training.precision)


def causal_model_flop_per_step(job: Job) -> float:
    """parasim's model FLOPs with the attention score/value products over the causal half only:
    USP's revised MFU counts 'only effective computations under causal masking'
    (Fang & Zhao, arXiv:2405.07719 §5.2)."""
    model, training = job.model, job.training
    attention = sum(g.count * block_forward_flop(model, training, g.moe)[1]
                    for g in uniform_blocks(model, "none"))
    return model_flop_per_step(model, training) \
        - (1 + BACKWARD_FACTOR) * attention / 2 * training.global_batch_size


def colossalai_flop_per_step(job: Job, row: dict[str, str]) -> float:
    """ColossalAI's printed TFLOP/s: 8·N·tokens where the row says so (performance_evaluator.py:
    2·numel·tokens·(3 + grad_ckpt)), else Narayanan et al. 2021 eq. 3 (the README table's
    TFLOPS/GPU equal it to 0.1% on both rows that state a model; its definition is unstated)."""
    model, training = job.model, job.training
    if "8ND" in _text(row, "tflops_definition"):
        return 8 * total_params(model) * training.tokens_per_step
    return narayanan_flop_per_step(training.global_batch_size, training.seq_length,
                                   model.num_layers, model.hidden_size, model.vocab_size)


# How a source counts the FLOPs behind its TFLOP/s and MFU when it is not parasim's count
# (ASSUMPTIONS: time); the others use model_flop_per_step.
FLOP_COUNTS: dict[str, Callable[[Job, dict[str, str]], float]] = {
    "usp2024": lambda job, row: causal_model_flop_per_step(job),
    "colossalai": colossalai_flop_per_step,
}
# Sources whose tflops_per_gpu and mfu_pct come from two different formulas (stated in their
# tflops_definition), so that one cannot be checked against the other.
SEPARATE_MFU_FORMULA = ("hagemann2023",)


def flop_time(row: dict[str, str], job: Job, num_gpus: int) -> tuple[float, str] | None:
    """Step time from TFLOP/s per GPU, else from MFU, with the source's FLOP count."""
    count = FLOP_COUNTS.get(_text(row, "source_id"))
    flop = count(job, row) if count else model_flop_per_step(job.model, job.training)
    tflops = _number(row, "tflops_per_gpu")
    if tflops:
        return flop / (tflops * 1e12 * num_gpus), "tflops"
    mfu = _number(row, "mfu_pct")
    if mfu:
        return flop / (mfu / 100 * peak_flop_per_s(row, job) * num_gpus), "mfu"
    return None


def measured_time(row: dict[str, str], job: Job, num_gpus: int) -> tuple[float | None, str]:
    """(step time, basis) from the most direct column (ASSUMPTIONS: time), cross-checked."""
    batch, seq = job.training.global_batch_size, job.training.seq_length
    throughput = throughput_time(row, batch, seq, num_gpus)
    flops = flop_time(row, job, num_gpus)
    if throughput and flops:
        _check_agree(throughput, flops[0], FLOP_TOLERANCE,
                     f"time from throughput and from {flops[1]} disagree")
    timed, derived = _number(row, "iteration_time_s"), _number(row, "derived_iteration_time_s")
    for column, value in (("iteration_time_s", timed), ("derived_iteration_time_s", derived)):
        if value and throughput:
            _check_agree(value, throughput, TIME_TOLERANCE, f"{column} disagrees with the throughput")
    for value, basis in ((timed, "iteration_time"),
                         (derived, "throughput"), (throughput, "throughput"),
                         flops or (None, "none")):
        if value:
            return value, basis
    return None, "none"


def _check_agree(a: float, b: float, tolerance: float, reason: str) -> None:
    if abs(a / b - 1) > tolerance:
        raise Unusable(reason)


# Rows ---------------------------------------------------------------------------------------

# Rows whose method parasim does not model, or whose label the source itself contradicts:
# (source_id, pattern on row_label, reason).
EXCLUDED = (
    ("coat2024", r"/ COAT$", "COAT's FP8 optimizer states and activations not modelled"),
    ("fp8lm2023", r"FP8 \(Ours\)", "FP8-LM's FP8 gradients and optimizer states not modelled"),
    ("colossalai", r"^H200 x16 70B zero1",
     "GPU label doubtful (the README prose gives this result to B200)"),
    ("moe_parallel_folding2025", r"w/ Folding",
     "MoE parallel folding (experts with their own tensor and data parallel groups, expert "
     "TP 1) is a layout parasim cannot express"),
)


def check_row(row: dict[str, str]) -> None:
    """Status, exclusions and the row's own arithmetic (its columns against each other)."""
    status = _text(row, "status")
    if status not in OK_STATUS + OOM_STATUS:
        raise Unusable(f"status {status or 'missing'}")
    source, label = _text(row, "source_id"), _text(row, "row_label")
    for excluded_source, pattern, reason in EXCLUDED:
        if source == excluded_source and re.search(pattern, label):
            raise Unusable(reason)
    tflops, mfu, peak = (_number(row, k) for k in ("tflops_per_gpu", "mfu_pct",
                                                    "peak_tflops_per_gpu"))
    if tflops and mfu and peak and source not in SEPARATE_MFU_FORMULA:
        _check_agree(tflops, mfu / 100 * peak, PEAK_TOLERANCE,
                     "tflops_per_gpu != mfu_pct · peak_tflops_per_gpu")


def build_job(mapping: dict[str, Any], where: str) -> Job:
    try:
        return job_from_mapping(mapping, base_dir=Path("."), source=where)
    except SpecError as err:
        raise Unusable(f"rejected by parasim ({err.field})") from None


def training_mapping(row: dict[str, str], seq: int, batch: int) -> dict[str, Any]:
    return {"seq_length": seq, "global_batch_size": batch, "precision": precision(row),
            "flash_attention": flash_attention(row)}


def row_mapping(row: dict[str, str], d: Degrees, kind: GpuKind) -> tuple[dict[str, Any], bool]:
    """(the row's job mapping, whether its time can be compared: it ran and its global batch
    is known). Other rows are fit-only: they need a stated micro batch, and their global
    batch is m = 2·pp micro-batches."""
    seq = _required_int(row, "seq_len")
    model = model_mapping(row)
    batch = stated_global_batch(row, seq, d.dp)
    timed = batch is not None and _text(row, "status") in OK_STATUS
    if not timed and not _int(row, "micro_batch_size"):
        raise Unusable("fit-only row without micro_batch_size")
    parallel = parallel_mapping(row, d, zero_stage(row, not timed, d.dp * d.cp))
    batch = batch or fit_global_batch(parallel["micro_batch_size"], d)
    if batch % (parallel["micro_batch_size"] * d.dp):
        raise Unusable("micro_batch · dp does not divide the global batch")
    return {"model": model, "cluster": cluster_mapping(row, kind, d.num_gpus),
            "training": training_mapping(row, seq, batch), "parallel": parallel}, timed


def row_run(row: dict[str, str], file: str, line: int) -> PublishedRun:
    """One corpus-schema row as a run, timed or fit-only (row_job); Unusable says why it
    cannot be one."""
    check_row(row)
    d = degrees(row)
    kind = gpu_kind(row)
    mapping, timed = row_mapping(row, d, kind)
    job = build_job(mapping, f"{file}:{line}")
    step_s, basis = measured_time(row, job, d.num_gpus) if timed else (None, "none")
    if timed and step_s is None:
        raise Unusable("global batch known but no time, throughput, TFLOP/s or MFU")
    memory_gib = _number(row, "memory_gib")
    if memory_gib and memory_gib * GiB > job.cluster.node_groups[0].gpu.memory_bytes:
        raise Unusable("memory_gib exceeds the GPU's memory")
    return PublishedRun(source=_text(row, "source_id"), file=file, line=line,
                        label=_text(row, "row_label"), job=job, measured_step_s=step_s,
                        basis=basis, generation=kind.generation,
                        oom=_text(row, "status") in OOM_STATUS,
                        measured_memory_bytes=memory_gib * GiB if memory_gib else None,
                        moe=job.model.is_moe)


def load_file(path: Path, file: str, runs: list[PublishedRun], skipped: Counter) -> None:
    """Every row of one corpus-schema file, into `runs` or counted in `skipped`."""
    for line, row in read_rows(path):
        try:
            runs.append(row_run(row, file, line))
        except Unusable as err:
            skipped[(_text(row, "source_id") or path.stem, err.reason)] += 1


def vtrain_runs(data_dir: Path) -> list[PublishedRun]:
    """vTrain's measured iterations (simulator.datasets.vtrain)."""
    runs = []
    for rel in vtrain.FILES.values():
        for line, row in read_rows(data_dir / rel):
            label = (f"{row['# GPUs']} GPUs L{row['# layers']} h{row['hidden size']} "
                     f"s{row['sequence length']} tp{row['tensor parallelism']} "
                     f"pp{row['pipeline parallelism']} dp{row['data parallelism']} "
                     f"mb{row['micro batch']} gbs{row['global batch']}")
            job = job_from_mapping(vtrain.vtrain_job(row), base_dir=Path("."),
                                   source=f"{rel}:{line}")
            runs.append(PublishedRun(source="vtrain", file=rel, line=line, label=label, job=job,
                                     measured_step_s=vtrain.measured_step_s(row),
                                     basis="iteration_time", generation="ampere", oom=False,
                                     measured_memory_bytes=None, moe=False))
    return runs


def load_published(corpus_dir: Path | None = None, data_dir: Path | None = None
                   ) -> tuple[tuple[PublishedRun, ...], Counter]:
    """Every usable row as a run, and the skipped rows counted by (source_id, reason).

    `corpus_dir` (profiles/published or its sources/ folder) defaults to the corpus shipped
    with parasim; a corpus run's `file` is `sources/<source_id>.csv`. `data_dir` (the shared
    datasets folder) adds MosaicML, Hagemann et al. and vTrain, each where its files are.
    """
    corpus_dir = corpus_dir or default_corpus_dir()
    runs: list[PublishedRun] = []
    skipped: Counter = Counter()
    for path in corpus_files(corpus_dir):
        load_file(path, f"sources/{path.name}", runs, skipped)
    if data_dir is not None:
        for rel in SHARED_FILES.values():
            if (data_dir / rel).is_file():
                load_file(data_dir / rel, rel, runs, skipped)
        if all((data_dir / rel).is_file() for rel in vtrain.FILES.values()):
            runs += vtrain_runs(data_dir)
    return tuple(runs), skipped


# Hagemann et al. 2023 (the published baseline's memory check) -------------------------------


def hagemann_flags(row: dict[str, str]) -> tuple[str, bool, bool]:
    """(recompute, sequence_parallel, flash_attention) from the spreadsheet's wording."""
    sequence_parallel_on = re.search(SEQUENCE_PARALLEL, _text(row, "sequence_parallel"))
    return recompute_mode(row), bool(sequence_parallel_on), flash_attention(row)


def hagemann_job(row: dict[str, str], global_batch_size: int | None = None) -> dict[str, Any]:
    """A Hagemann row as a job mapping (HAGEMANN_ASSUMPTIONS); the global batch defaults to
    m = 2·pp micro-batches per step (the spreadsheets do not give it)."""
    mapping, _ = row_mapping(row, degrees(row), gpu_kind(row))
    if global_batch_size is not None:
        mapping["training"]["global_batch_size"] = global_batch_size
    return mapping


# Summary ------------------------------------------------------------------------------------


def is_hopper(row: dict[str, str]) -> bool:
    return bool(re.search(r"H100|H200|H800", _text(row, "gpu_model")))


def corpus_counts(rows: list[dict[str, str]]) -> dict[str, int]:
    """The counts the corpus is held to, over raw rows (usable or not)."""
    return {"rows": len(rows), "sources": len({r["source_id"] for r in rows}),
            "H100/H200/H800": sum(map(is_hopper, rows)),
            "MoE": sum(bool(_text(r, "moe_num_experts")) and _text(r, "moe_num_experts") != "0"
                       for r in rows),
            "seq >= 16384": sum(int(_text(r, "seq_len") or 0) >= 16384 for r in rows)}


def run_counts(runs: tuple[PublishedRun, ...]) -> dict[str, int]:
    """The same counts over usable runs, plus how many have a step time."""
    return {"rows": len(runs), "sources": len({r.source for r in runs}),
            "H100/H200/H800": sum(r.generation == "hopper" for r in runs),
            "MoE": sum(r.moe for r in runs),
            "seq >= 16384": sum(r.job.training.seq_length >= 16384 for r in runs),
            "with step time": sum(r.measured_step_s is not None for r in runs),
            "OOM": sum(r.oom for r in runs),
            "with memory": sum(r.measured_memory_bytes is not None for r in runs)}


def main(argv: list[str]) -> int:
    """`python3 -m parasim.simulator.datasets.published [DATA_DIR]`: the counts."""
    data_dir = Path(argv[0]) if argv else None
    corpus = default_corpus_dir()
    rows = [row for path in corpus_files(corpus) for _, row in read_rows(path)]
    runs, skipped = load_published(corpus, data_dir)
    print(f"corpus ({len(corpus_files(corpus))} source files): raw rows {corpus_counts(rows)}")
    in_corpus = tuple(r for r in runs if r.file.startswith("sources/"))
    print(f"usable corpus runs: {run_counts(in_corpus)}")
    if data_dir is not None:
        print(f"usable runs with {data_dir}: {run_counts(runs)}")
    by_source = Counter(r.source for r in runs)
    timed = Counter(r.source for r in runs if r.measured_step_s is not None)
    bases = Counter((r.source, r.basis) for r in runs)
    for source in sorted(by_source):
        basis = ", ".join(f"{b} {n}" for (s, b), n in sorted(bases.items()) if s == source)
        print(f"  {source:<28} runs {by_source[source]:>5}  timed {timed[source]:>5}  ({basis})")
    print(f"skipped {sum(skipped.values())} rows:")
    for (source, reason), n in sorted(skipped.items()):
        print(f"  {source:<28} {n:>4}  {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
