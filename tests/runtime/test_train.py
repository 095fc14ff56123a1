"""The trainer of `parasim run`: a real plan run end to end, its memory against the
simulator's, recompute against memory, and what it refuses before any process starts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

torch = pytest.importorskip("torch")

from parasim.runtime.parallel.groups import ParallelGroups  # noqa: E402
from parasim.runtime.train import Trainer  # noqa: E402
from parasim.simulator.jobfile import job_from_mapping  # noqa: E402
from parasim.simulator.predict import predict  # noqa: E402
from tests.test_cli_errors import REPO  # noqa: E402

TINY = {"model": {"name": "tiny", "num_layers": 4, "hidden_size": 64, "num_attention_heads": 4,
                  "num_kv_heads": 2, "ffn_hidden_size": 176, "vocab_size": 256},
        "cluster": {"base": "dgx-h100", "num_nodes": 1, "gpus_per_node": 2},
        "training": {"seq_length": 32, "global_batch_size": 8, "precision": "fp32"}}


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "parasim", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def _plan(tmp_path: Path, parallel: dict, raw: dict = TINY) -> Path:
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({**raw, "parallel": parallel}))
    plan = tmp_path / "plan.json"
    result = _cli("plan", job, "--out", plan)
    assert result.returncode == 0, result.stderr
    return plan


def test_a_pipeline_plan_runs_and_its_model_states_are_the_predicted_bytes(tmp_path):
    """pp 2, 1F1B: every rank's weight, gradient and optimizer buffers are the bytes the
    simulator predicts for its stage, exactly (fp32: 4 + 4 + 8 bytes a parameter)."""
    plan = _plan(tmp_path, {"pp": 2, "schedule": "1f1b", "micro_batch_size": 2, "zero_stage": 0,
                            "stages": [2, 2]})
    out = tmp_path / "MEASUREMENT.json"
    result = _cli("run", plan, "--steps", 2, "--warmup", 1, "--out", out)
    assert result.returncode == 0, result.stderr
    measured = json.loads(out.read_text())
    job = job_from_mapping(json.loads(plan.read_text())["job"], base_dir=Path("."), source="t")
    predicted = predict(job).stages
    for rank, stage in zip(measured["ranks"], predicted):
        memory = rank["memory_bytes"]
        for part in ("weights_bytes", "gradients_bytes", "optimizer_bytes"):
            assert memory[part] == pytest.approx(getattr(stage, part)), part
        assert memory["activations_bytes"] > 0
        assert set(rank["phase_s"]) == {"forward_s", "backward_s", "p2p_wait_s",
                                        "grad_sync_s", "optimizer_s"}
    assert measured["step_time_s"] > 0


def _activation_bytes(parallel: dict) -> float:
    """Peak saved activations of one step of TINY on one process."""
    raw = {**TINY, "cluster": {**TINY["cluster"], "gpus_per_node": 1}, "parallel": parallel}
    job = job_from_mapping(raw, base_dir=Path("."), source="t")
    trainer = Trainer.build(job, ParallelGroups.single(job.layout))
    trainer.step(0)
    return trainer.memory_bytes()["activations_bytes"]


def test_recompute_lowers_the_saved_activations_in_order():
    """Full recompute of the first 2 of 4 blocks saves less than none and more than all four;
    selective saves less than none."""
    none = _activation_bytes({"recompute": "none"})
    selective = _activation_bytes({"recompute": "selective"})
    half = _activation_bytes({"recompute": "none", "full_recompute_layers": [2]})
    full = _activation_bytes({"recompute": "full"})
    assert full < half < none and selective < none


@pytest.mark.parametrize("parallel, options, fragment", [
    ({"tp": 2}, ["--nproc", 1], "--nproc=1: the plan's layout runs tp·cp·dp·pp = 2 ranks"),
    ({"pp": 2, "schedule": "zero-bubble", "zero_stage": 2}, [], "parallel.zero_stage=2"),
])
def test_what_the_trainer_cannot_run_is_refused_before_it_starts(tmp_path, parallel, options,
                                                                   fragment):
    plan = _plan(tmp_path, parallel)
    result = _cli("run", plan, *options, "--out", tmp_path / "m.json")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1 and fragment in result.stderr, result.stderr
    assert not (tmp_path / "m.json").exists()


def test_a_plan_too_large_for_this_host_asks_for_shrink(tmp_path):
    big = {**TINY, "model": "llama3-8b"}
    plan = _plan(tmp_path, {"tp": 2}, big)
    result = _cli("run", plan, "--out", tmp_path / "m.json")
    assert result.returncode == 2 and "valid: --shrink" in result.stderr, result.stderr


@pytest.mark.slow
def test_shrink_runs_the_layout_on_a_small_model(tmp_path):
    big = {**TINY, "model": "llama3-8b", "training": {**TINY["training"], "seq_length": 4096}}
    plan = _plan(tmp_path, {"tp": 2, "sequence_parallel": True}, big)
    result = _cli("run", plan, "--shrink", "--steps", 1, "--warmup", 0,
                  "--out", tmp_path / "m.json")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "m.json").read_text())["world_size"] == 2
