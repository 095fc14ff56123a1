"""Shrink a job to sizes a 2-core CPU trains in well under a second per step, keeping what the
parallel layout acts on. Pure (no torch).

The runtime validates a plan locally by running it on a model of the same family with the same
layout: every tensor, expert, context and pipeline split, schedule and collective of the real
run happens, on small tensors. The rule, for a resolved job (layout checked against the model):

Model (`shrink_model`)
- head width 8, less (even, >= 2: rotary embeddings) where the heads are many, so that
  hidden <= 256; set explicitly when the spec sets `head_dim`;
- key/value heads: when tp <= kv heads, the smallest multiple of tp that is >= min(kv, 2)
  (so GQA keeps several groups and tp still divides them); when tp > kv heads (kv heads
  replicated over tp), kept; query heads = kv heads x the original queries-per-kv ratio, so
  MHA, GQA and MQA stay what they are; hidden = query heads x head width;
- dense, expert and shared-expert ffn widths: the original ratio to hidden, rounded up to a
  multiple of tp;
- experts: min(E, 4) rounded up to a multiple of ep; top-k: min(k, 2, experts); shared
  experts min(n, 1); leading dense layers min(n, 1) (and fewer than the layers);
- layers: one per virtual stage (pp·vpp), at least 2 (at least one MoE layer after the dense
  one); with explicit `stages`, each stage keeps its size relative to the smallest stage
  (rounded, at least 1), so an uneven split stays uneven; per-stage full recompute keeps each
  stage's fraction of fully recomputed blocks (rounded);
- vocabulary min(V, 256) rounded up to a multiple of tp (the runtime splits it evenly); learned
  position tables as long as the shrunk sequence; MLA ranks and widths 16/8/4 (kept as MLA;
  the runtime itself rejects MLA);
- every flag (activation, norm, biases, qk-norm, tied embeddings, capacity factor, ...) kept.

Training (`shrink_training`) and layout (`shrink_layout`)
- sequence: the smallest multiple of lcm(2·cp·(tp if sequence parallel else 1), 8) that is
  >= 32 (load-balanced context chunks, sequence-parallel shards);
- micro-batch size min(b, 2); micro-batches per step min(m, 2·pp), a multiple of pp for the
  interleaved schedule; global batch = micro-batch size x dp x micro-batches;
- `tokens` dropped (a whole-run estimate means nothing for the shrunk job).
"""

from __future__ import annotations

import math
from dataclasses import replace

from parasim.simulator.job import Job, num_microbatches, resolve_layout
from parasim.simulator.layout import Layout
from parasim.simulator.model import MLASpec, ModelSpec
from parasim.simulator.training import TrainingSpec

HEAD_DIM = 8
MAX_HIDDEN = 256
MIN_KV_HEADS = 2
MAX_EXPERTS = 4
MAX_TOP_K = 2
MAX_VOCAB = 256
MIN_SEQUENCE = 32
SEQUENCE_MULTIPLE = 8
MAX_MICRO_BATCH = 2
MICROBATCHES_PER_STAGE = 2
SMALL_MLA = MLASpec(q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4,
                    v_head_dim=8)


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _kv_heads(model: ModelSpec, tp: int) -> int:
    kv = model.kv_heads
    if tp > kv:
        return kv
    return round_up(min(kv, MIN_KV_HEADS), tp)


def _width(original: int, model: ModelSpec, hidden: int, tp: int) -> int:
    """`original` (a width in units of model.hidden_size) at the shrunk hidden size."""
    if original == 0:
        return 0
    return round_up(max(1, round(original * hidden / model.hidden_size)), tp)


def shrink_stages(layout: Layout) -> tuple[int, ...] | None:
    """Explicit stage sizes relative to the smallest stage (rounded, >= 1)."""
    if layout.stages is None:
        return None
    smallest = min(layout.stages)
    return tuple(max(1, round(n / smallest)) for n in layout.stages)


def _num_layers(layout: Layout) -> int:
    stages = shrink_stages(layout)
    return sum(stages) if stages is not None else max(layout.num_virtual_stages, 2)


