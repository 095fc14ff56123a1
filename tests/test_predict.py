"""The first time model: components add up, closed forms hold, effects point the right way."""

from __future__ import annotations

from pathlib import Path

import pytest

from parasim.simulator.errors import SpecError
from parasim.simulator.jobfile import job_from_mapping
from parasim.simulator.predict import predict

CLUSTER = {
    "gpu": "h100-sxm", "gpus_per_node": 8,
    "intra_node": {"bandwidth_GBps": 450, "latency_us": 3},
    "inter_node": {"bandwidth_Gbps": 400, "nics_per_node": 8, "latency_us": 5},
}
MODEL = {"name": "llama-like-8b", "num_layers": 32, "hidden_size": 4096, "num_attention_heads": 32,
         "num_kv_heads": 8, "ffn_hidden_size": 14336, "vocab_size": 128256}


def job(parallel: dict, nodes: int = 4, model: dict | None = None, **training):
    raw = {"model": model or MODEL, "cluster": {**CLUSTER, "num_nodes": nodes},
           "training": {"seq_length": 4096, "global_batch_size": 256, **training},
           "parallel": parallel}
    return job_from_mapping(raw, base_dir=Path("."), source="test")


def test_breakdown_sums_to_step_time():
    p = predict(job({"tp": 4, "pp": 2, "recompute": "selective", "zero_stage": 1}))
    assert sum(p.breakdown.as_dict().values()) == pytest.approx(p.step_time_s, rel=1e-12)
    assert p.to_json()["step_time_s"] == p.step_time_s


def test_the_busiest_stage_sets_the_pace():
    """The LM head of a 128k vocabulary makes the last stage the busiest: the breakdown is
    its work, and it only waits for the pipeline to fill, less than the closed form (pp-1)/m
    of its own micro-batch time (equal stages would wait that long at both ends)."""
    p = predict(job({"tp": 2, "pp": 4}))
    b = p.breakdown
    busy = b.compute_s + b.tp_comm_s + b.cp_comm_s + b.ep_comm_s
    assert 0 < b.bubble_s < busy * 3 / p.microbatches


def test_zero_bubble_beats_1f1b():
    plain = predict(job({"tp": 2, "pp": 4}))
    zb = predict(job({"tp": 2, "pp": 4, "schedule": "zero-bubble"}))
    assert zb.breakdown.bubble_s < plain.breakdown.bubble_s  # the head-heavy last stage
    assert zb.step_time_s < plain.step_time_s  # still dominates: see test_schedule for equal
    assert zb.stages == plain.stages  # stages; ZB-H1 keeps 1F1B's memory


def test_no_pipeline_no_bubble_no_p2p():
    p = predict(job({"tp": 8}))
    assert p.breakdown.bubble_s == 0 and p.breakdown.pp_comm_s == 0


def test_tp_across_nodes_costs_more_than_inside():
    inside = predict(job({"tp": 8}))
    across = predict(job({"tp": 8, "order": "dp-tp-cp-pp"}))
    # tp=8 behind dp=4: two members per node, so the all-reduces cross the NICs
    assert across.breakdown.tp_comm_s > 2 * inside.breakdown.tp_comm_s


def test_recompute_trades_time_for_memory():
    base = {"tp": 4, "pp": 2}
    none, sel, full = (predict(job({**base, "recompute": r})) for r in ("none", "selective", "full"))
    assert full.step_time_s > sel.step_time_s >= none.step_time_s
    peak = [p.peak_stage.activations_bytes for p in (none, sel, full)]
    assert peak[2] < peak[1] <= peak[0]
    assert full.hfu > full.mfu


def test_zero_stages_shrink_model_states():
    states = [predict(job({"tp": 2, "zero_stage": z})).peak_stage for z in range(4)]
    totals = [s.weights_bytes + s.gradients_bytes + s.optimizer_bytes for s in states]
    assert totals == sorted(totals, reverse=True)


def test_first_stage_holds_most_activations_under_1f1b():
    p = predict(job({"tp": 2, "pp": 4}))
    acts = [s.activations_bytes for s in p.stages]
    assert acts[0] > acts[1] > acts[2]


def test_does_not_fit_is_reported():
    p = predict(job({"tp": 1}, nodes=1))
    assert not p.fits  # 8B with fp32 grads and Adam unsharded: 18 bytes/param > 80 GB
    assert predict(job({"tp": 1, "zero_stage": 3}, nodes=1)).fits


def test_mfu_matches_the_definition():
    p = predict(job({"tp": 4}))
    peak = 32 * 989.4e12
    assert p.mfu == pytest.approx(p.model_flop_per_step / p.step_time_s / peak, rel=1e-3)


