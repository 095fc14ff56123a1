"""Pipeline-parallel execution of one training step over point-to-point sends.

Each pipeline rank owns `vpp` model chunks: chunk c is virtual stage v = c·pp + rank. It runs
its task list from `simulator.schedule.rank_tasks` in order, exactly the order the simulator
predicts: GPipe, all forwards then all backwards (Huang et al. 2019, "GPipe"); 1F1B, pp - rank
- 1 warm-up forwards then one forward and one backward in turn (Narayanan et al. 2021,
PipeDream-Flush); interleaved 1F1B (Narayanan et al. 2021, "Efficient Large-Scale Language
Model Training on GPU Clusters Using Megatron-LM", §2.2; Megatron-LM's
`forward_backward_pipelining_with_interleaving`); ZB-H1 (Qi et al. 2023, "Zero Bubble Pipeline
Parallelism", §3.1), its backward split into B and W (below). F on stage v receives v-1's
activation and
sends its output to v+1; B on stage v receives v+1's gradient and sends its input gradient to
v-1; the last stage turns its own forward around through the loss, scaled by 1/m so that the
parameter gradients, accumulated over the m micro-batches, are those of the mean loss.

ZB-H1's split backward (`_Deferred`), the paper's split for linear layers (Qi et al. 2023 §2:
B = ∂L/∂x, W = ∂L/∂W): during F each linear layer records its input. B is one backward, freeing the graph, to the stage's input,
the linear layers' outputs and the parameters of every other layer (norms, embeddings, stacked
experts, the vocabulary head, blocks that recompute: their weight gradients stay in B); the
input gradient goes on at once. W, later, computes each linear layer's weight gradient from
its input and output gradient, gᵀx (and Σg for its bias), and hands it to autograd
(`_GradientOf`), so that it accumulates into `.grad` and fires the post-accumulate-grad hooks
data parallelism reduces from. Nothing is computed twice (B + W do one backward's products);
between B and W a rank holds only the linear layers' inputs and output gradients (the paper's
M_W, §3 Table 1), for up to rank + 1 micro-batches (`PipelineResult.peak_awaiting_w`).

Communication, deadlock-free by construction: a rank blocks only in the receive of its next
task's input; sends never block (`isend`). (Blocking sends deadlock 1F1B at its first steady
step, rank 0 sending F1 while rank 1 sends B0's gradient: a gloo send, like an NCCL one,
completes only once its receive is posted.) That is the simulator's model (a rank waits for its
next task's input and nothing else), under which `simulate` asserts the three schedules finish,
so the runtime finishes whenever the simulation does. Messages between two ranks are matched in
the order they are posted (NCCL ignores tags), so a rank must produce its messages to each peer
in the order that peer consumes them. The three orders do (with pp = 2 and interleaving, both
activations and gradients flow from rank 0 to rank 1, and still in order); `send_orders` reads
the consumer's order off its task list and every send asserts it. Megatron-LM instead pairs each
send with the receive of the next step in one `batch_isend_irecv` (its `p2p_communication.py`);
that is what NCCL needs, where a send and a receive to the same peer share a stream. This engine
is exercised on gloo, whose sends progress in the background.

Activation memory: a micro-batch's tensors on a chunk (its input and output, and through their
autograd graph everything the forward saved) are dropped right after its backward (after W
under ZB-H1, see above), so a rank
holds what the schedule holds: `simulator.memory.in_flight_microbatches` · vpp chunks at peak.

The loss is known on the rank that owns the last virtual stage; `run_pipeline` returns it there
and None on every other rank (broadcast it over the pp group where every rank needs it).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from parasim.runtime.model import Linear
from parasim.runtime.timing import synchronize
from parasim.simulator.errors import SpecError
from parasim.simulator.layout import Layout
from parasim.simulator.placement import axis_groups
from parasim.simulator.schedule import Task, rank_tasks

SUPPORTED_SCHEDULES = ("gpipe", "1f1b", "interleaved", "zero-bubble")
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ChunkHook = Callable[[int], None]
Key = tuple[str, int, int]  # a message: (consuming task kind F|B, micro-batch, consuming stage)


@dataclass(frozen=True, kw_only=True)
class PipelineLink:
    """Where this process sits in its pipeline and what travels between stages."""

    layout: Layout  # pp, vpp and schedule
    rank: int  # this process's pipeline rank, 0 .. pp-1
    peers: tuple[int, ...]  # global rank of each pipeline rank (a row of axis_groups(.., "pp"))
    activation_shape: tuple[int, ...]  # of every activation and gradient sent: (mb, seq, hidden)
    dtype: torch.dtype = torch.float32  # of every tensor sent
    device: str = "cpu"  # where received tensors are allocated: cpu | cuda
    group: dist.ProcessGroup | None = None  # the pp group; None: the default group

    def __post_init__(self) -> None:
        assert len(self.peers) == self.layout.pp, (self.peers, self.layout.pp)
        assert 0 <= self.rank < self.layout.pp, self.rank

    @property
    def last_stage(self) -> int:
        return self.layout.num_virtual_stages - 1

    def stage(self, chunk: int) -> int:
        """The virtual stage of this rank's chunk `chunk`."""
        return chunk * self.layout.pp + self.rank

    def owner(self, stage: int) -> int:
        """The global rank that runs virtual stage `stage`."""
        return self.peers[stage % self.layout.pp]


