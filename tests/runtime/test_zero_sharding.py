"""ZeRO-2 and ZeRO-3 (runtime.parallel.data, runtime.parallel.zero3).

1. Two data-parallel ranks against the single-process oracle (tests.runtime.oracle: losses,
   first-step gradient shards and final weights, fp32, its tolerances), with and without
   overlap / prefetch, gradient accumulation, full recompute (a block's forward reruns in the
   backward on gathered weights), a tied head and an MoE layer.
2. What each rank holds, observed on the same ranks: ZeRO-2 never holds more than the bucket
   being reduced and the one before it, and no full gradient buffer after `finish()`; ZeRO-3
   holds in a block's forward only the root unit, that block and (with prefetch) the next one,
   and no full weights between steps; the persistent buffers are the shards.
3. The other parallelisms with ZeRO-2/3 (4 ranks, slow): the trainer of `parasim run` on the
   same job with zero_stage 0 and with 2 and 3 ends on the same weights (every parallelism is
   checked against one process at ZeRO-0 by its own test), for pp 2 (1F1B, tied embeddings
   on two stages), tp 2 with sequence parallelism, cp 2, and ep 2 over dp 4.
4. `parasim run` of a ZeRO-2/3 plan: each rank's weight, gradient and optimizer buffers are
   the bytes `simulator.memory` predicts, exactly; and what is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from parasim.runtime.model import build_model  # noqa: E402
from parasim.runtime.parallel.apply import (  # noqa: E402
    check_runtime_layout, local_batch, parallelize)
from parasim.runtime.parallel.data import DistributedAdamW  # noqa: E402
from parasim.runtime.parallel.groups import build_groups  # noqa: E402
from parasim.runtime.train import Trainer  # noqa: E402
from parasim.simulator.errors import SpecError  # noqa: E402
from parasim.simulator.jobfile import job_from_mapping  # noqa: E402
from parasim.simulator.layout import Layout  # noqa: E402
from parasim.simulator.predict import predict  # noqa: E402
from tests.runtime.harness import run_ranks, to_numpy  # noqa: E402
from tests.runtime.oracle import (  # noqa: E402
    LR, SEED, WEIGHT_TOL, Scenario, batches, check_scenario, gpt, llama, moe,
    results_of, run_scenarios)
from tests.runtime.test_train import TINY, _cli, _plan  # noqa: E402

SCENARIOS = [
    Scenario(name="dp2-zero2-llama", spec=llama(),
             layout=Layout(dp=2, zero_stage=2, overlap_grad_reduce=True)),
    Scenario(name="dp2-zero2-gpt-two-microbatches-no-overlap", spec=gpt(), microbatches=2,
             layout=Layout(dp=2, zero_stage=2, overlap_grad_reduce=False)),
    Scenario(name="dp2-zero2-moe", spec=moe(),
             layout=Layout(dp=2, zero_stage=2, overlap_grad_reduce=True)),
    Scenario(name="dp2-zero3-llama-prefetch", spec=llama(),
             layout=Layout(dp=2, zero_stage=3, overlap_grad_reduce=True,
                           overlap_param_gather=True)),
    Scenario(name="dp2-zero3-gpt-full-recompute-two-microbatches", spec=gpt(), microbatches=2,
             layout=Layout(dp=2, zero_stage=3, recompute="full", overlap_grad_reduce=True,
                           overlap_param_gather=True)),
    Scenario(name="dp2-zero2-one-bucket-two-microbatches", spec=llama(), microbatches=2,
             layout=Layout(dp=2, zero_stage=2, overlap_grad_reduce=True), bucket_bytes=2 ** 30),
    Scenario(name="dp2-zero3-one-bucket-per-unit-two-microbatches", spec=gpt(), microbatches=2,
             layout=Layout(dp=2, zero_stage=3, overlap_grad_reduce=True,
                           overlap_param_gather=True), bucket_bytes=2 ** 30),
    Scenario(name="dp2-zero3-moe-no-prefetch", spec=moe(),
             layout=Layout(dp=2, zero_stage=3, overlap_grad_reduce=False,
                           overlap_param_gather=False)),
]


def _allocated(buffers) -> int:
    return sum(1 for b in buffers if b.untyped_storage().nbytes() > 0)


def holdings_case(rank: int, stage: int, prefetch: bool) -> dict:
    """One step of llama (3 blocks, buckets of 1 KiB: several per unit) over dp 2, two
    micro-batches, watching which full buffers are allocated."""
    spec, layout = llama(num_layers=3), Layout(dp=2, zero_stage=stage, overlap_grad_reduce=True,
                                               overlap_param_gather=prefetch)
    groups = build_groups(layout)
    model = build_model(spec, seed=SEED)
    grads = parallelize(model, layout, groups, bucket_bytes=1024).grads
    units = grads.weights.units if grads.weights is not None else []
    seen: dict[str, list] = {"in_block_forward": [], "grad_buffers_in_backward": []}

    def weights_held(*_):  # registered after the gather hook: runs once the block is gathered
        seen["in_block_forward"].append(
            [int(any(b.gathered or b.gather_work is not None for b in u.buckets)) for u in units])

    for block in model.blocks.values():
        block.register_forward_pre_hook(weights_held)

    def grad_buffers_held(_):  # registered after GradSync's hook: runs once it has reduced
        seen["grad_buffers_in_backward"].append(_allocated(b.grad_buffer for b in grads.buckets))

    for bucket in grads.buckets:
        for param in bucket.params:
            param.register_post_accumulate_grad_hook(grad_buffers_held)
    optimizer = DistributedAdamW([grads], lr=LR)
    for tokens, labels in batches(Scenario(name="h", spec=spec, layout=layout,
                                           microbatches=2))[0]:
        local_tokens, local_labels, positions = local_batch(tokens, labels, groups)
        model.loss(model(local_tokens, positions), local_labels).backward()
    grads.finish()
    optimizer.step()
    return {**seen, "buckets": len(grads.buckets),
            "grad_buffers_after": _allocated(b.grad_buffer for b in grads.buckets),
            "weight_buffers_after": _allocated(b.param_buffer for b in grads.buckets),
            "kept_bytes": [(b.weights_bytes, b.gradients_bytes, b.param_buffer.nbytes)
                           for b in grads.buckets]}


def run_all(rank: int) -> dict:
    return {"scenarios": run_scenarios(rank, SCENARIOS),
            "holdings": {f"{stage}-{prefetch}": holdings_case(rank, stage, prefetch)
                         for stage, prefetch in ((2, False), (3, True), (3, False))}}


@pytest.fixture(scope="module")
def all_outputs():
    return run_ranks(run_all, 2, timeout_s=240)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_zero_matches_single_process(all_outputs, scenario):
    check_scenario(scenario, results_of([o["scenarios"] for o in all_outputs], scenario.name))


def test_zero2_overlapped_reduce_scatters_start_in_the_backward(all_outputs):
    """Every bucket of every micro-batch is reduce-scattered from a gradient hook."""
    for result in results_of([o["scenarios"] for o in all_outputs], "dp2-zero2-llama"):
        assert result["launched_in_backward"] > 0


def test_zero2_holds_at_most_two_full_gradient_buckets(all_outputs):
    """The bucket being filled and the one being reduce-scattered (waited for when the next
    starts); none after finish(); the persistent gradients are the half shards."""
    for output in all_outputs:
        held = output["holdings"]["2-False"]
        assert held["buckets"] > 4
        assert max(held["grad_buffers_in_backward"]) <= 2
        assert held["grad_buffers_after"] == 0 and held["weight_buffers_after"] == held["buckets"]
        for weights, gradients, full in held["kept_bytes"]:
            assert weights == full and 2 * gradients == full


@pytest.mark.parametrize("key, ahead", [("3-True", 1), ("3-False", 0)])
def test_zero3_gathers_one_block_at_a_time_and_prefetches_the_next(all_outputs, key, ahead):
    """In block i's forward: the root unit (embedding, final norm, head), block i, and block
    i+1 only when prefetching; between steps nothing but the half shards."""
    for output in all_outputs:
        held = output["holdings"][key]
        blocks = len(held["in_block_forward"][0]) - 1
        for index, units in enumerate(held["in_block_forward"]):
            block = index % blocks
            expected = [1] + [int(b == block or (ahead and b == block + 1)) for b in range(blocks)]
            assert units == expected, (index, units)
        assert held["grad_buffers_after"] == 0 and held["weight_buffers_after"] == 0
        for weights, gradients, full in held["kept_bytes"]:
            assert 2 * weights == full and 2 * gradients == full


# The other parallelisms: ZeRO-2/3 against ZeRO-0 on the trainer, 4 ranks --------------------

EQUIVALENT = {
    "pp2-dp2-1f1b-tied": ({**TINY["model"], "tied_embeddings": True},
                          {"pp": 2, "dp": 2, "schedule": "1f1b", "micro_batch_size": 1}),
    "tp2-dp2-sp": (TINY["model"], {"tp": 2, "dp": 2, "sequence_parallel": True,
                                   "micro_batch_size": 2}),
    "cp2-dp2": (TINY["model"], {"cp": 2, "dp": 2, "micro_batch_size": 2}),
    "ep2-dp4-moe": ({**TINY["model"], "num_experts": 4, "experts_per_token": 2,
                     "moe_ffn_hidden_size": 32},
                    {"ep": 2, "dp": 4, "micro_batch_size": 2}),
}


def _job(model: dict, parallel: dict, stage: int):
    raw = {**TINY, "model": {**model, "num_layers": 2},
           "cluster": {**TINY["cluster"], "gpus_per_node": 4},
           "parallel": {**parallel, "zero_stage": stage, "overlap_grad_reduce": True,
                        "overlap_param_gather": stage == 3}}
    return job_from_mapping(raw, base_dir=Path("."), source="test")


def trainer_weights(rank: int) -> dict:
    """name -> stage -> this rank's final weights after 3 trainer steps."""
    out = {}
    for name, (model, parallel) in EQUIVALENT.items():
        for stage in (0, 2, 3):
            torch.manual_seed(SEED)
            job = _job(model, parallel, stage)
            trainer = Trainer.build(job, build_groups(job.layout))
            for step in range(3):
                trainer.step(step)
            weights = {}
            for index, part in enumerate(trainer.parts):
                with part.grads.full_weights():
                    weights.update({f"{index}.{n}": v for n, v in
                                    to_numpy(dict(part.chunk.named_parameters())).items()})
            out.setdefault(name, {})[stage] = weights
    return out


