"""FLOPs per training step, counted op by op from `simulator.ops`.

Model FLOPs are what the model needs (forward + backward = 3 x forward); hardware FLOPs add
the forward work that activation recomputation repeats. MFU = model FLOPs / (time · peak);
HFU = hardware FLOPs / (time · peak) (Korthikanti et al. 2022, "Reducing Activation
Recomputation in Large Transformer Models", §6.3; Chowdhery et al. 2022, PaLM, Appendix B).
"""

from __future__ import annotations

from dataclasses import replace

from simulator.layout import Recompute
from simulator.model import ModelSpec
from simulator.ops import Shard, block_ops, core_attention_ops, forward_flop, head_ops
from simulator.params import block_kinds
from simulator.training import TrainingSpec

BACKWARD_FACTOR = 2  # a GEMM's backward computes the input and the weight gradient: 2 x forward


def _sequence_shard(training: TrainingSpec) -> Shard:
    return Shard(micro_batch=1, seq_length=training.seq_length)


def forward_flop_per_sequence(model: ModelSpec, training: TrainingSpec) -> tuple[float, float, float]:
    """(blocks, core attention inside them, LM head) forward FLOPs for one sequence."""
    shard = _sequence_shard(training)
    n_dense, n_moe = block_kinds(model, 0, model.num_layers)
    blocks = attention = 0.0
    for count, moe in ((n_dense, False), (n_moe, True)):
        if count:
            ops = block_ops(model, shard, moe)
            blocks += count * forward_flop(ops)
            attention += count * forward_flop(core_attention_ops(ops))
    return blocks, attention, forward_flop(head_ops(model, shard))


def model_flop_per_step(model: ModelSpec, training: TrainingSpec) -> float:
    """3 x forward FLOPs of the whole model over the global batch (no recompute, no padding)."""
    blocks, _, head = forward_flop_per_sequence(replace(model, capacity_factor=None), training)
    return (1 + BACKWARD_FACTOR) * (blocks + head) * training.global_batch_size


def recompute_flop_per_step(model: ModelSpec, training: TrainingSpec, recompute: Recompute) -> float:
    """Forward work repeated in the backward pass: every block (full) or the core attention
    alone (selective, Korthikanti et al. 2022 §5); the LM head is never recomputed."""
    if recompute == "none":
        return 0.0
    blocks, attention, _ = forward_flop_per_sequence(model, training)
    return (blocks if recompute == "full" else attention) * training.global_batch_size


def hardware_flop_per_step(model: ModelSpec, training: TrainingSpec, recompute: Recompute) -> float:
    """Model FLOPs, with expert capacity padding, plus recomputation."""
    blocks, _, head = forward_flop_per_sequence(model, training)
    executed = (1 + BACKWARD_FACTOR) * (blocks + head) * training.global_batch_size
    return executed + recompute_flop_per_step(model, training, recompute)


def narayanan_flop_per_step(batch: int, seq: int, layers: int, hidden: int, vocab: int) -> float:
    """Closed form for GPT models with full recompute (Narayanan et al. 2021, eq. 3):
    96·B·s·l·h²·(1 + s/(6h) + V/(16·l·h))."""
    return 96 * batch * seq * layers * hidden**2 * (
        1 + seq / (6 * hidden) + vocab / (16 * layers * hidden))
