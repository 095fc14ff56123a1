"""ZB-H1 in the runtime (runtime/parallel/pipeline.py, Qi et al. 2023 §3.1): the split backward
against the whole one, and the schedule against one process and against 1F1B.

- In this process: B computes the stage's input gradient and no linear weight gradient and
  frees the graph, W the weight gradients, B + W doing exactly the floating-point work of one
  whole backward (FlopCounterMode: nothing of B is repeated in W), with the same gradients;
  pp = 1 through `run_pipeline` matches the micro-batch loop and holds the saved tensors 1F1B
  holds, all released by the end; each rank posts its messages in its peers' order.
- Slow (gloo processes): pp = 2 on the small stack of tests/runtime/test_pipeline.py against
  one process, with its tolerances and checks (loss, every gradient and updated weight, the
  data-parallel hook after the chunk's last W, activations held for B as 1F1B holds them);
  the runtime's transformer (`runtime.train.Trainer`) at pp = 2 with dp = 2, and with tp = 2,
  sequence parallelism and biases, trained three AdamW steps with zero-bubble and with 1F1B
  (itself checked against one process in test_pipeline.py): the same updates, the
  data-parallel reduction included; `parasim run` of
  a zero-bubble plan end to end.
"""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from parasim.runtime.parallel.groups import build_groups  # noqa: E402
from parasim.runtime.parallel.pipeline import _Deferred, send_orders  # noqa: E402
from parasim.runtime.processes import MeasurementError  # noqa: E402
from parasim.runtime.train import Trainer  # noqa: E402
from parasim.simulator.jobfile import job_from_mapping  # noqa: E402
from parasim.simulator.layout import Layout  # noqa: E402
from tests.runtime.harness import run_ranks  # noqa: E402
from tests.runtime.test_pipeline import (  # noqa: E402
    SHAPE, Case, build_stages, check_against_reference, named, one_stage_run, produced)
from tests.runtime.test_pipeline import run_ranks as run_pipeline_ranks  # noqa: E402
from tests.runtime.test_train import TINY, _cli, _plan  # noqa: E402

ZB_CASES = (Case("zero-bubble", 2, 1, 4), Case("zero-bubble", 2, 1, 5),
            Case("zero-bubble", 2, 1, 1))


def _forward(stage: torch.nn.Module, deferred: _Deferred | None = None):
    """Stage 1 of a 2-stage stack (a hidden input that needs its gradient) and its output."""
    torch.manual_seed(3)
    x = torch.randn(SHAPE, requires_grad=True)
    offset = torch.randn(SHAPE[0], SHAPE[1], 1)
    if deferred is None:
        return x, stage(x, offset)
    with deferred.recording(stage):
        return x, stage(x, offset)


def test_b_is_the_input_gradient_and_w_the_weight_gradients_without_repeating_work():
    stage = build_stages(3)[1]  # a middle stage: Linear + tanh
    grad = torch.randn(SHAPE, generator=torch.Generator().manual_seed(4))
    x, y = _forward(stage)
    with FlopCounterMode(display=False) as whole:
        torch.autograd.backward(y, grad)
    expected_x, expected = x.grad.clone(), named({1: stage}, "grad")
    stage.zero_grad(set_to_none=True)

    deferred = _Deferred()
    x, y = _forward(stage, deferred)
    with FlopCounterMode(display=False) as b:
        x_grad = deferred.input_gradient(stage, x, y, grad)
    assert all(p.grad is None for p in stage.parameters())  # B computed no weight gradient
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        torch.autograd.backward(y, grad)
    torch.testing.assert_close(x_grad, expected_x, rtol=0, atol=0)
    with FlopCounterMode(display=False) as w:
        deferred.weight_gradients()
    for name, value in named({1: stage}, "grad").items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0)
    assert 0 < b.get_total_flops() < whole.get_total_flops()
    assert b.get_total_flops() + w.get_total_flops() == whole.get_total_flops()


def test_one_stage_zero_bubble_matches_the_microbatch_loop():
    """pp = 1 (no process group): F, B, W per micro-batch; one micro-batch waits for W; the
    saved tensors peak at one micro-batch's (W's inputs are tensors the graph saved) and are
    all released (a graph kept past B would not be: the counting hooks hold it in a cycle)."""
    one_peak, counter, result = one_stage_run("zero-bubble")
    assert (counter.peak, counter.now) == (one_peak, 0)
    assert (result.peak_held, result.peak_awaiting_w) == (1, 1)


def test_zero_bubble_messages_are_produced_in_the_order_they_are_consumed():
    """In-order matching (NCCL's, and `_Outbox`'s assertion) holds for ZB-H1's order."""
    for pp in (2, 3, 4, 8):
        for m in range(1, 4 * pp + 1):
            layout = Layout(pp=pp, dp=1, schedule="zero-bubble")
            for rank in range(pp):
                orders = {peer: list(keys) for peer, keys in send_orders(layout, rank, m).items()}
                assert orders == produced(layout, rank, m), (pp, m, rank)


