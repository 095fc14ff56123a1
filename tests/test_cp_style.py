"""Context parallelism in two styles: the ring (keys and values passed around, Megatron-Core's
p2p) and Ulysses (all-to-alls from a sequence split to a head split, DeepSpeed-Ulysses):
volumes pinned to the paper's, the head constraint, the search and the exports."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from parasim.planner.export import export_layout
from parasim.planner.search import search
from parasim.simulator.cost.profile import analytic_profile
from parasim.simulator.errors import SpecError
from parasim.simulator.jobfile import job_from_mapping
from parasim.simulator.predict import predict
from parasim.simulator.step_time import step_context, ulysses_bytes

MHA = {"name": "mha-7b", "num_layers": 32, "hidden_size": 4096, "num_attention_heads": 32,
       "ffn_hidden_size": 11008, "vocab_size": 32000}


def job(parallel: dict, model: dict | None = None, nodes: int = 2, seq: int = 32768):
    raw = {"model": model or MHA, "cluster": {"base": "dgx-h100", "num_nodes": nodes},
           "training": {"seq_length": seq, "global_batch_size": 16},
           "parallel": {"micro_batch_size": 1, **parallel}}
    return job_from_mapping(raw, base_dir=Path("."), source="test")


@pytest.mark.parametrize("cp", [2, 4, 8])
def test_ulysses_moves_4nh_over_p_per_rank_and_layer(cp):
    """DeepSpeed-Ulysses (Jacobs et al. 2023, §3.2): for multi-head attention a layer's
    forward all-to-alls hold q, k, v and the output of the rank's N/P tokens: 4·N·h/P values
    per rank, N = b·s."""
    ctx = step_context(job({"cp": cp, "cp_style": "ulysses"}), analytic_profile())
    qkv, out = ulysses_bytes(ctx)
    n, h, bf16 = 32768, 4096, 2
    assert qkv == 3 * n * h / cp * bf16 and out == n * h / cp * bf16
    assert qkv + out == 4 * n * h / cp * bf16


def test_grouped_kv_heads_below_cp_are_replicated_to_one_per_rank():
    gqa = {**MHA, "name": "gqa", "num_kv_heads": 2}
    ctx = step_context(job({"cp": 8, "cp_style": "ulysses"}, model=gqa), analytic_profile())
    qkv, _ = ulysses_bytes(ctx)
    tokens, dim = 32768 / 8, 128
    assert qkv == tokens * (32 + 8 * 2) * dim * 2  # 32 query heads, 8 (not 2) kv heads x (k, v)


def test_ulysses_needs_whole_heads_per_rank():
    odd = {**MHA, "name": "odd", "num_attention_heads": 24, "hidden_size": 3072}
    with pytest.raises(SpecError, match="ulysses") as err:
        job({"tp": 4, "cp": 8, "cp_style": "ulysses"}, model=odd, nodes=4)
    assert err.value.field == "parallel.cp" and "1, 2, 3, 6" in err.value.valid
    job({"tp": 4, "cp": 8, "cp_style": "ring"}, model=odd, nodes=4)  # the ring: no such limit
    with pytest.raises(SpecError, match="cp_style"):
        job({"cp": 2, "cp_style": "hybrid"})


def test_ulysses_costs_all_to_alls_not_the_ring_and_computes_the_same():
    ring = predict(job({"cp": 8, "cp_style": "ring"}, nodes=1))
    ulysses = predict(job({"cp": 8, "cp_style": "ulysses"}, nodes=1))
    assert ulysses.breakdown.compute_s == pytest.approx(ring.breakdown.compute_s, rel=1e-9)
    assert ulysses.breakdown.cp_comm_s > 0
    assert ulysses.breakdown.cp_comm_s != pytest.approx(ring.breakdown.cp_comm_s)


def test_full_recompute_repeats_the_forward_all_to_alls():
    base = {"cp": 4, "cp_style": "ulysses"}
    none = predict(job({**base, "recompute": "none"}, nodes=1)).breakdown.cp_comm_s
    full = predict(job({**base, "recompute": "full"}, nodes=1)).breakdown.cp_comm_s
    assert full == pytest.approx(none * 3 / 2, rel=1e-6)  # forward 1 + backward 1 -> 1 + 2


def test_the_search_tries_both_styles_and_prunes_ulysses_where_the_ring_is_faster():
    """cp 16 over two nodes at 8k tokens: the ring's transfers cross the nodes faster than
    attention can hide them and Ulysses moves 4·N·h/P against the ring's 2·N·h, so Ulysses
    wins; cp 8 inside one node: the ring hides its transfers, and every Ulysses layout is
    pruned before it is estimated (same memory, slower blocks), counted with its reason."""
    fixed = {"tp": 1, "pp": 1, "micro_batch_size": 1, "zero_stage": 1, "recompute": "full"}
    across = search(job({**fixed, "cp": 16}, seq=8192), {**fixed, "cp": 16}, top=10)
    assert across.chosen.layout.cp_style == "ulysses"
    inside = search(job({**fixed, "cp": 8}, nodes=1), {**fixed, "cp": 8}, top=10)
    assert {s.layout.cp_style for s in inside.ranked} == {"ring"}
    assert any("cp_style ulysses" in reason for reason in inside.rejected)
    alone = search(job({**fixed, "cp": 1}, nodes=1, seq=4096), {**fixed, "cp": 1}, top=10)
    assert {s.layout.cp_style for s in alone.ranked} == {"ring"}


def test_exports_name_ulysses_or_refuse_it():
    ulysses = job({"tp": 1, "cp": 4, "cp_style": "ulysses", "zero_stage": 3})
    assert "--cp-comm-type a2a" in export_layout(ulysses, "megatron")
    assert "--cp-comm-type" not in export_layout(replace(ulysses, layout=replace(
        ulysses.layout, cp_style="ring")), "megatron")
    with pytest.raises(SpecError, match="ulysses") as err:
        export_layout(ulysses, "torchtitan")
    assert "cp_style=ring" in err.value.valid