@dataclass(frozen=True, kw_only=True)
class PhaseTimes:
    """Seconds this rank spent in each phase of the step (wall clock, device synchronized)."""

    forward_s: float  # forward compute, the loss included on the last stage
    backward_s: float  # backward compute (B and W under ZB-H1)
    p2p_wait_s: float  # blocked in receives, posting sends, waiting for sends to complete
    total_s: float  # the whole step on this rank; the rest is bookkeeping


@dataclass(frozen=True, kw_only=True)
class PipelineResult:
    """What one step of the pipeline gives back on one rank."""

    loss: float | None  # mean loss over the micro-batches on the last stage's rank, else None
    times: PhaseTimes
    peak_held: int  # most (micro-batch, chunk) activation sets this rank held for B at once
    peak_awaiting_w: int = 0  # ZB-H1: most micro-batches between their B and their W at once


def pipeline_link(layout: Layout, global_rank: int, activation_shape: tuple[int, ...], *,
                  dtype: torch.dtype = torch.float32, device: str = "cpu",
                  group: dist.ProcessGroup | None = None) -> PipelineLink:
    """The link of `global_rank`, its peers found with `simulator.placement.axis_groups`
    (layout.dp must be resolved). `group` is the pp group of those peers, made by the caller."""
    groups = axis_groups(layout, "pp")
    rows, columns = np.nonzero(groups == global_rank)
    assert len(rows) == 1, f"rank {global_rank} is not in a pipeline of {layout}"
    peers = tuple(int(r) for r in groups[rows[0]])
    return PipelineLink(layout=layout, rank=int(columns[0]), peers=peers,
                        activation_shape=tuple(activation_shape), dtype=dtype, device=device,
                        group=group)


def check_schedule(layout: Layout, microbatches: int) -> None:
    """The schedules this runtime executes, with micro-batch counts they can take."""
    if layout.schedule not in SUPPORTED_SCHEDULES:
        raise SpecError("parallel.schedule", layout.schedule,
                        "the runtime executes fixed task orders only",
                        ", ".join(SUPPORTED_SCHEDULES))
    if layout.schedule == "interleaved" and microbatches % layout.pp:
        raise SpecError("parallel.schedule", layout.schedule,
                        f"takes micro-batches pp={layout.pp} at a time (Megatron-LM), but there "
                        f"are {microbatches}",
                        f"a number of micro-batches divisible by {layout.pp}")
    assert microbatches >= 1, microbatches


