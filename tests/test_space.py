"""The planner's layout space: its memos change nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from parasim.planner import space
from parasim.planner.space import enumerate_space
from parasim.simulator.jobfile import job_from_mapping

SMALL = {"name": "small", "num_layers": 8, "hidden_size": 1024, "num_attention_heads": 16,
         "num_kv_heads": 4, "ffn_hidden_size": 4096, "vocab_size": 32000}
SMALL_MOE = {**SMALL, "name": "small-moe", "num_experts": 8, "experts_per_token": 2,
             "moe_ffn_hidden_size": 1024, "first_dense_layers": 1}


def _job(model, nodes: int, seq_length: int, batch: int):
    return job_from_mapping({"model": model, "cluster": {"base": "dgx-h100", "num_nodes": nodes},
                             "training": {"seq_length": seq_length, "global_batch_size": batch}},
                            base_dir=Path("."), source="t")


class Forgetful(dict):
    """A memo that keeps nothing: every combination worked out on its own."""

    def __setitem__(self, key, value) -> None:
        pass


def _errors(found: space.Space) -> dict:
    return {reason: (e.field, str(e)) for reason, e in found.errors.items()}


@pytest.mark.parametrize("model, nodes, seq_length, batch, fixed", [
    (SMALL, 2, 8192, 64, {"micro_batch_size": 2}),  # cp searched, both styles, vpp
    (SMALL_MOE, 2, 4096, 128, {"micro_batch_size": 1}),  # ep, DualPipe(V)
    (SMALL_MOE, 2, 4096, 128, {"schedule": "dualpipe", "recompute_modules": ("moe_act",)}),
    ("mixtral-8x7b", 2, 4096, 256, {"micro_batch_size": 1, "recompute": "full"}),  # ep,
    #                                   DualPipe(V) and offload where some fit and some do not
    ("llama3-70b", 1, 4096, 64, {"recompute": "full"}),  # over memory, optimizer offload
    ("llama3-70b", 4, 4096, 64, {"micro_batch_size": 1, "recompute": "full"}),  # some fit
    ("llama3-70b", 2, 4096, 64, {"zero_pp": True, "micro_batch_size": 1}),
    (SMALL, 2, 8192, 64, {"stages": (2, 2, 2, 2), "dp": 4, "recompute": "selective"}),
])
def test_memos_change_nothing(monkeypatch, model, nodes, seq_length, batch, fixed):
    """Each combination checked alone (no resolution, states bound or held parameters shared
    by key) gives the same layouts in the same order, the same rejections and errors: the
    keys (`job.resolve_key`, `space._states_key`, `space._held_key`) hold all they read."""
    job = _job(model, nodes, seq_length, batch)
    shared = enumerate_space(job, fixed)
    monkeypatch.setattr(space._Checks, "memo", Forgetful)
    alone = enumerate_space(job, fixed)
    assert shared.layouts == alone.layouts and shared.layouts
    assert list(shared.rejected.items()) == list(alone.rejected.items())
    assert _errors(shared) == _errors(alone)


def test_held_parameters_are_shared_only_where_equal():
    """What a pipeline rank holds, shared by `_held_key`, equals it worked out for each
    layout (interleaved, 1F1B, DualPipe and DualPipeV splits of one pp share no key)."""
    job = _job({**SMALL_MOE, "num_layers": 10}, 2, 4096, 256)  # splits of 10 are uneven
    layouts = enumerate_space(job, {"micro_batch_size": 1, "recompute": "full"}).layouts
    checks = space._Checks(job, layouts[0], {})
    assert {lay.schedule for lay in layouts} >= {"interleaved", "1f1b", "dualpipe", "dualpipev"}
    for layout in layouts:
        for rank in range(layout.pp):
            assert checks.held(layout, rank) == space._held_params(job, layout, rank)
