"""Data parallelism and ZeRO-1 (runtime.parallel.data) against the single-process oracle
(tests.runtime.oracle states the tolerances); tied embeddings split over two pipeline stages
(a hand-made two-stage pipeline) against one process; and the pieces in one process: our AdamW
step against torch.optim.AdamW, the bucket plan, what the runtime refuses.

The distributed cases with overlap_grad_reduce check that the reductions start inside the
backward: with buckets of 4 KiB every bucket of the tiny models fills before the backward
ends, so every bucket is started by a gradient hook, none by `finish()`; without overlap,
none is.
"""

from __future__ import annotations

import sys

import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)  # tiny tensors; a 2nd thread only spins against other processes

import torch.distributed as dist  # noqa: E402

from parasim.runtime.model import build_chunk, build_model  # noqa: E402
from parasim.runtime.parallel.apply import check_runtime_layout, parallelize  # noqa: E402
from parasim.runtime.parallel.data import (  # noqa: E402
    DistributedAdamW, GradSync, _bucket_plan, adamw_, check_zero_stage, default_bucket_bytes)
from parasim.runtime.parallel.groups import ParallelGroups, build_groups  # noqa: E402
from parasim.simulator.errors import SpecError  # noqa: E402
from parasim.simulator.layout import Layout  # noqa: E402
from tests.runtime.harness import run_ranks, to_numpy  # noqa: E402
from tests.runtime.oracle import (  # noqa: E402
    EPS, LOSS_TOL, LR, SEED, WEIGHT_DECAY, WEIGHT_TOL, Scenario, batches, check_scenario, gpt,
    llama, reference_run, results_of, run_scenarios)

SCENARIOS = [
    Scenario(name="dp2-llama", spec=llama(), layout=Layout(dp=2, overlap_grad_reduce=True)),
    Scenario(name="dp2-zero1-gpt", spec=gpt(),
             layout=Layout(dp=2, zero_stage=1, overlap_grad_reduce=True)),
    Scenario(name="dp2-zero1-two-microbatches", spec=llama(), microbatches=2,
             layout=Layout(dp=2, zero_stage=1, overlap_grad_reduce=True)),
    Scenario(name="dp2-one-bucket-no-overlap", spec=gpt(),
             layout=Layout(dp=2, overlap_grad_reduce=False),
             bucket_bytes=2 ** 30),
]


TIED = Scenario(name="pp2-tied-embeddings", spec=gpt(), layout=Layout(dp=1, pp=2))


def tied_pipeline_case(rank: int) -> dict:
    """pp = 2 by hand, one micro-batch: stage 0 holds the embedding and block 0, stage 1 block 1
    and the head, each with its own copy of the tied matrix. The stages swap activations and
    their gradients with send/recv; GradSync sums the two copies' gradients."""
    groups = build_groups(TIED.layout)
    chunk = build_chunk(TIED.spec, layers=range(rank, rank + 1), has_embedding=rank == 0,
                        has_head=rank == 1, seed=SEED)
    parallel = parallelize(chunk, TIED.layout, groups)
    optimizer = DistributedAdamW([parallel.grads], lr=LR, weight_decay=WEIGHT_DECAY, eps=EPS)
    losses = []
    for (tokens, labels), in batches(TIED):
        positions = torch.arange(tokens.shape[1])[None].expand_as(tokens)
        hidden = torch.empty(*tokens.shape, TIED.spec.hidden_size)
        if rank == 0:
            out = chunk(tokens, positions)
            dist.send(out.detach(), 1)
            dist.recv(hidden, 1)
            out.backward(hidden)
        else:
            dist.recv(hidden, 0)
            hidden.requires_grad_()
            loss = chunk.loss(chunk(hidden, positions), labels)
            loss.backward()
            dist.send(hidden.grad, 0)
            losses.append(loss.item())
        parallel.grads.finish()
        optimizer.step()
        optimizer.zero_grad()
    return {"losses": losses, "tied": sorted(parallel.tied),
            "weights": to_numpy(dict(chunk.named_parameters()))}


def run_all(rank: int) -> dict:
    return {"scenarios": run_scenarios(rank, SCENARIOS), "tied": tied_pipeline_case(rank)}


@pytest.fixture(scope="module")
def all_outputs():
    return run_ranks(run_all, 2)


@pytest.fixture(scope="module")
def outputs(all_outputs):
    return [output["scenarios"] for output in all_outputs]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_data_parallel_matches_single_process(outputs, scenario):
    check_scenario(scenario, results_of(outputs, scenario.name))


@pytest.mark.parametrize("scenario", SCENARIOS[:3], ids=[s.name for s in SCENARIOS[:3]])
def test_buckets_start_during_the_backward(outputs, scenario):
    buckets = GradSync(build_model(scenario.spec), ParallelGroups.single(), zero_stage=0,
                       bucket_bytes=scenario.bucket_bytes).buckets
    assert len(buckets) > 3
    for result in results_of(outputs, scenario.name):
        assert result["launched_in_backward"] == len(buckets) * 3  # every bucket, 3 steps