def run_pipeline(chunks: Sequence[nn.Module], link: PipelineLink, *, microbatches: int,
                 inputs: Sequence[torch.Tensor] | None = None,
                 targets: Sequence[torch.Tensor] | None = None, loss_fn: LossFn | None = None,
                 side_inputs: Sequence[tuple[Any, ...]] | None = None,
                 on_chunk_backward_done: ChunkHook | None = None) -> PipelineResult:
    """Forward and backward of `microbatches` micro-batches through this rank's `chunks`
    (chunk c = virtual stage c·pp + rank), in the schedule's order.

    `inputs[i]` feeds virtual stage 0 (needed on pipeline rank 0 only); the last virtual
    stage computes `loss_fn(output, targets[i]) / microbatches`. Every chunk is called as
    `chunk(x, *side_inputs[i])`: per micro-batch arguments every rank has and nothing sends (the
    tokens' positions of `runtime.model.Chunk`); none by default. Parameter gradients accumulate
    into `.grad` over the micro-batches (zero them before the step). `on_chunk_backward_done(c)`
    runs once chunk c's last backward is done (its last W under ZB-H1: its gradients are then
    final) and its input gradient is on its way (a data-parallel gradient reduction may start
    there). The loss is returned on the rank of the
    last virtual stage, None elsewhere. Raises SpecError for a schedule it does not run."""
    check_schedule(link.layout, microbatches)
    assert len(chunks) == link.layout.vpp, (len(chunks), link.layout.vpp)
    if link.rank == 0:
        assert inputs is not None and len(inputs) == microbatches, "stage 0 needs every input"
    if link.last_stage % link.layout.pp == link.rank:
        assert loss_fn is not None and targets is not None and len(targets) == microbatches
    if side_inputs is None:
        side_inputs = [()] * microbatches
    assert len(side_inputs) == microbatches, (len(side_inputs), microbatches)
    runner = _Runner(chunks=list(chunks), link=link, microbatches=microbatches, inputs=inputs,
                     targets=targets, loss_fn=loss_fn, side_inputs=side_inputs,
                     hook=on_chunk_backward_done)
    return runner.run(rank_tasks(link.layout, link.rank, microbatches))


def send_orders(layout: Layout, rank: int, microbatches: int) -> dict[int, deque[Key]]:
    """For each pipeline rank that `rank` sends to, the messages in the order it consumes them
    (read off its task list): the order in which `rank` must post them."""
    pp, last = layout.pp, layout.num_virtual_stages - 1
    orders: dict[int, deque[Key]] = {}
    for consumer in range(pp):
        for task in rank_tasks(layout, consumer, microbatches):
            if task.kind == "W":  # its input is its own B's
                continue
            stage = task.chunk * pp + consumer
            source = _source_stage(task.kind, stage, last)
            if source is not None and source % pp == rank:
                orders.setdefault(consumer, deque()).append((task.kind, task.microbatch, stage))
    return orders


def _source_stage(kind: str, stage: int, last: int) -> int | None:
    """The virtual stage that sends the input of task `kind` on `stage`: v-1 for F, v+1 for B;
    None at the ends (stage 0's inputs are given, the last stage's loss is its own)."""
    if kind == "F":
        return stage - 1 if stage > 0 else None
    assert kind == "B", kind
    return stage + 1 if stage < last else None


@dataclass
class _Clock:
    """Seconds accumulated per phase (mutable, private to one step)."""

    device: str
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(
        ("forward", "backward", "p2p_wait"), 0.0))

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        synchronize(self.device)
        start_s = time.perf_counter()
        yield
        synchronize(self.device)
        self.seconds[name] += time.perf_counter() - start_s

    def freeze(self, total_s: float) -> PhaseTimes:
        return PhaseTimes(forward_s=self.seconds["forward"], backward_s=self.seconds["backward"],
                          p2p_wait_s=self.seconds["p2p_wait"], total_s=total_s)


class _Outbox:
    """Non-blocking sends, checked against the order each peer consumes them in."""

    def __init__(self, link: PipelineLink, orders: dict[int, deque[Key]]):
        self.link, self.orders = link, orders
        self.in_flight: list[tuple[Any, torch.Tensor]] = []  # (work, tensor kept alive)

    def put(self, key: Key, tensor: torch.Tensor) -> None:
        """Send `tensor` to the consumer of message `key` without waiting for it."""
        assert tuple(tensor.shape) == self.link.activation_shape, (tensor.shape, key)
        assert tensor.dtype == self.link.dtype, (tensor.dtype, key)
        peer = key[2] % self.link.layout.pp
        expected = self.orders[peer].popleft()
        assert expected == key, f"rank {self.link.rank} sends {key} before {expected}"
        self.in_flight = [(w, t) for w, t in self.in_flight if not w.is_completed()]
        tensor = tensor.detach().contiguous()
        work = dist.isend(tensor, dst=self.link.peers[peer], group=self.link.group)
        self.in_flight.append((work, tensor))

    def drain(self) -> None:
        """Wait for every send; all that the peers consume must have been sent."""
        assert not any(self.orders.values()), "messages left unsent"
        for work, _ in self.in_flight:
            work.wait()
        self.in_flight = []


