"""DualPipe and DualPipeV (simulator/dualpipe.py): the reference code's orders, the source's
bubble and memory multipliers (deepseek-ai/DualPipe README table; DeepSeek-V3 report,
arXiv:2412.19437 §3.2.1, Table 2), the F&B overlap, validation, export, and DeepSeek-V3's
published layout."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from parasim.planner.export import export_layout
from parasim.simulator.dualpipe import dual_bubble_s, dual_orders, simulate_dual
from parasim.simulator.errors import SpecError
from parasim.simulator.jobfile import job_from_mapping
from parasim.simulator.layout import Layout
from parasim.simulator.memory import in_flight_microbatches
from parasim.simulator.predict import predict, rank_params
from parasim.simulator.schedule import TaskTimes
from parasim.simulator.step_time import overlapped_pair_s, stage_cost, step_context
from parasim.simulator.cost.profile import default_profile
from parasim.simulator.training import TrainingSpec

SCHEDULES = ("dualpipe", "dualpipev")


def _run(schedule: str, pp: int, m: int, f: float, b: float, w: float, pair: float):
    layout = Layout(pp=pp, schedule=schedule)
    times = [TaskTimes(f, b, w)] * (2 * pp)
    pairs = {(x, y): pair for x in range(2 * pp) for y in range(2 * pp)}
    return layout, simulate_dual(layout, m, times, pairs)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("pp", [2, 4, 8, 16])
def test_every_rank_runs_each_microbatch_once_per_chunk(schedule, pp):
    m = 2 * pp + 2
    for rank, order in enumerate(dual_orders(Layout(pp=pp, schedule=schedule), m)):
        tasks = Counter((t.kind, t.microbatch, t.chunk) for chunk in order for t in chunk.parts)
        assert set(tasks.values()) == {1}
        per_chunk = m // 2 if schedule == "dualpipe" else m
        for chunk in (0, 1):
            forwards = [t.microbatch for c in order for t in c.parts
                        if t.kind == "F" and t.chunk == chunk]
            assert len(forwards) == per_chunk and forwards == sorted(forwards)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("pp", [2, 4, 8, 16])
@pytest.mark.parametrize("f,b,w", [(1.0, 1.0, 1.0), (1.0, 1.0, 0.5), (2.0, 2.0, 1.0)])
def test_bubble_is_the_sources_formula_on_balanced_chunks(schedule, pp, f, b, w):
    """(PP/2 - 1)(F&B + B - 3W), B the whole backward, with F equal to the input-gradient
    backward and an F&B pair no shorter than its parts (the README's figure)."""
    pair = f + b + w
    for m in (2 * pp, 4 * pp + 2):
        layout, timeline = _run(schedule, pp, m, f, b, w, pair)
        bubble = timeline.makespan_s - max(timeline.busy_s)
        assert bubble == pytest.approx(dual_bubble_s(layout, f, b + w, w, pair))
        per_rank = m * (f + b + w) * (1 if schedule == "dualpipe" else 2)
        assert timeline.busy_s == pytest.approx([per_rank] * pp)


def test_an_overlapped_pair_shortens_the_step_and_the_bubble_stays_the_sources_at_pp_4():
    _, plain = _run("dualpipe", 4, 16, 1.0, 1.0, 1.0, 3.0)
    layout, fast = _run("dualpipe", 4, 16, 1.0, 1.0, 1.0, 2.5)
    assert fast.makespan_s < plain.makespan_s
    assert fast.makespan_s - max(fast.busy_s) == pytest.approx(
        dual_bubble_s(layout, 1.0, 2.0, 1.0, 2.5))


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("pp", [2, 4, 8, 16])
def test_activations_peak_at_pp_plus_one_chunks_on_every_rank(schedule, pp):
    """README table: activations per device PP+1 (PP the stages: pp for DualPipe, 2·pp for
    DualPipeV), in units of a stage's; the rank holds two stages."""
    layout, timeline = _run(schedule, pp, 4 * pp, 1.0, 1.0, 1.0, 3.0)
    stages = pp if schedule == "dualpipe" else 2 * pp
    assert timeline.peak_in_flight == tuple([(stages + 1) / 2] * pp)
    assert all(in_flight_microbatches(layout, r, 4 * pp) == (stages + 1) / 2 for r in range(pp))


def _job(schedule: str, pp: int = 4, training: dict | None = None, **parallel):
    raw = {"model": "llama3-8b", "cluster": {"base": "dgx-h100", "num_nodes": 2},
           "training": {"seq_length": 4096, "global_batch_size": 64, **(training or {})},
           "parallel": {"tp": 2, "pp": pp, "schedule": schedule, "zero_stage": 1, **parallel}}
    return job_from_mapping(raw, base_dir=Path("."), source="test")


def test_dualpipe_holds_two_stages_and_dualpipev_one_rank_share():
    """README table: parameters per device 2x for DualPipe; DualPipeV's two half-size stages
    are 1x a pp-rank pipeline's share. A middle rank of llama3-8b (32 equal layers)."""
    one = rank_params(_job("1f1b"))[1]
    two = rank_params(_job("dualpipe"))[1]  # stages 1 and 2
    v = rank_params(_job("dualpipev"))[1]  # stages 1 and 6 of 8
    assert two.total == 2 * one.total and v.total == one.total


def test_dualpipe_doubles_weights_and_gradients_not_the_zero_sharded_optimizer():
    def memory(schedule):
        return predict(_job(schedule)).stages[1]
    plain, dual = memory("1f1b"), memory("dualpipe")
    assert dual.weights_bytes == pytest.approx(2 * plain.weights_bytes)
    assert dual.gradients_bytes == pytest.approx(2 * plain.gradients_bytes)
    assert dual.optimizer_bytes == pytest.approx(plain.optimizer_bytes)


def test_the_pair_hides_expert_all_to_alls_behind_the_other_micro_batch():
    raw = {"model": "mixtral-8x7b", "cluster": {"base": "dgx-h100", "num_nodes": 4},
           "training": {"seq_length": 4096, "global_batch_size": 256},
           "parallel": {"tp": 1, "pp": 4, "ep": 8, "schedule": "dualpipe", "zero_stage": 1}}
    job = job_from_mapping(raw, base_dir=Path("."), source="test")
    ctx = step_context(job, default_profile())
    device = job.cluster.node_groups[0].gpu
    cost = stage_cost(ctx, 1, device)
    parts = cost.forward.total + cost.backward.total + cost.weight.total
    compute = (cost.forward.compute + cost.backward.compute + cost.weight.compute).total_s
    assert (cost.forward.ep + cost.backward.ep).total_s > 0
    assert compute < overlapped_pair_s(ctx, cost, cost) < parts.total_s


def test_dense_pairs_are_their_parts():
    job = _job("dualpipe")
    ctx = step_context(job, default_profile())
    cost = stage_cost(ctx, 1, job.cluster.node_groups[0].gpu)
    parts = cost.forward.total + cost.backward.total + cost.weight.total
    assert overlapped_pair_s(ctx, cost, cost) == pytest.approx(parts.total_s)


def test_dualpipe_needs_an_even_pipeline_and_enough_micro_batches():
    with pytest.raises(SpecError, match="even pp"):
        Layout(pp=3, schedule="dualpipe")
    with pytest.raises(SpecError, match="pp >= 2"):
        Layout(pp=1, schedule="dualpipev")
    with pytest.raises(SpecError, match="interleaved"):
        Layout(pp=4, vpp=2, schedule="dualpipev")
    with pytest.raises(SpecError, match="needs at least 8"):
        _job("dualpipe", training={"global_batch_size": 4})  # dp 2: 2 micro-batches
    with pytest.raises(SpecError, match="an even number"):
        _job("dualpipe", training={"global_batch_size": 18})  # 9 micro-batches
    assert _job("dualpipev", training={"global_batch_size": 18}).layout.schedule == "dualpipev"


def test_dualpipev_splits_the_layers_into_twice_pp_stages():
    job = _job("dualpipev")
    assert len(job.stage_layers) == 8 and sum(job.stage_layers) == 32


def test_optimizer_moments_in_bf16():
    """DeepSeek-V3 §3.3.3: fp32 master weights, BF16 moments: K = 4 + 2 + 2."""
    base = {"seq_length": 4096, "global_batch_size": 8}
    assert TrainingSpec(**base).optimizer_bytes_per_param == 12
    assert TrainingSpec(**base, optimizer_moment_precision="bf16").optimizer_bytes_per_param == 8
    assert TrainingSpec(**base, precision="fp32",
                        optimizer_moment_precision="bf16").optimizer_bytes_per_param == 4
    with pytest.raises(SpecError, match="optimizer_moment_precision"):
        TrainingSpec(**base, optimizer_moment_precision="fp8")
    with pytest.raises(SpecError, match="precision is bf16"):
        TrainingSpec(**base, fp8_moe_act_input=True)


def test_exports():
    for schedule in SCHEDULES:
        with pytest.raises(SpecError, match="no DualPipe"):
            export_layout(_job(schedule), "megatron")
    titan = export_layout(_job("dualpipev", zero_stage=3, sequence_parallel=True), "torchtitan")
    assert 'pipeline_parallel_schedule = "DualPipeV"' in titan
    assert titan.count("layers.") == 7  # 8 V stages
    with pytest.raises(SpecError, match="parallel.schedule=dualpipev"):
        export_layout(_job("dualpipe", zero_stage=3, sequence_parallel=True), "torchtitan")
    moments = {"optimizer_moment_precision": "bf16"}
    text = export_layout(_job("1f1b", training=moments), "megatron")
    assert "--use-precision-aware-optimizer" in text and "--exp-avg-sq-dtype bf16" in text
    with pytest.raises(SpecError, match="parallel.zero_stage=1"):
        export_layout(_job("1f1b", training=moments, zero_stage=0), "megatron")
    with pytest.raises(SpecError, match="optimizer_moment_precision=fp32"):
        export_layout(_job("1f1b", training=moments, zero_stage=3, sequence_parallel=True),
                      "torchtitan")
    fp8 = {"precision": "fp8", "fp8_moe_act_input": True}
    with pytest.raises(SpecError, match="fp8_moe_act_input=false"):
        export_layout(_job("1f1b", training=fp8), "megatron")


def _dsv3(schedule: str, **training):
    raw = {"model": "deepseek-v3", "cluster": {"base": "hgx-h800", "num_nodes": 256},
           "training": {"seq_length": 4096, "global_batch_size": 15360, "precision": "fp8",
                        **training},
           "parallel": {"tp": 1, "pp": 16, "ep": 64, "micro_batch_size": 1, "zero_stage": 1,
                        "schedule": schedule, "recompute": "selective",
                        "recompute_modules": ["core_attn", "layernorm", "mla_up_proj",
                                              "moe_act"]}}
    return job_from_mapping(raw, base_dir=Path("."), source="deepseek-v3")


def test_deepseek_v3_published_layout_fits_with_dualpipe_and_its_reports_techniques():
    """2,048 H800, pp 16, ep 64, fp8, DualPipe (report §3.2): the peak rank (rank 0: stages 0
    and 15, the embedding and the LM head) holds 78.3 GiB; the MoE SwiGLU inputs in FP8 and
    BF16 Adam moments (§3.3.3) bring it to 74.2 GiB of the 75 usable. DualPipe's step is far
    shorter than 1F1B's: its F&B pairs hide most of the all-to-alls."""
    gib = 2**30
    plain = predict(_dsv3("dualpipe"))
    report = predict(_dsv3("dualpipe", fp8_moe_act_input=True,
                           optimizer_moment_precision="bf16"))
    assert 77 < plain.peak_stage.peak_bytes / gib < 80 and not plain.fits
    assert 73 < report.peak_stage.peak_bytes / gib < 75 and report.fits
    assert report.stages.index(report.peak_stage) == 0
    one_f_one_b = predict(_dsv3("1f1b"))
    assert report.step_time_s < 0.7 * one_f_one_b.step_time_s
    assert report.breakdown.ep_comm_s < 0.5 * one_f_one_b.breakdown.ep_comm_s
    v = predict(replace(_dsv3("dualpipev"), source="v"))
    assert v.fits and v.step_time_s < 0.7 * one_f_one_b.step_time_s


def test_plan_searches_dualpipe_with_expert_parallelism():
    from parasim.planner.space import _schedules
    assert _schedules(1, 4, {}, ep=8) == ("1f1b", "zero-bubble", "dualpipev", "dualpipe")
    assert _schedules(1, 3, {}, ep=8) == ("1f1b", "zero-bubble", "dualpipev")
    assert _schedules(1, 4, {}, ep=1) == ("1f1b", "zero-bubble")
    assert _schedules(2, 4, {}, ep=8) == ("interleaved",)
    assert _schedules(1, 4, {"schedule": "dualpipe"}, ep=1) == ("dualpipe",)


def test_plan_drops_a_dualpipe_layout_no_faster_than_its_1f1b_twin():
    from parasim.planner.search import _estimate, _twin_is_as_fast
    raw = {"model": "mixtral-8x7b", "cluster": {"base": "dgx-h100", "num_nodes": 4},
           "training": {"seq_length": 4096, "global_batch_size": 256},
           "parallel": {"tp": 1, "pp": 4, "ep": 8, "schedule": "dualpipe", "zero_stage": 1,
                        "recompute": "full"}}
    job = job_from_mapping(raw, base_dir=Path("."), source="test")
    profile, known = default_profile(), {}
    for schedule in SCHEDULES:
        layout = replace(job.layout, schedule=schedule)
        mine = _estimate(job, layout, profile, known)
        twin = _estimate(job, replace(layout, schedule="1f1b"), profile, known)
        assert mine is not None and twin is not None
        assert _twin_is_as_fast(job, layout, mine, profile, known) == (mine >= twin)


def test_chunk_lists_are_copies_of_the_cached_orders():
    layout = Layout(pp=4, schedule="dualpipev")
    dual_orders(layout, 8)[0].clear()
    assert all(dual_orders(layout, 8))
