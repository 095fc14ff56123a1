"""The search's branch and bound: the lower bound holds on every layout, and pruning with it
leaves the shortlist that estimating every layout gives."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from parasim.planner import search as searching
from parasim.planner.space import enumerate_space
from parasim.simulator.cost.profile import default_profile
from parasim.simulator.jobfile import job_from_mapping
from parasim.simulator.memory import in_flight_microbatches
from parasim.simulator.predict import rank_memory, rank_params
from parasim.simulator.step_time import step_context

DENSE = {"model": {"name": "small", "num_layers": 8, "hidden_size": 1024,
                   "num_attention_heads": 16, "num_kv_heads": 4, "ffn_hidden_size": 4096,
                   "vocab_size": 32000},
         "cluster": {"base": "dgx-h100", "num_nodes": 2},
         "training": {"seq_length": 2048, "global_batch_size": 64}}
MOE = {"model": {"name": "small-moe", "num_layers": 8, "hidden_size": 1024,
                 "num_attention_heads": 16, "num_kv_heads": 4, "ffn_hidden_size": 4096,
                 "vocab_size": 32000, "num_experts": 8, "experts_per_token": 2,
                 "moe_ffn_hidden_size": 1024},
       "cluster": {"base": "dgx-h100", "num_nodes": 2},
       "training": {"seq_length": 4096, "global_batch_size": 64, "precision": "fp8"}}
FP4 = {"model": {"base": "llama3-8b", "num_layers": 12},
       "cluster": {"base": "dgx-b300", "num_nodes": 2},
       "training": {"seq_length": 4096, "global_batch_size": 32, "precision": "fp4"}}
MIXED = {**DENSE, "cluster": {"node_groups": [{"base": "dgx-h100", "num_nodes": 1},
                                              {"base": "dgx-a100", "num_nodes": 1}]}}
LONG = {**DENSE, "model": {**DENSE["model"], "name": "long"},
        "training": {"seq_length": 16384, "global_batch_size": 16}}  # cp and Ulysses searched
TIGHT = {"model": "llama3-70b", "cluster": {"base": "dgx-h100", "num_nodes": 2},
         "training": {"seq_length": 4096, "global_batch_size": 64}}  # many layouts do not fit
CASES = {  # job, fixed fields (kept small: every layout is estimated twice)
    "dense": (DENSE, {"micro_batch_size": 1}),
    "moe, DualPipe(V) and ZB-H1": (MOE, {"micro_batch_size": 1, "zero_stage": 1}),
    "fp4": (FP4, {"micro_batch_size": 1, "zero_stage": 1}),
    "mixed cluster": (MIXED, {"micro_batch_size": 2, "zero_stage": 1}),
    "context parallel": (LONG, {"micro_batch_size": 1, "zero_stage": 1, "recompute": "none"}),
}


def _job(raw):
    return job_from_mapping(raw, base_dir=Path("."), source="t")


@pytest.mark.parametrize("name", CASES)
def test_the_bound_holds_and_pruning_keeps_the_shortlist(name):
    """Every estimated layout's bound is at most its estimate (of full recompute where only
    that fits); with pruning, the 24 best estimates are those of estimating everything, and
    the dropped layouts are counted."""
    raw, fixed = CASES[name]
    job, profile = _job(raw), default_profile()
    space = enumerate_space(job, fixed)
    everything = searching._estimates(job, space, Counter(), None, profile, fixed, 10**9)
    assert len(everything) > 24
    schedules = {layout.schedule for _, layout, _ in everything}
    for estimate_s, layout, _ in everything:
        bound_s = searching._lower_bound(job, layout, profile)
        assert 0 < bound_s <= estimate_s * (1 + 1e-12), layout
    rejected = Counter()
    pruned = searching._estimates(job, space, rejected, None, profile, fixed, 24)
    assert sorted(pruned, key=lambda e: e[0])[:24] == sorted(everything, key=lambda e: e[0])[:24]
    dropped = [n for reason, n in rejected.items() if "lower bound" in reason]
    assert dropped and dropped[0] > 0 and len(pruned) < len(everything)
    if name.startswith("moe"):
        assert {"dualpipe", "dualpipev", "zero-bubble"} <= schedules


def test_a_tight_bound_is_close_for_one_stage():
    """Without a pipeline the bound is the blocks' m passes: within the embedding, LM head and
    tail of the estimate, not a trivial zero."""
    job = _job({**DENSE, "parallel": {"tp": 8, "pp": 1, "dp": 2}})
    profile = default_profile()
    estimate_s = searching._estimate(job, job.layout, profile, {})
    bound_s = searching._lower_bound(job, job.layout, profile)
    assert 0.6 * estimate_s < bound_s <= estimate_s


def _squeezed(raw: dict) -> dict:
    """The job with 16 times longer sequences: some of its layouts no longer fit."""
    training = raw["training"]
    return {**raw, "training": {**training, "seq_length": 16 * training["seq_length"],
                                "global_batch_size": 256}}


FITS = {
    "memory-bound": (TIGHT, {"zero_stage": 1}),
    "mixed cluster": ({**TIGHT, "cluster": MIXED["cluster"]}, {"zero_stage": 1}),
    "moe, DualPipe(V) and ZB-H1": (_squeezed(MOE), {"micro_batch_size": 4, "zero_stage": 1}),
    "fp4": (_squeezed(FP4), {"micro_batch_size": 4, "zero_stage": 1}),
}


@pytest.mark.parametrize("name", FITS)
def test_fits_checks_the_worst_of_ranks_alike(name):
    """`_fits`, which checks one rank of each kind, agrees with checking every rank."""
    raw, fixed = FITS[name]
    job, profile = _job(raw), default_profile()
    answers = set()
    for layout in enumerate_space(job, fixed).layouts[::3]:
        candidate = replace(job, layout=layout)
        ctx, params = step_context(candidate, profile), rank_params(candidate)
        every = all(rank_memory(ctx, r, p, in_flight_microbatches(layout, r, ctx.microbatches))
                    .fits for r, p in enumerate(params))
        assert searching._fits(ctx, params) == every, layout
        answers.add(every)
    assert answers == {True, False}


def test_dualpipe_fits_no_better_than_its_1f1b_twin():
    """What `_twin_is_as_fast` rests on: a DualPipe(V) layout that fits (as it is, or
    recomputing in full) has a 1F1B twin that fits the same way."""
    job, profile = _job(_squeezed(MOE)), default_profile()

    def fits(layout):
        candidate = replace(job, layout=layout)
        return searching._fits(step_context(candidate, profile), rank_params(candidate))

    duals = [layout for layout in enumerate_space(job, {"zero_stage": 1}).layouts
             if layout.schedule in ("dualpipe", "dualpipev")][::2]
    answers = set()
    for dual in duals:
        for layout in (dual, searching.all_full(dual)):
            twin = replace(layout, schedule="1f1b")
            assert not fits(layout) or fits(twin), layout
            answers.add(fits(layout))
    assert len(duals) > 20 and answers == {True, False}