class _GradientOf(torch.autograd.Function):
    """Hands a computed gradient to a parameter through autograd, so that it accumulates into
    `.grad` as a backward's would (post-accumulate-grad hooks included)."""

    @staticmethod
    def forward(ctx: Any, param: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        ctx.grad = grad
        return param.new_zeros(())

    @staticmethod
    def backward(ctx: Any, _: torch.Tensor) -> tuple[torch.Tensor, None]:
        return ctx.grad, None


def _deferrable(chunk: nn.Module) -> list[nn.Module]:
    """The linear layers of `chunk` whose weight gradients W computes: all but those inside a
    block that recomputes its forward in the backward (`runtime.model.Block.checkpoint`),
    whose inputs W would otherwise keep from F."""
    recomputed = {id(m) for block in chunk.modules() if getattr(block, "checkpoint", None)
                  for m in block.modules()}
    return [m for m in chunk.modules() if isinstance(m, (nn.Linear, Linear))
            and m.weight.requires_grad and id(m) not in recomputed]


@dataclass
class _Deferred:
    """ZB-H1's W of one micro-batch on one chunk: each deferred linear layer's input (from F)
    and output gradient (from B)."""

    layers: list[tuple[nn.Module, torch.Tensor, torch.Tensor | None]] = field(
        default_factory=list)  # (linear, its input, its output until B)
    grads: list[torch.Tensor | None] = field(default_factory=list)

    @contextmanager
    def recording(self, chunk: nn.Module) -> Iterator[None]:
        """During F: record the input and output of each of `chunk`'s deferrable linears."""
        def record(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            assert all(m is not module for m, _, _ in self.layers), \
                f"{type(module).__name__} runs twice in one forward"
            if output.requires_grad:
                self.layers.append((module, args[0].detach(), output))
        handles = [m.register_forward_hook(record) for m in _deferrable(chunk)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def input_gradient(self, chunk: nn.Module, x: torch.Tensor, y: torch.Tensor,
                       grad: torch.Tensor | None) -> torch.Tensor | None:
        """B: one backward to the stage's input, the recorded linears' outputs and the
        parameters of every other layer (norms, embeddings, experts, the head, recomputed
        blocks: their weight gradients are not deferred), freeing the graph; the linears'
        weight gradients are not computed."""
        deferred = {id(p) for m, _, _ in self.layers for p in m.parameters(recurse=False)}
        others = [p for p in chunk.parameters() if p.requires_grad and id(p) not in deferred]
        outputs = [out for _, _, out in self.layers]
        wanted = ([x] if x.requires_grad else []) + outputs + others
        torch.autograd.backward(y, grad, inputs=wanted)
        self.grads = [out.grad for out in outputs]
        self.layers = [(m, inputs, None) for m, inputs, _ in self.layers]  # drop the graph
        return x.grad if x.requires_grad else None

    def weight_gradients(self) -> None:
        """W: each linear's weight gradient, gᵀx (and its bias's, Σg), into `.grad`."""
        for (module, inputs, _), grad in zip(self.layers, self.grads, strict=True):
            if grad is None:
                continue
            g = grad.reshape(-1, grad.shape[-1])
            rows = getattr(module, "rows", None)
            _accumulate(module.weight, g.t() @ inputs.reshape(-1, inputs.shape[-1]), rows)
            if module.bias is not None and module.bias.requires_grad:
                scale = getattr(module, "bias_scale", 1.0)
                _accumulate(module.bias, g.sum(0) * scale if scale != 1.0 else g.sum(0), rows)
        self.layers, self.grads = [], []


def _accumulate(param: nn.Parameter, grad: torch.Tensor, rows: slice | None) -> None:
    """`grad` (of `param[rows]` where rows is set) into `param.grad`, through autograd."""
    if rows is not None:
        grad = torch.zeros_like(param).index_copy_(
            0, torch.arange(param.shape[0], device=param.device)[rows], grad)
    torch.autograd.backward(_GradientOf.apply(param, grad))


class _Runner:
    """One step of one pipeline rank: its tasks in order, with what they hold and time."""

    def __init__(self, *, chunks: list[nn.Module], link: PipelineLink, microbatches: int,
                 inputs: Sequence[torch.Tensor] | None, targets: Sequence[torch.Tensor] | None,
                 loss_fn: LossFn | None, side_inputs: Sequence[tuple[Any, ...]],
                 hook: ChunkHook | None):
        self.chunks, self.link, self.m = chunks, link, microbatches
        self.inputs, self.targets, self.loss_fn, self.hook = inputs, targets, loss_fn, hook
        self.side_inputs = side_inputs
        self.outbox = _Outbox(link, send_orders(link.layout, link.rank, microbatches))
        self.clock = _Clock(link.device)
        self.held: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor, _Deferred]] = {}
        self.awaiting_w: dict[tuple[int, int], _Deferred] = {}  # ZB-H1: B done, W not yet
        self.split = link.layout.schedule == "zero-bubble"
        self.peak_held = self.peak_awaiting_w = 0
        self.backwards_left = [microbatches] * len(chunks)
        self.losses: list[torch.Tensor] = []

    def run(self, tasks: list[Task]) -> PipelineResult:
        start_s = time.perf_counter()
        for task in tasks:
            if task.kind == "F":
                self.forward(task.chunk, task.microbatch)
            elif task.kind == "B":
                self.backward(task.chunk, task.microbatch)
            else:
                self.weight(task.chunk, task.microbatch)
        with self.clock.phase("p2p_wait"):
            self.outbox.drain()
        assert not self.held and not self.awaiting_w, \
            f"activations left: {sorted(self.held)}, {sorted(self.awaiting_w)}"
        loss = float(torch.stack(self.losses).sum()) if self.losses else None
        return PipelineResult(loss=loss, times=self.clock.freeze(time.perf_counter() - start_s),
                              peak_held=self.peak_held, peak_awaiting_w=self.peak_awaiting_w)

    def forward(self, chunk: int, microbatch: int) -> None:
        """F: receive (or take) the input, run the chunk, hold both, send the output on."""
        stage = self.link.stage(chunk)
        x = self.inputs[microbatch] if stage == 0 else self.receive(("F", microbatch, stage))
        deferred = _Deferred()
        with self.clock.phase("forward"), \
                deferred.recording(self.chunks[chunk]) if self.split else nullcontext():
            y = self.chunks[chunk](x, *self.side_inputs[microbatch])
        with self.clock.phase("forward"):
            if stage == self.link.last_stage:
                y = self.loss_fn(y, self.targets[microbatch]) / self.m
                self.losses.append(y.detach())
        self.held[(chunk, microbatch)] = (x, y, deferred)
        self.peak_held = max(self.peak_held, len(self.held))
        if stage < self.link.last_stage:
            with self.clock.phase("p2p_wait"):
                self.outbox.put(("F", microbatch, stage + 1), y)

    def backward(self, chunk: int, microbatch: int) -> None:
        """B: receive the output gradient, backpropagate (under ZB-H1 all but the linear weight
        gradients, `_Deferred.input_gradient`), free the micro-batch's graph, send the input
        gradient back; after the chunk's last backward (under ZB-H1 its last W), call the
        hook."""
        stage = self.link.stage(chunk)
        x, y, deferred = self.held.pop((chunk, microbatch))
        grad = None if stage == self.link.last_stage else self.receive(("B", microbatch, stage))
        with self.clock.phase("backward"):
            if self.split:
                x_grad = deferred.input_gradient(self.chunks[chunk], x, y, grad)
            else:
                torch.autograd.backward(y, grad)
                x_grad = x.grad
        del x, y, grad
        if stage > 0:
            assert x_grad is not None, f"stage {stage}'s output does not depend on its input"
            with self.clock.phase("p2p_wait"):
                self.outbox.put(("B", microbatch, stage - 1), x_grad)
        if self.split:
            self.awaiting_w[(chunk, microbatch)] = deferred
            self.peak_awaiting_w = max(self.peak_awaiting_w, len(self.awaiting_w))
        else:
            self.backward_done(chunk)

    def weight(self, chunk: int, microbatch: int) -> None:
        """W (ZB-H1): the micro-batch's linear weight gradients; its linear inputs and output
        gradients are dropped."""
        deferred = self.awaiting_w.pop((chunk, microbatch))
        with self.clock.phase("backward"):
            deferred.weight_gradients()
        self.backward_done(chunk)

    def backward_done(self, chunk: int) -> None:
        """One more micro-batch's gradients are in; after the chunk's last, call the hook."""
        self.backwards_left[chunk] -= 1
        if self.backwards_left[chunk] == 0 and self.hook is not None:
            self.hook(chunk)

    def receive(self, key: Key) -> torch.Tensor:
        """Block until the input of task `key` arrives from the stage that produces it."""
        kind, _, stage = key
        source = _source_stage(kind, stage, self.link.last_stage)
        buffer = torch.empty(self.link.activation_shape, dtype=self.link.dtype,
                             device=self.link.device)
        with self.clock.phase("p2p_wait"):
            dist.recv(buffer, src=self.link.owner(source), group=self.link.group)
        return buffer.requires_grad_(kind == "F")
