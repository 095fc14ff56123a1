"""The pipeline engine (runtime/parallel/pipeline.py) against a single-process oracle.

A small deterministic stack (an embedding, Linear + tanh blocks, a vocabulary head and a
cross-entropy loss), one block per virtual stage, each block also taking a per-micro-batch
offset beside its input (as the model's chunks take the tokens' positions), runs the same
micro-batches twice: through `run_pipeline` in pp gloo processes, and whole in this process,
micro-batch after micro-batch, each loss scaled by 1/m. The loss, every parameter's gradient
and every weight after one SGD step must agree.

Tolerance: rtol 1e-5, atol 1e-6 in fp32. Both runs do the same float operations on the same
values in the same order (activations and gradients cross processes bit for bit, gradients
accumulate over micro-batches in order 0..m-1 in every schedule): gradients and weights agree
to the bit here, the mean loss to its last bit (the engine sums the m scaled losses with one
`sum`, the oracle one by one: 1 ulp seen). The tolerance, a few fp32 ulps over a handful of
layers, leaves room for that and for a BLAS that picks another kernel or reduction order with
another thread count (the ranks run one thread, this process may not); a wrong scaling,
schedule or missing micro-batch is off by far more.

The ranks (runtime.launch: spawned gloo processes) of one pipeline degree run all their cases
in one set of processes (starting torch in a process costs seconds on a shared 2-core host):
pp = 2 in the default run, pp = 4 (4 processes, ~15 s) in the slow pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as functional  # noqa: E402  (after the importorskip)
from torch import nn  # noqa: E402

from parasim.runtime.launch import launch  # noqa: E402
from parasim.runtime.parallel.pipeline import (  # noqa: E402
    PipelineLink, pipeline_link, run_pipeline, send_orders)
from parasim.runtime.processes import MeasurementError  # noqa: E402
from parasim.simulator.errors import SpecError  # noqa: E402
from parasim.simulator.layout import Layout  # noqa: E402
from parasim.simulator.memory import in_flight_microbatches  # noqa: E402
from parasim.simulator.schedule import rank_tasks  # noqa: E402

HIDDEN, SEQ, VOCAB, MICRO_BATCH = 8, 4, 11, 2
SHAPE = (MICRO_BATCH, SEQ, HIDDEN)
LR = 0.1
SEED = 0
TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}  # fp32; see the module docstring
TIMEOUT_S = 90.0  # a deadlocked schedule fails the test after this (gloo times out too)


@dataclass(frozen=True)
class Case:
    """One schedule to run: pipeline degree, chunks per rank, micro-batches."""

    schedule: str
    pp: int
    vpp: int
    microbatches: int

    @property
    def layout(self) -> Layout:
        return Layout(pp=self.pp, vpp=self.vpp, schedule=self.schedule, dp=1,
                      micro_batch_size=MICRO_BATCH)

    @property
    def name(self) -> str:
        return f"{self.schedule}-pp{self.pp}-vpp{self.vpp}-m{self.microbatches}"


PP2_CASES = (Case("gpipe", 2, 1, 4), Case("1f1b", 2, 1, 5), Case("interleaved", 2, 2, 4))
PP4_CASES = (Case("1f1b", 4, 1, 6), Case("interleaved", 4, 2, 8), Case("gpipe", 4, 1, 4))


# The model and its oracle -------------------------------------------------------------------


class Stage(nn.Module):
    """[embedding] tanh(Linear(x) + offset) [vocabulary head]; `offset` is a side input."""

    def __init__(self, first: bool, last: bool):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, HIDDEN) if first else None
        self.linear = nn.Linear(HIDDEN, HIDDEN)
        self.head = nn.Linear(HIDDEN, VOCAB) if last else None

    def forward(self, x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        if self.embed is not None:
            x = self.embed(x)
        x = torch.tanh(self.linear(x) + offset)
        return self.head(x) if self.head is not None else x


def build_stages(num_stages: int) -> list[nn.Module]:
    """One Stage per virtual stage, the same weights in every process (seeded, the caller's
    random state untouched)."""
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        return [Stage(v == 0, v == num_stages - 1) for v in range(num_stages)]


def micro_batches(m: int) -> tuple[torch.Tensor, torch.Tensor, list[tuple[torch.Tensor]]]:
    """Token ids and next-token targets, (m, micro_batch, seq) each, and each micro-batch's
    side inputs: an offset (micro_batch, seq, 1)."""
    generator = torch.Generator().manual_seed(SEED + 1)
    tokens = torch.randint(VOCAB, (m, MICRO_BATCH, SEQ), generator=generator)
    targets = torch.randint(VOCAB, (m, MICRO_BATCH, SEQ), generator=generator)
    offsets = torch.randn(m, MICRO_BATCH, SEQ, 1, generator=generator)
    return tokens, targets, [(offset,) for offset in offsets]


def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return functional.cross_entropy(logits.flatten(0, 1), targets.flatten())


def named(stages: dict[int, nn.Module], what: str) -> dict[str, torch.Tensor]:
    """`stage.parameter` -> a copy of its gradient ("grad") or weight ("weight")."""
    return {f"{v}.{name}": (p.grad if what == "grad" else p).detach().clone()
            for v, stage in stages.items() for name, p in stage.named_parameters()}


def sgd_step(stages: dict[int, nn.Module]) -> None:
    params = [p for stage in stages.values() for p in stage.parameters()]
    torch.optim.SGD(params, lr=LR).step()


def reference(case: Case) -> dict:
    """The oracle: the whole stack in this process, micro-batch after micro-batch."""
    stages = dict(enumerate(build_stages(case.layout.num_virtual_stages)))
    tokens, targets, sides = micro_batches(case.microbatches)
    loss = torch.zeros(())
    for i in range(case.microbatches):
        x = tokens[i]
        for v in range(len(stages)):
            x = stages[v](x, *sides[i])
        scaled = loss_fn(x, targets[i]) / case.microbatches
        scaled.backward()
        loss += scaled.detach()
    grads = named(stages, "grad")
    sgd_step(stages)
    return {"loss": loss, "grads": grads, "weights": named(stages, "weight")}


# One pipeline rank (in a spawned process) ---------------------------------------------------


def run_case(case: Case, rank: int) -> dict:
    """This rank's chunks of the stack through `run_pipeline`, then one SGD step."""
    layout = case.layout
    all_stages = build_stages(layout.num_virtual_stages)
    mine = {c * case.pp + rank: all_stages[c * case.pp + rank] for c in range(case.vpp)}
    chunks = list(mine.values())
    tokens, targets, sides = micro_batches(case.microbatches)
    hooked: dict[int, list[dict[str, torch.Tensor]]] = {}

    def hook(chunk: int) -> None:
        stage = chunk * case.pp + rank
        hooked.setdefault(chunk, []).append(named({stage: mine[stage]}, "grad"))

    link = pipeline_link(layout, rank, SHAPE)
    result = run_pipeline(chunks, link, microbatches=case.microbatches, inputs=list(tokens),
                          targets=list(targets), loss_fn=loss_fn, side_inputs=sides,
                          on_chunk_backward_done=hook)
    grads = named(mine, "grad")
    sgd_step(mine)
    return {"result": result, "grads": grads, "weights": named(mine, "weight"),
            "hooked": hooked}