def test_whole_run_time():
    p = predict(job({"tp": 4}, tokens=1e9))
    assert p.run.steps == -(-1_000_000_000 // (4096 * 256))
    assert p.run.time_s == pytest.approx(p.run.steps * p.step_time_s)
    assert p.run.gpu_hours == pytest.approx(p.run.wall_time_s / 3600 * 32)  # paid: with failures
    assert p.run.time_s < p.run.wall_time_s


def test_mixed_cluster_paces_on_the_slower_gpu():
    a100 = {**CLUSTER, "gpu": "a100-80gb", "num_nodes": 2,
            "intra_node": {"bandwidth_GBps": 300, "latency_us": 3},
            "inter_node": {"bandwidth_Gbps": 200, "nics_per_node": 8, "latency_us": 5}}
    h100 = {**CLUSTER, "num_nodes": 2}
    raw = {"model": MODEL, "cluster": {"node_groups": [h100, a100]},
           "training": {"seq_length": 4096, "global_batch_size": 256},
           "parallel": {"tp": 8, "pp": 2}}
    mixed = job_from_mapping(raw, base_dir=Path("."), source="test")
    p = predict(mixed)
    only_h100 = predict(job({"tp": 8, "pp": 2}))
    assert p.step_time_s > only_h100.step_time_s
    assert p.peak_flop_per_s == pytest.approx(16 * 989.4e12 + 16 * 312e12, rel=1e-3)


def test_moe_expert_parallel_splits_expert_memory_and_adds_all_to_all():
    moe = {**MODEL, "name": "moe", "num_experts": 8, "experts_per_token": 2,
           "moe_ffn_hidden_size": 14336}
    ep1 = predict(job({"tp": 2}, model=moe))
    ep4 = predict(job({"tp": 2, "ep": 4}, model=moe))
    assert ep4.breakdown.ep_comm_s > 0 == ep1.breakdown.ep_comm_s
    assert ep4.peak_stage.weights_bytes < ep1.peak_stage.weights_bytes / 2
    assert ep1.params_active < ep1.params_total


def test_moe_dispatch_moves_the_tp_shard_over_ep_and_k_copies_over_tp():
    """Megatron-Core's all-to-all dispatcher with tp and sequence parallelism: each tp rank
    sends its s/tp tokens' k copies over ep (bytes b·s·k·h/tp), and the MoE half of a block
    all-gathers and reduce-scatters k times the dense MLP's tp bytes."""
    from parasim.simulator.cost.profile import analytic_profile
    from parasim.simulator.step_time import message_bytes, step_context
    moe = {**MODEL, "name": "moe", "num_experts": 8, "experts_per_token": 2,
           "moe_ffn_hidden_size": 14336}
    sp = job({"tp": 4, "ep": 4, "sequence_parallel": True}, model=moe)
    tokens_hidden_bytes = 4096 * 4096 * 2  # micro-batch 1, seq 4096, h 4096, bf16
    assert message_bytes(step_context(sp, analytic_profile()), "ep") == pytest.approx(tokens_hidden_bytes * 2 / 4)
    no_sp = job({"tp": 4, "ep": 4, "sequence_parallel": False}, model=moe)
    assert message_bytes(step_context(no_sp, analytic_profile()), "ep") == pytest.approx(tokens_hidden_bytes * 2)
    def tp_comm_s(k: int | None) -> float:
        model = MODEL if k is None else {**moe, "experts_per_token": k}
        return predict(job({"tp": 4, "sequence_parallel": True}, model=model)).breakdown.tp_comm_s
    # one routed copy moves the dense MLP's bytes; each further copy adds the same again
    assert tp_comm_s(1) == pytest.approx(tp_comm_s(None), rel=1e-9)
    assert tp_comm_s(3) - tp_comm_s(2) == pytest.approx(tp_comm_s(2) - tp_comm_s(1), rel=1e-6)
    assert tp_comm_s(2) > tp_comm_s(1)


def test_full_recompute_of_half_the_blocks_lies_halfway():
    """16 of 32 blocks recomputed in full (the first 8 of each stage, Megatron-LM's block
    method): the recomputed FLOPs are half of full recompute's, and time and stored
    activations lie between none and full."""
    base = {"tp": 2, "pp": 2}
    none = predict(job({**base, "recompute": "none"}))
    full = predict(job({**base, "recompute": "full"}))
    half = predict(job({**base, "full_recompute_layers": [8, 8]}))
    model_flop = none.model_flop_per_step
    assert half.hardware_flop_per_step - model_flop == pytest.approx(
        (full.hardware_flop_per_step - model_flop) / 2)
    assert none.step_time_s < half.step_time_s < full.step_time_s
    for r in range(2):
        assert (full.stages[r].activations_bytes < half.stages[r].activations_bytes
                < none.stages[r].activations_bytes)


@pytest.mark.parametrize("parallel, message", [
    ({"pp": 2, "full_recompute_layers": [1]}, "has 1 entries for pp·vpp=2"),
    ({"pp": 2, "full_recompute_layers": [17, 0]}, "more than the 16 blocks of virtual stage 0"),
    ({"pp": 2, "recompute": "full", "full_recompute_layers": [1, 1]}, "already full"),
    ({"pp": 2, "full_recompute_layers": [-1, 0]}, "at least 0"),
])
def test_bad_full_recompute_layers_are_spec_errors(parallel, message):
    with pytest.raises(SpecError, match=message):
        job(parallel)
