"""FLOPs per training step, counted op by op from `simulator.ops`.

Model FLOPs are what the model needs (forward + backward = 3 x forward); hardware FLOPs add
the forward work that activation recomputation repeats. MFU = model FLOPs / (time · peak);
HFU = hardware FLOPs / (time · peak) (Korthikanti et al. 2022, "Reducing Activation
Recomputation in Large Transformer Models", §6.3; Chowdhery et al. 2022, PaLM, Appendix B).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from parasim.simulator.layout import Recompute
from parasim.simulator.model import ModelSpec
from parasim.simulator.ops import Shard, block_ops, core_attention_ops, forward_flop, head_ops
from parasim.simulator.params import BlockGroup, block_groups
from parasim.simulator.training import TrainingSpec

BACKWARD_FACTOR = 2  # a GEMM's backward computes the input and the weight gradient: 2 x forward


def _sequence_shard(training: TrainingSpec) -> Shard:
    return Shard(micro_batch=1, seq_length=training.seq_length)


def block_forward_flop(model: ModelSpec, training: TrainingSpec, moe: bool) -> tuple[float, float]:
    """(whole block, its core attention) forward FLOPs of one dense or MoE block, one sequence."""
    ops = block_ops(model, _sequence_shard(training), moe)
    return forward_flop(ops), forward_flop(core_attention_ops(ops))


def model_flop_per_step(model: ModelSpec, training: TrainingSpec) -> float:
    """3 x forward FLOPs of the whole model over the global batch (no recompute, no padding)."""
    return _executed_flop_per_step(replace(model, capacity_factor=None), training)


def _executed_flop_per_step(model: ModelSpec, training: TrainingSpec) -> float:
    blocks = sum(g.count * block_forward_flop(model, training, g.moe)[0]
                 for g in block_groups(model, 0, model.num_layers, "none"))
    head = forward_flop(head_ops(model, _sequence_shard(training)))
    return (1 + BACKWARD_FACTOR) * (blocks + head) * training.global_batch_size


def recompute_flop_per_step(model: ModelSpec, training: TrainingSpec,
                            blocks: Iterable[BlockGroup]) -> float:
    """Forward work repeated in the backward pass: the whole block (full) or its core attention
    alone (selective, Korthikanti et al. 2022 §5), for each group of blocks; the LM head is
    never recomputed."""
    repeated = 0.0
    for group in blocks:
        if group.recompute != "none":
            whole, attention = block_forward_flop(model, training, group.moe)
            repeated += group.count * (whole if group.recompute == "full" else attention)
    return repeated * training.global_batch_size


def hardware_flop_per_step(model: ModelSpec, training: TrainingSpec,
                           blocks: Iterable[BlockGroup]) -> float:
    """Model FLOPs, with expert capacity padding, plus the recomputation of `blocks` (every
    block of the model, each group with its recompute mode)."""
    return _executed_flop_per_step(model, training) + recompute_flop_per_step(model, training, blocks)


def uniform_blocks(model: ModelSpec, recompute: Recompute) -> tuple[BlockGroup, ...]:
    """Every block of the model under one recompute mode."""
    return block_groups(model, 0, model.num_layers, recompute)


def narayanan_flop_per_step(batch: int, seq: int, layers: int, hidden: int, vocab: int) -> float:
    """Closed form for GPT models with full recompute (Narayanan et al. 2021, eq. 3):
    96·B·s·l·h²·(1 + s/(6h) + V/(16·l·h))."""
    return 96 * batch * seq * layers * hidden**2 * (
        1 + seq / (6 * hidden) + vocab / (16 * layers * hidden))