@pytest.fixture(scope="module")
def zb_runs() -> list[dict]:
    return run_pipeline_ranks(2, ZB_CASES)


@pytest.mark.slow
@pytest.mark.parametrize("case", ZB_CASES, ids=lambda c: c.name)
def test_pp2_zero_bubble_matches_one_process(case, zb_runs):
    ranks = [runs[case.name] for runs in zb_runs]
    check_against_reference(case, ranks)  # peak_held: pp - rank, as 1F1B
    for rank, out in enumerate(ranks):  # W lags F by pp - 1: rank + 1 wait for W at most
        assert out["result"].peak_awaiting_w == min(rank + 1, case.microbatches)


# The runtime's transformer, pp 2 x dp 2, zero-bubble against 1F1B ---------------------------

STEPS = 3
GRID = {**TINY, "cluster": {**TINY["cluster"], "gpus_per_node": 4}}
LAYOUTS = {  # 4 ranks each; the second has biases, a row-parallel bias scale and, one key/value
    # head for tp 2, the replicated key/value rows each rank slices (`Linear.rows`)
    "pp2-dp2": ({}, {"pp": 2, "micro_batch_size": 1, "zero_stage": 1,
                     "overlap_grad_reduce": True}),
    "pp2-tp2-sp-bias": ({"linear_bias": True, "num_kv_heads": 1},
                        {"pp": 2, "tp": 2, "sequence_parallel": True, "micro_batch_size": 1}),
}


def _updates(rank: int, name: str, schedule: str) -> dict[str, torch.Tensor]:
    """This rank's weight change over STEPS AdamW steps of the Trainer (seeded: both schedules
    start from the same weights and see the same tokens)."""
    model, parallel = LAYOUTS[name]
    raw = {**GRID, "model": {**GRID["model"], **model},
           "parallel": {**parallel, "schedule": schedule}}
    job = job_from_mapping(raw, base_dir=".", source="t")
    trainer = Trainer.build(job, build_groups(job.layout))
    params = {f"{c}.{n}": p for c, part in enumerate(trainer.parts)
              for n, p in part.chunk.named_parameters()}
    before = {n: p.detach().clone() for n, p in params.items()}
    for step in range(STEPS):
        trainer.step(step)
    return {n: (p.detach() - before[n]).clone() for n, p in params.items()}


def _both_schedules(rank: int) -> dict[tuple[str, str], dict[str, torch.Tensor]]:
    return {(name, schedule): _updates(rank, name, schedule) for name in LAYOUTS
            for schedule in ("1f1b", "zero-bubble")}


@pytest.fixture(scope="module")
def transformer_runs() -> list[dict]:
    try:
        return run_ranks(_both_schedules, 4, timeout_s=400.0)
    except MeasurementError as error:
        pytest.fail(f"{error}\n{error.detail}")


@pytest.mark.slow
@pytest.mark.parametrize("name", LAYOUTS)
def test_transformer_trains_as_1f1b_does(name, transformer_runs):
    """pp 2 x dp 2: 4 micro-batches per replica, gradients reduced over dp by the bucketed,
    overlapped reduction, which each chunk starts after its last W; pp 2 x tp 2 with sequence
    parallelism and biases. The updates are ~3e-4 (lr 1e-4, three steps) and agree to the bit
    here (W's gᵀx is the product autograd's linear backward computes); 1e-9 leaves room for a
    BLAS that orders the sum otherwise, five orders of magnitude below an update, or a dropped
    or doubled micro-batch's share of one."""
    for rank, out in enumerate(transformer_runs):
        plain, zb = out[name, "1f1b"], out[name, "zero-bubble"]
        assert plain.keys() == zb.keys()
        for param, update in plain.items():
            assert update.abs().max() > 1e-6, param  # the step moved it
            torch.testing.assert_close(zb[param], update, rtol=1e-5, atol=1e-9,
                                       msg=lambda m, p=param: f"rank {rank} {p}: {m}")


@pytest.mark.slow
def test_parasim_run_runs_a_zero_bubble_plan(tmp_path):
    plan = _plan(tmp_path, {"pp": 2, "schedule": "zero-bubble", "micro_batch_size": 2})
    assert json.loads(plan.read_text())["job"]["parallel"]["schedule"] == "zero-bubble"
    out = tmp_path / "MEASUREMENT.json"
    result = _cli("run", plan, "--steps", 2, "--warmup", 1, "--out", out)
    assert result.returncode == 0, result.stderr
    measured = json.loads(out.read_text())
    assert measured["step_time_s"] > 0 and len(measured["ranks"]) == 2
    for rank in measured["ranks"]:
        assert rank["phase_s"]["backward_s"] > 0 and rank["memory_bytes"]["activations_bytes"] > 0