def test_without_overlap_finish_starts_every_bucket(outputs):
    for result in results_of(outputs, SCENARIOS[3].name):
        assert result["launched_in_backward"] == 0


def test_tied_embedding_copies_on_two_pipeline_stages_train_as_one(all_outputs):
    """The reference (one process, one matrix) against the two stages' copies: both must end
    equal to the reference's matrix, which needs the sum of both copies' gradients."""
    reference = reference_run(Scenario(name="pp1", spec=TIED.spec, layout=Layout(dp=1)))
    first, last = (output["tied"] for output in all_outputs)
    assert first["tied"] == ["embed.tokens.weight"] and last["tied"] == ["head.weight"]
    torch.testing.assert_close(torch.tensor(last["losses"]), torch.tensor(reference.losses),
                               **LOSS_TOL)
    expected = {n: p.detach() for n, p in reference.model.named_parameters()}
    expected["head.weight"] = expected["embed.tokens.weight"]
    for stage in (first, last):
        for name, value in stage["weights"].items():
            torch.testing.assert_close(torch.from_numpy(value), expected[name], **WEIGHT_TOL,
                                       msg=lambda m, n=name: f"{n}: {m}")


def test_adamw_step_equals_torch_adamw():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(50, generator=generator)
    reference = weight.clone().requires_grad_()
    optimizer = torch.optim.AdamW([reference], lr=1e-2, eps=1e-8, weight_decay=0.1)
    moments = torch.zeros(50), torch.zeros(50)
    for step in range(1, 4):
        grad = torch.randn(50, generator=generator)
        reference.grad = grad.clone()
        optimizer.step()
        adamw_(weight, grad, *moments, step=step, lr=1e-2, betas=(0.9, 0.999), eps=1e-8,
               weight_decay=0.1)
    torch.testing.assert_close(weight, reference.detach(), rtol=1e-6, atol=1e-7)


def test_bucket_plan_groups_by_reduction_and_size():
    """Reverse order; expert, tp-split and tied parameters in buckets of their own; cut by
    size."""
    params = [(f"p{i}", torch.nn.Parameter(torch.zeros(256))) for i in range(7)]  # 1 KiB each
    plan = _bucket_plan(params, expert_names=frozenset({"p1"}), partial_names=frozenset({"p2"}),
                        tied_names=frozenset({"p6"}), bucket_bytes=2048)
    names = {id(p): n for n, p in params}
    buckets = [(axis, first, [names[id(p)] for p in members]) for axis, first, members in plan]
    assert buckets == [("dp_cp", None, ["p5", "p4"]), ("dp_cp", None, ["p3", "p0"]),
                       ("dp_cp", "embedding", ["p6"]), ("dp_cp", "tp", ["p2"]),
                       ("edp", None, ["p1"])]


def test_default_buckets_are_megatron_cores():
    """max(40M, 1M·dp) parameters in the chunk with the embedding when the reduction overlaps
    the backward, the simulator's `dp_buckets`; one bucket elsewhere (Megatron-Core buckets
    only the first pipeline stage's first chunk)."""
    spec = llama()
    first = build_chunk(spec, layers=range(0, 1), has_embedding=True, has_head=False)
    later = build_chunk(spec, layers=range(1, spec.num_layers), has_embedding=False,
                        has_head=True)
    groups = ParallelGroups.single()
    assert default_bucket_bytes(first, Layout(dp=1), groups) == 40_000_000 * 4  # fp32
    assert default_bucket_bytes(later, Layout(dp=1), groups) == sys.maxsize
    off = Layout(dp=1, overlap_grad_reduce=False)
    assert default_bucket_bytes(first, off, groups) == sys.maxsize


def test_parameters_become_views_of_the_bucket_buffers():
    model = build_model(llama())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    sync = GradSync(model, ParallelGroups.single(), zero_stage=1, bucket_bytes=4096)
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]), name
        assert any(param.untyped_storage().data_ptr()
                   == b.param_buffer.untyped_storage().data_ptr() for b in sync.buckets)


@pytest.mark.parametrize(("spec", "layout", "seq_length", "field"), [
    (llama(), Layout(dp=1, pp=2, schedule="zero-bubble", zero_stage=2), None,
     "parallel.zero_stage"),
    (llama(), Layout(dp=1, ep=2), None, "parallel.ep"),
    (llama(), Layout(dp=1, cp=2, tp=2, sequence_parallel=True), 20, "training.seq_length"),
])
def test_what_the_runtime_cannot_run_is_a_spec_error(spec, layout, seq_length, field):
    with pytest.raises(SpecError) as error:
        check_runtime_layout(spec, layout, seq_length)
    assert error.value.field == field and error.value.valid


def test_zero_stage_error_says_what_is_supported():
    with pytest.raises(SpecError, match=r"valid: 0 or 1 \(or --set parallel.schedule=1f1b\)"):
        check_zero_stage(Layout(dp=1, pp=2, schedule="zero-bubble", zero_stage=3))