def _moe_fields(model: ModelSpec, hidden: int, layout: Layout, layers: int) -> dict:
    if not model.is_moe:
        return {}
    experts = round_up(min(model.num_experts, MAX_EXPERTS), layout.ep)
    return dict(num_experts=experts,
                experts_per_token=min(model.experts_per_token, MAX_TOP_K, experts),
                moe_ffn_hidden_size=_width(model.moe_ffn_hidden_size, model, hidden, layout.tp),
                num_shared_experts=min(model.num_shared_experts, 1),
                shared_expert_ffn_hidden_size=_width(model.shared_expert_ffn_hidden_size,
                                                     model, hidden, layout.tp),
                first_dense_layers=min(model.first_dense_layers, 1, layers - 1))


def shrink_model(model: ModelSpec, layout: Layout, seq_length: int) -> ModelSpec:
    """The model at runtime-test size under `layout` (see the module docstring)."""
    kv = _kv_heads(model, layout.tp)
    heads = kv * (model.num_attention_heads // model.kv_heads)
    head_dim = max(2, min(HEAD_DIM, MAX_HIDDEN // heads // 2 * 2))
    hidden = heads * head_dim
    layers = _num_layers(layout)
    fields = dict(
        name=f"{model.name}-shrunk", num_layers=layers, hidden_size=hidden,
        num_attention_heads=heads,
        num_kv_heads=None if model.num_kv_heads is None else kv,
        head_dim=None if model.head_dim is None else head_dim,
        ffn_hidden_size=_width(model.ffn_hidden_size, model, hidden, layout.tp),
        vocab_size=round_up(min(model.vocab_size, MAX_VOCAB), layout.tp),
        max_position_embeddings=seq_length if model.position_embedding == "learned"
        else model.max_position_embeddings,
        mla=None if model.mla is None else replace(
            SMALL_MLA, q_lora_rank=SMALL_MLA.q_lora_rank if model.mla.q_lora_rank else 0),
        **_moe_fields(model, hidden, layout, layers))
    return replace(model, **fields)


def shrink_sequence(layout: Layout) -> int:
    unit = math.lcm(2 * layout.cp * (layout.tp if layout.sequence_parallel else 1),
                    SEQUENCE_MULTIPLE)
    return round_up(MIN_SEQUENCE, unit)


def shrink_layout(layout: Layout) -> Layout:
    """Micro-batch and stage sizes at test size; per-stage full recompute is set by
    `shrink_job`, which knows the stages' sizes before and after."""
    return replace(layout, micro_batch_size=min(layout.micro_batch_size, MAX_MICRO_BATCH),
                   stages=shrink_stages(layout), full_recompute_layers=None)


def shrink_full_recompute(job: Job, small: Job) -> tuple[int, ...] | None:
    """Each stage's fully recomputed blocks, the same fraction of its (shrunk) blocks."""
    counts = job.layout.full_recompute_layers
    if counts is None:
        return None
    return tuple(round(n / old * new) for n, old, new in
                 zip(counts, job.stage_layers, small.stage_layers))


def _microbatches(training: TrainingSpec, layout: Layout) -> int:
    kept = min(num_microbatches(training, layout), MICROBATCHES_PER_STAGE * layout.pp)
    if layout.schedule == "interleaved":
        return layout.pp * max(1, kept // layout.pp)
    return kept


def shrink_training(training: TrainingSpec, layout: Layout) -> TrainingSpec:
    """Sequence and batch at test size for the resolved `layout` (before shrinking it)."""
    small = shrink_layout(layout)
    batch = small.micro_batch_size * layout.dp * _microbatches(training, layout)
    return replace(training, seq_length=shrink_sequence(layout), global_batch_size=batch,
                   tokens=None)


def shrink_job(job: Job) -> Job:
    """The whole job shrunk; its layout is re-resolved against the shrunk model and batch
    (a SpecError here would be a bug of these rules)."""
    assert job.layout is not None and job.layout.dp is not None, "resolve the layout first"
    training = shrink_training(job.training, job.layout)
    model = shrink_model(job.model, job.layout, training.seq_length)
    layout = resolve_layout(model, job.cluster, training, shrink_layout(job.layout))
    small = replace(job, model=model, training=training, layout=layout)
    return replace(small, layout=replace(layout, full_recompute_layers=shrink_full_recompute(
        job, small)))
