"""Pipeline schedules as task lists, and a discrete-event simulation of one replica.

Each pipeline rank runs an ordered list of tasks: F (forward of one micro-batch through one of
its model chunks), B (backward; with ZB-H1 only the input gradient) and W (ZB-H1's deferred
weight gradient). Virtual stage v = chunk·pp + rank holds layers in pipeline order; F on stage v
needs F on v-1 (and the activation sent from it), B on stage v needs B on v+1 (and the gradient
sent back), the last stage's B needs its own F. A rank runs its list in order, each task as
soon as the rank is free and its input has arrived.

Orders: GPipe runs all forwards, then all backwards (Huang et al. 2019). 1F1B warms up with
pp - rank - 1 forwards, then alternates one forward and one backward, then drains (Narayanan
et al. 2021, PipeDream-Flush). Interleaved 1F1B is Megatron-LM's
`forward_backward_pipelining_with_interleaving`: 2·(pp - rank - 1) + (vpp - 1)·pp warm-up
chunks, micro-batches taken pp at a time through each chunk in turn. ZB-H1 splits the backward:
B sends the input gradient on at once and W, deferred, fills the bubbles, with pp - rank
micro-batches waiting for their B as in 1F1B (Qi et al. 2023, "Zero Bubble Pipeline
Parallelism", §3.1; the paper's handcrafted order, `zero_bubble_h1`). Every order is fixed
before the step: the runtime (runtime/parallel/pipeline.py) executes the same lists.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Literal

from parasim.simulator.layout import Layout

TaskKind = Literal["F", "B", "W"]


@dataclass(frozen=True)
class Task:
    """One unit of a rank's work."""

    kind: TaskKind
    microbatch: int
    chunk: int  # model chunk on this rank (0 .. vpp-1)


@dataclass(frozen=True)
class Interval:
    """Something a rank did, for the timeline and the Chrome trace."""

    rank: int  # pipeline rank
    stream: str  # "compute" or a communication stream ("tp", "cp", "ep", "pp", "dp")
    name: str  # e.g. "F3.1" (micro-batch 3, chunk 1)
    start_s: float
    end_s: float
    task: Task | None = None  # the pipeline task this interval is (part of), if any


def rank_tasks(layout: Layout, rank: int, microbatches: int) -> list[Task]:
    """The ordered task list of pipeline rank `rank` (GPipe, 1F1B, interleaved, ZB-H1)."""
    pp, m = layout.pp, microbatches
    if layout.schedule == "zero-bubble":
        return zero_bubble_h1(pp, rank, m)
    if layout.schedule == "gpipe":
        return [Task("F", i, 0) for i in range(m)] + [Task("B", i, 0) for i in range(m)]
    if layout.schedule == "interleaved":
        return _interleaved(pp, layout.vpp, rank, m)
    warmup = min(pp - rank - 1, m)
    order = [Task("F", i, 0) for i in range(warmup)]
    for i in range(m - warmup):
        order += [Task("F", warmup + i, 0), Task("B", i, 0)]
    order += [Task("B", i, 0) for i in range(m - warmup, m)]
    return order


