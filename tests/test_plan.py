"""`parasim plan`: the search equals exhaustive simulation on small jobs; outputs and errors."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from parasim.planner.search import search
from parasim.planner.space import enumerate_space
from parasim.simulator.jobfile import job_from_mapping
from parasim.simulator.predict import predict

REPO = Path(__file__).resolve().parents[1]
SMALL = {"model": {"name": "small", "num_layers": 8, "hidden_size": 1024,
                   "num_attention_heads": 16, "num_kv_heads": 4, "ffn_hidden_size": 4096,
                   "vocab_size": 32000},
         "cluster": {"base": "dgx-h100", "num_nodes": 1},
         "training": {"seq_length": 2048, "global_batch_size": 32}}


def _job(raw=SMALL):
    return job_from_mapping(raw, base_dir=Path("."), source="t")


def test_plan_equals_exhaustive_search_with_the_simulator():
    """Every layout of the space simulated (default splits): the plan is at least as fast
    as the best of them (the ILP may only improve on a default split)."""
    job = _job()
    fixed = {"micro_batch_size": 1, "zero_stage": 1}
    space = enumerate_space(job, fixed)
    exhaustive = [predict(replace(job, layout=layout)) for layout in space.layouts]
    best = min(p.step_time_s for p in exhaustive if p.fits)
    result = search(job, fixed, full=len(space.layouts))
    assert result.ranked[0].prediction.step_time_s <= best * (1 + 1e-9)
    assert result.ranked[0].prediction.step_time_s >= best * 0.9  # same model, same space


def test_fixed_fields_are_held():
    result = search(_job(), {"tp": 2, "pp": 2})
    assert all(s.layout.tp == 2 and s.layout.pp == 2 for s in result.ranked)


def test_pareto_front_is_monotone():
    result = search(_job(), {})
    times = [s.prediction.step_time_s for s in result.pareto]
    dollars = [s.dollars_per_step for s in result.pareto]
    assert times == sorted(times) and dollars == sorted(dollars, reverse=True)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "parasim", "plan", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


def test_plan_cli_writes_a_plan_that_estimate_reproduces(tmp_path):
    job_path = tmp_path / "job.yaml"
    job_path.write_text(yaml.safe_dump(SMALL))
    out = tmp_path / "plan.json"
    result = _cli(job_path, "--out", out, "--json", "--top", "3")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    plan = json.loads(out.read_text())
    assert plan["schema_version"] == 1 and "job_sha256" in plan["inputs"]
    assert summary["considered"] > summary["ilp_solves"] >= 0
    assert len(summary["runners_up"]) == 2 and all(r["why"] for r in summary["runners_up"])
    replay = tmp_path / "replay.yaml"
    replay.write_text(yaml.safe_dump(plan["job"]))
    estimate = subprocess.run([sys.executable, "-m", "parasim", "estimate", replay, "--json"],
                              cwd=REPO, capture_output=True, text=True, timeout=60)
    assert estimate.returncode == 0, estimate.stderr
    assert json.loads(estimate.stdout)["step_time_s"] == pytest.approx(
        plan["prediction"]["step_time_s"])


def test_infeasible_job_names_the_smallest_change(tmp_path):
    """Llama 3.1 405B cannot train on one 8-GPU node; the message says what would fit."""
    job_path = tmp_path / "job.yaml"
    job_path.write_text(yaml.safe_dump({**SMALL, "model": "llama3.1-405b",
                                        "training": {"seq_length": 8192,
                                                     "global_batch_size": 64}}))
    result = _cli(job_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert "smallest change" in result.stderr and "GPUs" in result.stderr


def test_export_prints_megatron_flags(tmp_path):
    job_path = tmp_path / "job.yaml"
    job_path.write_text(yaml.safe_dump(SMALL))
    result = _cli(job_path, "--export", "megatron")
    assert result.returncode == 0, result.stderr
    assert "--tensor-model-parallel-size" in result.stdout


@pytest.mark.slow
def test_plan_is_no_worse_than_megatrons_published_layouts():
    """Narayanan et al. 2021 Table 1, GPT 1.7B to 1T on 32 to 3,072 A100s (the benchmark
    `benchmarks/megatron_comparison.py` prints the table and why each plan differs)."""
    spec = importlib.util.spec_from_file_location(
        "megatron_comparison", REPO / "benchmarks" / "megatron_comparison.py")
    megatron_comparison = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(megatron_comparison)

    for name, entry in megatron_comparison.published().items():
        row = megatron_comparison.compare(name, entry, {})
        assert row["plan_s"] <= row["published_s"] * (1 + 1e-9), row


def test_fixed_flags_and_mixed_clusters():
    """Fixed non-searched fields (sequence parallelism, overlaps) are held; a cluster of two
    node groups is planned like any other."""
    raw = {**SMALL, "cluster": {"node_groups": [{"base": "dgx-h100", "num_nodes": 1},
                                                {"base": "dgx-a100", "num_nodes": 1}]}}
    result = search(_job(raw), {"sequence_parallel": True, "overlap_grad_reduce": True,
                                "tp": 2})
    best = result.ranked[0].layout
    assert best.sequence_parallel and best.overlap_grad_reduce and best.tp == 2


def _mixed(first: str, second: str) -> dict:
    return {"model": "llama3-8b", "training": {"seq_length": 4096, "global_batch_size": 64},
            "cluster": {"node_groups": [{"base": first, "num_nodes": 1},
                                        {"base": second, "num_nodes": 1}]}}


def test_mixed_cluster_plan_does_not_depend_on_the_listed_order():
    """The ILP chooses which node group serves which stages (one stage per node here):
    listing the groups the other way round gives the same plan, and the H100s get more
    layers than the A100s."""
    fixed = {"tp": 8, "pp": 2, "vpp": 1, "zero_stage": 1}
    best = [search(_job(_mixed(*order)), fixed).ranked[0]
            for order in (("dgx-a100", "dgx-h100"), ("dgx-h100", "dgx-a100"))]
    assert best[0].prediction.step_time_s == pytest.approx(best[1].prediction.step_time_s)
    names = [[g.gpu.name for g in b.cluster.node_groups] for b in best]
    assert names[0] == names[1]
    stages = dict(zip(names[0], best[0].layout.stages))
    assert stages["h100-sxm"] > stages["a100-80gb"]


def test_plan_file_lists_the_node_groups_in_the_chosen_order(tmp_path):
    raw = {**_mixed("dgx-h100", "dgx-a100"),
           "parallel": {"tp": 8, "pp": 2, "vpp": 1, "zero_stage": 1}}
    job_path = tmp_path / "job.yaml"
    job_path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "plan.json"
    result = _cli(job_path, "--out", out, "--profile", "analytic")  # the roofline's order
    assert result.returncode == 0, result.stderr
    assert "node groups take the ranks in this order: 1 x a100-80gb, 1 x h100-sxm" in result.stdout
    plan = json.loads(out.read_text())
    assert [g["base"] for g in plan["job"]["cluster"]["node_groups"]] == ["dgx-a100", "dgx-h100"]
    replay = tmp_path / "replay.yaml"
    replay.write_text(yaml.safe_dump(plan["job"]))
    estimate = subprocess.run([sys.executable, "-m", "parasim", "estimate", replay, "--json",
                               "--profile", "analytic"], cwd=REPO, capture_output=True,
                              text=True, timeout=60)
    assert json.loads(estimate.stdout)["step_time_s"] == pytest.approx(
        plan["prediction"]["step_time_s"])


def test_plan_recomputes_only_the_blocks_that_must_be():
    """Llama-3-8B, 8k sequences, micro-batch 8 on tp 2 x pp 2: without recompute the stages
    do not fit 80 GB, with full recompute of every block they do; the ILP recomputes a
    part of the blocks, per stage, and is faster than recomputing all."""
    raw = {"model": "llama3-8b", "cluster": {"base": "dgx-h100", "num_nodes": 1},
           "training": {"seq_length": 8192, "global_batch_size": 32}}
    job = _job(raw)
    fixed = {"tp": 2, "pp": 2, "vpp": 1, "cp": 1, "micro_batch_size": 8, "zero_stage": 1}
    none = [predict(replace(job, layout=layout))
            for layout in enumerate_space(job, {**fixed, "recompute": "none"}).layouts]
    assert not any(p.fits for p in none)
    best = search(job, fixed).ranked[0]
    assert best.layout.recompute != "full" and best.prediction.fits
    recomputed = sum(best.layout.full_recompute_layers)
    assert 0 < recomputed < job.model.num_layers
    full = search(job, {**fixed, "recompute": "full"}).ranked[0]
    assert best.prediction.step_time_s < full.prediction.step_time_s


@pytest.mark.parametrize("parallel", [
    {"tp": 2, "pp": 4, "micro_batch_size": 1, "zero_stage": 3, "recompute": "selective"},
    {"tp": 1, "pp": 2, "vpp": 2, "schedule": "interleaved", "zero_stage": 1,
     "recompute": "full"},
    {"tp": 2, "pp": 2, "zero_stage": 1, "recompute": "none"},
])
def test_the_ilp_memory_is_predicts_memory_for_every_split(parallel):
    """One memory model: the split program's per-rank bytes (planner.ilp.rank_bytes) equal the
    peak `predict` computes for the same split, ZeRO-3's gathered weights included, for the
    default split and for uneven ones."""
    from parasim.planner.ilp import Split, rank_bytes
    from parasim.planner.search import apply_split, split_problem

    job = job_from_mapping({**SMALL, "parallel": parallel}, base_dir=REPO, source="test")
    problem, orders = split_problem(job)
    stages = job.layout.num_virtual_stages
    default = tuple(job.stage_layers)
    uneven = tuple(default[0] + 1 if v == 0 else default[v] - (v == stages - 1)
                   for v in range(stages))
    for layers in (default, uneven):
        split = Split.of_layers(layers, modes=len(problem.modes))
        planned = apply_split(job, job.layout, problem, orders, split)
        peaks = [stage.peak_bytes for stage in predict(planned).stages]
        assert rank_bytes(problem, split) == pytest.approx(peaks, rel=1e-9), layers