def run_cases(rank: int, world_size: int, cases: tuple[Case, ...]) -> dict[str, dict]:
    """A rank's worker (runtime.launch runs it inside the default gloo group)."""
    torch.set_num_threads(1)  # the ranks share the host
    return {case.name: run_case(case, rank) for case in cases}


def run_ranks(nproc: int, cases: tuple[Case, ...]) -> list[dict]:
    """Every rank's results, through the project's launcher; a failing rank's traceback shown."""
    try:
        return launch(run_cases, nproc, cases, TIMEOUT_S)
    except MeasurementError as error:
        pytest.fail(f"{error}\n{error.detail}")


# Checks -------------------------------------------------------------------------------------


def check_against_reference(case: Case, ranks: list[dict]) -> None:
    """Loss on the last rank only, every gradient and updated weight, peak memory, the hook."""
    expected = reference(case)
    last = case.layout.num_virtual_stages - 1
    for rank, out in enumerate(ranks):
        loss = out["result"].loss
        if rank == last % case.pp:
            torch.testing.assert_close(torch.tensor(loss), expected["loss"], **TOLERANCE)
        else:
            assert loss is None
    for what in ("grads", "weights"):
        merged = {name: t for out in ranks for name, t in out[what].items()}
        assert merged.keys() == expected[what].keys()
        for name, value in merged.items():
            torch.testing.assert_close(value, expected[what][name], **TOLERANCE,
                                       msg=lambda m, name=name: f"{what} {name}: {m}")
    for rank, out in enumerate(ranks):
        check_rank(case, rank, out)


def check_rank(case: Case, rank: int, out: dict) -> None:
    """Peak held = the memory model's in-flight micro-batches; the hook ran once per chunk
    after its last backward (its gradients then are the final ones); phase times add up."""
    result = out["result"]
    in_flight = in_flight_microbatches(case.layout, rank, case.microbatches)
    assert result.peak_held == round(in_flight * case.vpp)
    assert sorted(out["hooked"]) == list(range(case.vpp))
    for snapshots in out["hooked"].values():
        assert len(snapshots) == 1
        for name, grad in snapshots[0].items():
            assert torch.equal(grad, out["grads"][name]), name
    times = result.times
    assert times.forward_s > 0 and times.backward_s > 0 and times.p2p_wait_s >= 0
    assert times.forward_s + times.backward_s + times.p2p_wait_s <= times.total_s


@pytest.fixture(scope="module")
def pp2_runs() -> list[dict]:
    return run_ranks(2, PP2_CASES)


@pytest.fixture(scope="module")
def pp4_runs() -> list[dict]:
    return run_ranks(4, PP4_CASES)


@pytest.mark.parametrize("case", PP2_CASES, ids=lambda c: c.name)
def test_pp2_matches_one_process(case, pp2_runs):
    check_against_reference(case, [runs[case.name] for runs in pp2_runs])