def _interleaved(pp: int, vpp: int, rank: int, m: int) -> list[Task]:
    """Megatron-LM's interleaved order: the k-th forward is micro-batch
    (k // (pp·vpp))·pp + k % pp on chunk (k // pp) % vpp; backwards mirror it on the chunks."""
    total = m * vpp

    def forward(k: int) -> Task:
        return Task("F", (k // (pp * vpp)) * pp + k % pp, (k // pp) % vpp)

    def backward(k: int) -> Task:
        return Task("B", (k // (pp * vpp)) * pp + k % pp, vpp - 1 - (k // pp) % vpp)

    warmup = min(2 * (pp - rank - 1) + (vpp - 1) * pp, total)
    order = [forward(k) for k in range(warmup)]
    for k in range(total - warmup):
        order += [forward(warmup + k), backward(k)]
    order += [backward(k) for k in range(total - warmup, total)]
    return order


def zero_bubble_h1(pp: int, rank: int, m: int) -> list[Task]:
    """ZB-H1's handcrafted order (Qi et al. 2023, "Zero Bubble Pipeline Parallelism", §3.1,
    Figure 3): step x = 0 .. m + pp - 2 runs F_x, then B_(x - (pp - 1 - rank)), then
    W_(x - (pp - 1)), each where its micro-batch exists. B lags F as in 1F1B (pp - rank - 1
    warm-up forwards, so pp - rank micro-batches wait for their B, 1F1B's activation memory);
    W lags F by pp - 1 on every rank, so that the W's the first rank cannot defer (its B's
    come last) are what the later ranks' deferred W's fill: the bubble is (pp - 1)(F + B - W)
    against 1F1B's (pp - 1)(F + B + W), §3.1. Rank r holds up to r + 1 micro-batches between
    B and W (their linear layers' inputs and output gradients, the paper's M_W, Table 1). A
    policy that capped F to W at pp - rank micro-batches (this module's before) missed the
    paper's bubble by (pp - 1)·W: the last rank cannot defer a single W. The step pattern is
    as transcribed from the paper in jayhenry/blog `pp-summary.md` (which cites the
    sail-sg/zero-bubble-pipeline-parallelism code); the bubble it gives is pinned to the
    paper's formula in tests/test_schedule.py."""
    order = []
    for x in range(m + pp - 1):
        for kind, i in (("F", x), ("B", x - (pp - 1 - rank)), ("W", x - (pp - 1))):
            if 0 <= i < m:
                order.append(Task(kind, i, 0))
    return order


@dataclass(frozen=True)
class TaskTimes:
    """Seconds of each task kind on one virtual stage, for one micro-batch."""

    forward_s: float
    backward_s: float  # all of the backward, or only the input gradient under ZB-H1
    weight_s: float = 0.0  # ZB-H1's deferred weight gradient
    send_s: float = 0.0  # sending this stage's output activation (or input gradient)


@dataclass(frozen=True)
class Timeline:
    """The simulated step of one replica: when each rank finished and what it did."""

    finish_s: tuple[float, ...]  # per pipeline rank: end of its last task
    busy_s: tuple[float, ...]  # per pipeline rank: seconds of compute
    intervals: tuple[Interval, ...]
    peak_in_flight: tuple[float, ...]  # per rank: most micro-batch-chunks held at once / vpp
    path_send_s: tuple[float, ...] = ()  # per rank: seconds of sends on the longest chain of
    # tasks and sends that ends with its last task (the pipeline communication it waited for)

    @property
    def makespan_s(self) -> float:
        return max(self.finish_s)


def simulate(layout: Layout, microbatches: int, times: list[TaskTimes],
             record: bool = False) -> Timeline:
    """Run every rank's tasks in time order; `times[v]` are virtual stage v's costs.

    Events are (time, rank): a rank's own task ending, or an input arriving for it (an
    activation from the stage before, a gradient from the stage after). At each event the rank,
    if idle, takes the first task its policy offers whose input is there.

    Each task also carries the seconds of sends on the chain that decided when it started:
    its input's chain plus that input's send when it waited for the input, else the chain of
    the rank's task before it. A rank's last task's (`path_send_s`) is what sends added to
    its finish: the rest of its idle time is the bubble of equal-cost closed forms."""
    pp, stages = layout.pp, layout.pp * layout.vpp
    assert len(times) == stages
    policies = [_policy(layout, r, microbatches) for r in range(pp)]
    arrivals = _Arrivals(pp, stages, times)
    durations = [{"F": t.forward_s, "B": t.backward_s, "W": t.weight_s} for t in times]
    clock, busy, held, peak = [0.0] * pp, [0.0] * pp, [0] * pp, [0] * pp
    chain = [0.0] * pp  # per rank: sends on the chain of its last task
    done, sends = arrivals.done, arrivals.sends
    intervals: list[Interval] = []
    events = [(0.0, rank) for rank in range(pp)]
    while events:
        now, rank = heapq.heappop(events)
        if clock[rank] > now or policies[rank].finished:
            continue
        task = policies[rank].pick(now, arrivals, rank)
        if task is None:
            continue
        kind, stage = task.kind, task.chunk * pp + rank
        cost = times[stage]
        if kind != "W":  # a W's input is its own B, done before: the rank's chain goes on
            source, send = arrivals.last  # the input `pick` just found there
            if source is not None and done[source] + send >= clock[rank]:
                via = sends[source] + send
                if done[source] + send > clock[rank] or via > chain[rank]:
                    chain[rank] = via
        end = now + durations[stage][kind]
        key = (kind, task.microbatch, stage)
        done[key], sends[key] = end, chain[rank]
        heapq.heappush(events, (end, rank))
        if kind == "F":  # wakes the next stage (the last stage's own backward)
            if stage + 1 < stages:
                heapq.heappush(events, (end + cost.send_s, (stage + 1) % pp))
            else:
                heapq.heappush(events, (end, rank))
        elif kind == "B" and stage > 0:  # wakes the stage before (`_consumer`)
            heapq.heappush(events, (end + cost.send_s, (stage - 1) % pp))
        clock[rank], busy[rank] = end, busy[rank] + end - now
        held[rank] += 1 if kind == "F" else -1 if kind == "B" else 0  # W keeps W's inputs
        peak[rank] = max(peak[rank], held[rank])
        if record:
            intervals.append(Interval(rank, "compute", f"{kind}{task.microbatch}."
                                      f"{task.chunk}", now, end, task))
    assert all(p.finished for p in policies), "pipeline schedule deadlocked"
    return Timeline(tuple(clock), tuple(busy), tuple(intervals),
                    tuple(p / layout.vpp for p in peak), tuple(chain))


PASS_STREAMS = ("compute", "tp", "cp", "ep")  # the parts of a task, in drawing order


def with_streams(intervals: tuple[Interval, ...], pp: int,
                 parts: list[dict[str, dict[str, float]]], sends_s: list[float],
                 sends_to=None) -> tuple[Interval, ...]:
    """A recorded step (`simulate(..., record=True)`) with its communication drawn: each task
    split into its compute and each axis's exposed communication, `parts[stage][kind][stream]`
    seconds (a task interleaves them layer by layer; the trace sums them per task, compute
    first), and each activation or gradient sent to another rank, `sends_s[stage]` seconds, on
    the sender's "pp" stream. The simulation lets sends overlap; a rank's "pp" track draws one
    that would overlap the one before it from that one's end. Intervals without a task are
    kept as they are. `sends_to(task, rank)`, where given, names the stage a task sends to
    (None: no send), for layouts whose chunk c of rank r is not stage c·pp + r."""
    stages = len(parts)
    out: list[Interval] = []
    drawn_until = [0.0] * pp
    for interval in sorted(intervals, key=lambda i: (i.start_s, i.rank)):
        task = interval.task
        if task is None:
            out.append(interval)
            continue
        stage = task.chunk * pp + interval.rank
        out += _split(interval, parts[stage][task.kind])
        if sends_to is None:
            consumer = _consumer(task, stage, stages)
            consumer = None if consumer == stage else consumer
        else:
            consumer = sends_to(task, interval.rank)
        if consumer is not None and sends_s[stage] > 0:
            start = max(interval.end_s, drawn_until[interval.rank])
            drawn_until[interval.rank] = start + sends_s[stage]
            out.append(Interval(interval.rank, "pp", f"send {interval.name} to stage "
                                f"{consumer}", start, start + sends_s[stage], task))
    return tuple(out)


def _split(interval: Interval, seconds: dict[str, float]) -> list[Interval]:
    """One task's interval as consecutive pieces per stream (the last one ends with it)."""
    shown = [(stream, seconds.get(stream, 0.0)) for stream in PASS_STREAMS]
    shown = [(stream, s) for stream, s in shown if s > 0] or [("compute", 0.0)]
    pieces, start = [], interval.start_s
    for index, (stream, s) in enumerate(shown):
        end = interval.end_s if index == len(shown) - 1 else min(start + s, interval.end_s)
        name = interval.name if stream == "compute" else f"{interval.name} {stream}"
        pieces.append(Interval(interval.rank, stream, name, start, end, interval.task))
        start = end
    return pieces


def _consumer(task: Task, stage: int, stages: int) -> int | None:
    """The virtual stage that waits for this task's output."""
    if task.kind == "F":
        return stage + 1 if stage + 1 < stages else stage  # the last stage turns around
    if task.kind == "B":
        return stage - 1 if stage > 0 else None
    return None


class _FixedOrder:
    """Runs a precomputed order: the next task when its input is there."""

    def __init__(self, order: list[Task]):
        self.order, self.position = order, 0

    @property
    def finished(self) -> bool:
        return self.position == len(self.order)

    def pick(self, now: float, arrival: _Arrivals, rank: int) -> Task | None:
        task = self.order[self.position]
        ready = arrival(task, rank)
        if ready is None or ready > now:
            return None
        self.position += 1
        return task


def _policy(layout: Layout, rank: int, microbatches: int) -> _FixedOrder:
    return _FixedOrder(rank_tasks(layout, rank, microbatches))


class _Arrivals:
    """When a task's input is on its rank: its producer's end, plus the send between ranks."""

    def __init__(self, pp: int, stages: int, times: list[TaskTimes]):
        self.pp, self.stages, self.times = pp, stages, times
        self.done: dict[tuple[str, int, int], float] = {}  # (kind, microbatch, stage) -> end
        self.sends: dict[tuple[str, int, int], float] = {}  # ... -> sends on its chain
        self.last: tuple[tuple[str, int, int] | None, float] = (None, 0.0)  # the input found by
        # the last call (`simulate` reads it for the task a policy picks): (its key, its send)

    def __call__(self, task: Task, rank: int) -> float | None:
        """None while the producer has not run."""
        stage = task.chunk * self.pp + rank
        if task.kind == "F":
            if stage == 0:
                self.last = (None, 0.0)
                return 0.0
            key, sender = ("F", task.microbatch, stage - 1), stage - 1
        elif task.kind == "W":
            key, sender = ("B", task.microbatch, stage), None
        elif stage == self.stages - 1:
            key, sender = ("F", task.microbatch, stage), None
        else:
            key, sender = ("B", task.microbatch, stage + 1), stage + 1
        end = self.done.get(key)
        if end is None:
            return None
        send = self.times[sender].send_s if sender is not None else 0.0
        self.last = (key, send)
        return end + send