@pytest.fixture(scope="module")
def four_rank_weights():
    return run_ranks(trainer_weights, 4, timeout_s=600)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(EQUIVALENT))
@pytest.mark.parametrize("stage", [2, 3])
def test_zero_with_other_parallelisms_equals_zero0(four_rank_weights, name, stage):
    for rank, output in enumerate(four_rank_weights):
        reference, sharded = output[name][0], output[name][stage]
        assert reference.keys() == sharded.keys()
        for param, value in reference.items():
            torch.testing.assert_close(torch.from_numpy(sharded[param]), torch.from_numpy(value),
                                       **WEIGHT_TOL, msg=lambda m, p=param: f"{rank} {p}: {m}")


# `parasim run`: memory against the prediction, refusals ----------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_a_zero_plan_runs_and_keeps_the_predicted_bytes(tmp_path, stage):
    """dp 2: each rank's weight, gradient and optimizer buffers are `simulator.memory`'s
    bytes for the stage, exactly (fp32; TINY's buckets split in two without padding)."""
    plan = _plan(tmp_path, {"dp": 2, "zero_stage": stage, "micro_batch_size": 2,
                            "overlap_param_gather": True})
    out = tmp_path / "m.json"
    result = _cli("run", plan, "--steps", 2, "--warmup", 1, "--out", out)
    assert result.returncode == 0, result.stderr
    measured = json.loads(out.read_text())
    job = job_from_mapping(json.loads(plan.read_text())["job"], base_dir=Path("."), source="t")
    assert job.layout.zero_stage == stage
    predicted = predict(job).stages[0]
    for rank in measured["ranks"]:
        for part in ("weights_bytes", "gradients_bytes", "optimizer_bytes"):
            assert rank["memory_bytes"][part] == getattr(predicted, part), part


def test_zero2_and_3_with_the_zero_bubble_schedule_are_refused():
    with pytest.raises(SpecError, match="parallel.schedule=1f1b") as error:
        check_runtime_layout(llama(), Layout(dp=1, pp=2, schedule="zero-bubble", zero_stage=3))
    assert error.value.field == "parallel.zero_stage"
    check_runtime_layout(llama(), Layout(dp=2, tp=1, zero_stage=3))  # runs
