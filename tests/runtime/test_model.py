"""runtime.model against naive oracles, in one process: chunks compose to the whole model,
attention equals softmax(q kᵀ/√d + causal mask) v with repeated key/value heads, the MoE layer
equals a per-token loop over its experts, initialisation is a function of (seed, name).

Tolerances: fp32, rtol 1e-5 / atol 1e-6 where the oracle computes the same function another
way (different summation order: a few ulps); exact equality where the same operations run."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)  # tiny tensors; a 2nd thread only spins against other processes

import torch.nn.functional as F  # noqa: E402

from parasim.runtime.model import MoE, build_chunk, build_model, capacity_keep, rotary  # noqa: E402
from parasim.simulator.errors import SpecError  # noqa: E402
from parasim.simulator.model import MLASpec  # noqa: E402
from tests.runtime.oracle import gpt, llama, moe  # noqa: E402

CLOSE = {"rtol": 1e-5, "atol": 1e-6}


def tokens(spec, batch: int = 2, seq: int = 12, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, spec.vocab_size, (batch, seq), generator=generator)
    return ids, torch.arange(seq)[None].expand(batch, seq)


@pytest.mark.parametrize("spec", [gpt(), llama(), moe()], ids=["gpt", "llama", "moe"])
def test_chunks_compose_to_the_whole_model(spec):
    """Stage chunks built separately hold the same weights and compute the same logits."""
    ids, positions = tokens(spec)
    whole = build_model(spec, seed=3)
    first = build_chunk(spec, layers=range(0, 1), has_embedding=True, has_head=False, seed=3)
    last = build_chunk(spec, layers=range(1, 2), has_embedding=False, has_head=True, seed=3)
    torch.testing.assert_close(last(first(ids, positions), positions), whole(ids, positions),
                               rtol=0, atol=0)
    assert torch.equal(last.head.weight, whole.head.weight)  # tied: the embedding's init


def test_initialisation_is_a_function_of_seed_and_name():
    spec = llama()
    a, b, c = build_model(spec, seed=1), build_model(spec, seed=1), build_model(spec, seed=2)
    for (name, x), y, z in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(x, y), name
        if "norm" not in name:
            assert not torch.equal(x, z), name
    out_std = a.blocks["0"].attn.out.weight.std().item()
    assert out_std == pytest.approx(0.02 / math.sqrt(2 * spec.num_layers), rel=0.2)


def naive_attention(q, k, v):
    """softmax(q kᵀ/√d + causal mask) v with each key/value head repeated for its group."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    mask = torch.ones(scores.shape[-2:], dtype=torch.bool).triu(1)
    return torch.softmax(scores.masked_fill(mask, float("-inf")), -1) @ v


@pytest.mark.parametrize("kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
def test_attention_equals_naive_attention(kv_heads):
    spec = llama(num_kv_heads=kv_heads, qk_norm=True, qkv_bias=True)
    attention = build_model(spec, seed=0).blocks["0"].attn
    x = torch.randn(2, 12, spec.hidden_size)
    positions = torch.arange(12)[None].expand(2, 12)
    q = rotary(attention._heads(attention.q(x), attention.q_norm, None), positions)
    k = rotary(attention._heads(attention.k(x), attention.k_norm, None), positions)
    v = attention._heads(attention.v(x), None, None)
    expected = attention.out(naive_attention(q, k, v).transpose(1, 2).flatten(2))
    torch.testing.assert_close(attention(x, positions), expected, **CLOSE)


def test_rotary_rotates_pairs_by_position_angles():
    """RoPE keeps norms and makes q·k depend only on the position difference."""
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    def dot(i, j):
        return (rotary(q, torch.tensor([[i]])) * rotary(k, torch.tensor([[j]]))).sum()
    torch.testing.assert_close(dot(5, 3), dot(9, 7), **CLOSE)
    torch.testing.assert_close(rotary(q, torch.tensor([[7]])).norm(), q.norm(), **CLOSE)


def test_model_is_causal_and_starts_near_uniform():
    spec = gpt()
    model = build_model(spec, seed=0)
    ids, positions = tokens(spec)
    changed = ids.clone()
    changed[:, 8:] = (changed[:, 8:] + 1) % spec.vocab_size
    logits = model(ids, positions)
    torch.testing.assert_close(model(changed, positions)[:, :8], logits[:, :8], rtol=0, atol=0)
    labels, _ = tokens(spec, seed=1)
    loss = model.loss(logits, labels).item()
    assert loss == pytest.approx(math.log(spec.vocab_size), rel=0.05)


def naive_moe(layer: MoE, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Σ over each token's top-k experts of weight·expert(token) (+ shared), token by token."""
    flat = x.flatten(0, -2)
    experts = layer.experts
    out = torch.zeros_like(flat)
    for t, token in enumerate(flat):
        top, chosen = layer.router(token).topk(layer.top_k)
        for slot, (weight, e) in enumerate(zip(torch.softmax(top, -1), chosen.tolist())):
            if keep is not None and not keep[t * layer.top_k + slot]:
                continue
            hidden = F.silu(experts.gate[e] @ token) * (experts.up[e] @ token)
            out[t] += weight * (experts.down[e] @ hidden)
    if layer.shared is not None:
        out = out + layer.shared(flat)
    return out.view_as(x)


def test_moe_equals_a_per_token_loop():
    layer = build_model(moe(), seed=0).blocks["1"].mlp
    assert isinstance(layer, MoE)
    x = torch.randn(2, 6, 32)
    torch.testing.assert_close(layer(x), naive_moe(layer, x), **CLOSE)


def test_capacity_drops_the_latecomers_of_each_expert():
    experts = torch.tensor([0, 1, 0, 0, 2, 0, 1, 1])  # token-major assignments
    keep = capacity_keep(experts, num_experts=3, capacity=2)
    assert keep.tolist() == [True, True, True, False, True, False, True, False]


def test_moe_with_capacity_equals_the_loop_without_the_dropped():
    layer = build_model(moe(capacity_factor=0.5), seed=0).blocks["1"].mlp
    x = torch.randn(2, 6, 32)
    flat = x.flatten(0, -2)
    _, chosen = layer.router(flat).topk(layer.top_k)
    capacity = math.ceil(0.5 * flat.shape[0] * layer.top_k / layer.num_experts)
    keep = capacity_keep(chosen.flatten(), layer.num_experts, capacity)
    assert not keep.all()
    torch.testing.assert_close(layer(x), naive_moe(layer, x, keep), **CLOSE)


def test_mla_is_rejected_with_a_spec_error():
    mla = MLASpec(q_lora_rank=0, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4,
                  v_head_dim=8)
    with pytest.raises(SpecError) as error:
        build_model(llama(mla=mla))
    assert error.value.field == "model.mla" and "MLA" in str(error.value)