@pytest.mark.slow
@pytest.mark.parametrize("case", PP4_CASES, ids=lambda c: c.name)
def test_pp4_matches_one_process(case, pp4_runs):
    check_against_reference(case, [runs[case.name] for runs in pp4_runs])


# In this process ----------------------------------------------------------------------------


class SavedTensors:
    """Counts the tensors autograd holds for backward (saved_tensors_hooks): now and at peak."""

    def __init__(self):
        self.now = self.peak = 0

    def pack(self, tensor: torch.Tensor) -> _Saved:
        return _Saved(tensor, self)

    @staticmethod
    def unpack(saved: _Saved) -> torch.Tensor:
        return saved.tensor


class _Saved:
    def __init__(self, tensor: torch.Tensor, counter: SavedTensors):
        self.tensor, self.counter = tensor, counter
        counter.now += 1
        counter.peak = max(counter.peak, counter.now)

    def __del__(self):
        self.counter.now -= 1


def one_stage_run(schedule: str):
    """pp = 1 (no process group needed) under `schedule` on three micro-batches: the peak of
    autograd's saved tensors for one micro-batch alone, the counter of the run's saved tensors,
    the run's result, and its match with the reference (loss and gradients) asserted."""
    case = Case(schedule, 1, 1, 3)
    stages = build_stages(1)
    tokens, targets, sides = micro_batches(case.microbatches)
    one = SavedTensors()
    with torch.autograd.graph.saved_tensors_hooks(one.pack, one.unpack):
        (loss_fn(stages[0](tokens[0], *sides[0]), targets[0]) / case.microbatches).backward()
    stages[0].zero_grad()
    link = PipelineLink(layout=case.layout, rank=0, peers=(0,), activation_shape=SHAPE)
    counter = SavedTensors()
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
        result = run_pipeline(stages, link, microbatches=case.microbatches, inputs=list(tokens),
                              targets=list(targets), loss_fn=loss_fn, side_inputs=sides)
    expected = reference(case)
    torch.testing.assert_close(torch.tensor(result.loss), expected["loss"], **TOLERANCE)
    for name, grad in named({0: stages[0]}, "grad").items():
        torch.testing.assert_close(grad, expected["grads"][name], **TOLERANCE)
    return one.peak, counter, result


@pytest.mark.parametrize("schedule, held", [("gpipe", 3), ("1f1b", 1)])
def test_one_stage_matches_and_frees_each_microbatch_after_its_backward(schedule, held):
    """pp = 1: the engine is the plain micro-batch loop; autograd's saved tensors peak at
    `held` micro-batches' worth (GPipe all m, 1F1B one) and are all released by the end."""
    one_peak, counter, result = one_stage_run(schedule)
    assert (counter.peak, counter.now) == (held * one_peak, 0)
    assert result.peak_held == held


@pytest.mark.parametrize("layout, microbatches, why", [
    (Layout(pp=2, vpp=2, dp=1, schedule="interleaved"), 3, "divisible by 2"),
])
def test_unsupported_schedule_is_a_spec_error(layout, microbatches, why):
    """Refused before any communication: no process group is needed to see it."""
    link = PipelineLink(layout=layout, rank=0, peers=(0, 1), activation_shape=SHAPE)
    chunks = build_stages(layout.num_virtual_stages)[:layout.vpp]
    with pytest.raises(SpecError) as error:
        run_pipeline(chunks, link, microbatches=microbatches, inputs=[], loss_fn=loss_fn)
    assert error.value.field == "parallel.schedule"
    assert why in str(error.value)


def produced(layout: Layout, rank: int, m: int) -> dict[int, list]:
    """The messages `rank` sends to each peer, in the order its own tasks produce them."""
    pp, last = layout.pp, layout.num_virtual_stages - 1
    out: dict[int, list] = {}
    for task in rank_tasks(layout, rank, m):
        stage = task.chunk * pp + rank
        if task.kind == "F" and stage < last:
            out.setdefault((stage + 1) % pp, []).append(("F", task.microbatch, stage + 1))
        elif task.kind == "B" and stage > 0:
            out.setdefault((stage - 1) % pp, []).append(("B", task.microbatch, stage - 1))
    return out


@pytest.mark.parametrize("schedule, vpp", [("gpipe", 1), ("1f1b", 1), ("interleaved", 2),
                                           ("interleaved", 3)])
def test_messages_are_produced_in_the_order_they_are_consumed(schedule, vpp):
    """What in-order matching (NCCL's) needs and `_Outbox` asserts, for more shapes than the
    processes above run: each rank produces its messages to a peer in the peer's order."""
    for pp in (2, 3, 4, 8):
        for m in range(pp, 4 * pp + 1, pp if schedule == "interleaved" else 1):
            layout = Layout(pp=pp, vpp=vpp, schedule=schedule, dp=1)
            for rank in range(pp):
                orders = {peer: list(keys) for peer, keys in send_orders(layout, rank, m).items()}
                assert orders == produced(layout, rank, m), (pp, m, rank)
