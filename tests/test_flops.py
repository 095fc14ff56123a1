"""FLOP counts pinned to Narayanan et al. 2021."""

from __future__ import annotations

import pytest

from parasim.simulator.flops import (
    hardware_flop_per_step,
    model_flop_per_step,
    narayanan_flop_per_step,
    uniform_blocks,
)
from parasim.simulator.params import BlockGroup
from parasim.simulator.training import TrainingSpec
from tests.builders import gpt


def test_gpt3_175b_matches_narayanan_closed_form():
    """Narayanan et al. 2021 eq. 3 counts full recompute: 4 forward passes of every block
    (forward, recompute, backward = 2 forwards) and 3 of the LM head. Our op-by-op count with
    full recompute agrees exactly for GPT-3: both count only the GEMMs (QKV, attention output,
    two MLP, the LM head) and the two s x s attention products over the full square. The
    count would differ (and the closed form be wrong) for GQA, SwiGLU, untied embeddings or
    MoE; biases, norms, softmax and embedding lookups are not matmul FLOPs in either."""
    model = gpt(layers=96, hidden=12288, heads=96, vocab=50257)
    training = TrainingSpec(seq_length=2048, global_batch_size=1536)
    ours = hardware_flop_per_step(model, training, uniform_blocks(model, "full"))
    closed = narayanan_flop_per_step(1536, 2048, 96, 12288, 50257)
    assert ours == pytest.approx(closed, rel=0.01)


def test_model_flops_are_three_forwards_and_exclude_recompute():
    model = gpt(layers=24, hidden=2048, heads=16)
    training = TrainingSpec(seq_length=2048, global_batch_size=8)
    model_flop = model_flop_per_step(model, training)
    assert hardware_flop_per_step(model, training, uniform_blocks(model, "none")) == pytest.approx(model_flop)
    full = hardware_flop_per_step(model, training, uniform_blocks(model, "full"))
    selective = hardware_flop_per_step(model, training, uniform_blocks(model, "selective"))
    assert model_flop < selective < full
    # 72·B·s·l·h²·(1 + s/(6h)) + 6·B·s·h·V: the no-recompute closed form (3/4 of the blocks')
    b, s, l, h, v = 8, 2048, 24, 2048, 51200
    assert model_flop == pytest.approx(72 * b * s * l * h * h * (1 + s / (6 * h)) + 6 * b * s * h * v)


def test_per_block_recompute_adds_one_forward_per_full_block():
    """The first 6 of 24 blocks in full, the rest selective: a quarter of the full
    recomputation plus three quarters of the selective one."""
    model = gpt(layers=24, hidden=2048, heads=16)
    training = TrainingSpec(seq_length=2048, global_batch_size=8)
    base = model_flop_per_step(model, training)
    full = hardware_flop_per_step(model, training, uniform_blocks(model, "full")) - base
    selective = hardware_flop_per_step(model, training, uniform_blocks(model, "selective")) - base
    mixed = hardware_flop_per_step(model, training, [BlockGroup(6, False, "full"),
                                                     BlockGroup(18, False, "selective")]) - base
    assert mixed == pytest.approx(full / 4 + selective * 3 / 4)


def test_six_n_d_rule_for_long_models():
    """Kaplan et al. 2020: training FLOPs ~ 6·N·D when s << 6h (non-embedding N)."""
    model = gpt(layers=48, hidden=8192, heads=64)
    training = TrainingSpec(seq_length=256, global_batch_size=64)
    n = 12 * 48 * 8192**2
    six_nd = 6 * n * 256 * 64
    blocks_only = model_flop_per_step(model, training) - 6 * 256 * 64 * 8192 * 51200
    assert blocks_only == pytest.approx(six_nd, rel=0.01)
