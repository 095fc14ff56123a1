"""Memory model pinned to the ZeRO paper and to Korthikanti et al. 2022, Table 2."""

from __future__ import annotations

import pytest

from parasim.simulator.layout import Layout
from parasim.simulator.memory import block_activation_bytes, in_flight_microbatches, model_states
from parasim.simulator.ops import Shard
from parasim.simulator.training import TrainingSpec
from tests.builders import gpt


@pytest.mark.parametrize("stage, published_gb", [(0, 120), (1, 31.4), (2, 16.6), (3, 1.9)])
def test_zero_paper_example(stage, published_gb):
    """Rajbhandari et al. 2020, Figure 1: 7.5B parameters, 64 GPUs, mixed-precision Adam
    (fp16 weights and gradients, K = 12)."""
    fp16 = TrainingSpec(seq_length=1024, global_batch_size=64, precision="fp16")
    states = model_states(7.5e9, fp16, stage, 64)
    assert round(states.total_bytes / 1e9, 1) == published_gb


def test_megatron_bf16_keeps_fp32_gradients():
    """Megatron-LM's distributed-optimizer table: bf16 weights with fp32 gradients cost
    6 + 12/d bytes per parameter (docs of megatron/core/optimizer/distrib_optimizer)."""
    bf16 = TrainingSpec(seq_length=1024, global_batch_size=64)
    d = 8
    assert model_states(1.0, bf16, 1, d).total_bytes == pytest.approx(6 + 12 / d)
    assert model_states(1.0, bf16, 0, d).total_bytes == pytest.approx(18)


# Korthikanti et al. 2022, Table 3: the models they measured (a, h, L, t, s), b = 1.
KORTHIKANTI_MODELS = {
    "22B": (64, 6144, 8),
    "175B": (96, 12288, 8),
    "530B": (128, 20480, 8),
    "1T": (160, 25600, 8),
}
S, B = 2048, 1


def _table2(a, h, t):
    """Korthikanti et al. 2022, Table 2: activation bytes per layer."""
    sbh = S * B * h
    return {
        ("none", 1, False): sbh * (34 + 5 * a * S / h),
        ("none", t, False): sbh * (10 + 24 / t + 5 * a * S / (h * t)),
        ("none", t, True): sbh * (34 / t + 5 * a * S / (h * t)),
        ("selective", t, False): sbh * (10 + 24 / t),
        ("selective", t, True): sbh * 34 / t,
        ("full", t, False): sbh * 2,
    }


@pytest.mark.parametrize("name", KORTHIKANTI_MODELS)
def test_activations_match_korthikanti_table2(name):
    a, h, t = KORTHIKANTI_MODELS[name]
    model = gpt(layers=1, hidden=h, heads=a)
    for (recompute, tp, sp), expected in _table2(a, h, t).items():
        shard = Shard(micro_batch=B, seq_length=S, tp=tp, sequence_parallel=sp,
                      flash_attention=False)
        got = block_activation_bytes(model, shard, moe=False, recompute=recompute)
        assert got == pytest.approx(expected, rel=1e-12), (recompute, tp, sp)


def test_flash_attention_drops_the_quadratic_term():
    model = gpt(layers=1, hidden=4096, heads=32)
    plain = Shard(micro_batch=1, seq_length=8192, flash_attention=False)
    flash = Shard(micro_batch=1, seq_length=8192, flash_attention=True)
    with_s2 = block_activation_bytes(model, plain, False, "none")
    without = block_activation_bytes(model, flash, False, "none")
    sbh = 8192 * 4096
    assert with_s2 - without == pytest.approx(5 * 32 * 8192 * 8192 - 4 * 8192 * 32)
    assert without == pytest.approx(34 * sbh + 4 * 8192 * 32)


def test_context_parallel_splits_activations():
    model = gpt(layers=1, hidden=4096, heads=32)
    one = block_activation_bytes(model, Shard(micro_batch=1, seq_length=8192), False, "none")
    two = block_activation_bytes(model, Shard(micro_batch=1, seq_length=8192, cp=2), False, "none")
    assert two == pytest.approx(one / 2)


@pytest.mark.parametrize("schedule, vpp, expected", [
    ("gpipe", 1, [16, 16, 16, 16]),
    ("1f1b", 1, [4, 3, 2, 1]),
    ("zero-bubble", 1, [4, 3, 2, 1]),
    # Megatron-LM interleaved: 2(pp-r-1) + (vpp-1)pp + 1 chunks of 1/vpp of the rank's layers
    ("interleaved", 2, [(6 + 4 + 1) / 2, (4 + 4 + 1) / 2, (2 + 4 + 1) / 2, (0 + 4 + 1) / 2]),
])
def test_in_flight_microbatches(schedule, vpp, expected):
    layout = Layout(pp=4, vpp=vpp, schedule=schedule, dp=1)
    assert [in_flight_microbatches(layout, r, 16) for r in range(4)] == expected


def test_interleaved_first_rank_matches_korthikanti():
    """Korthikanti et al. §4.2.3: the first stage holds p·(1 + (p-1)/(p·v)) micro-batches."""
    p, v = 8, 4
    layout = Layout(pp=p, vpp=v, schedule="interleaved", dp=1)
    assert in_flight_microbatches(layout, 0, 64) == pytest.approx(p * (1 + (p - 1) / (p * v)))


def test_in_flight_is_capped_by_the_microbatches():
    layout = Layout(pp=8, dp=1)
    assert in_flight_microbatches(layout, 0, 3) == 3
