"""Pipeline schedules as task lists, and the timing of one replica running them.

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

Timing (`sweep`): because the orders are fixed, a task starts at the later of its rank's end of
the task before it and its input's arrival (the producer's end plus the send), so no event
queue is needed: each rank is advanced through its list while the next task's input has been
computed, and a rank that waits is resumed when the rank it waits on has moved past the
producer. This gives the same times, float for float, as a discrete-event simulation with
(time, rank) events in which an idle rank takes its next task once the input is there (this
module's implementation before), at a fraction of its cost; `start_order` puts the tasks in
the order such a simulation starts them, for the recorded timeline.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from functools import lru_cache
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
    return list(_rank_order(layout.schedule, layout.pp, layout.vpp, rank, microbatches))


@lru_cache(maxsize=512)
def _rank_order(schedule: str, pp: int, vpp: int, rank: int, m: int) -> tuple[Task, ...]:
    if schedule == "zero-bubble":
        return tuple(zero_bubble_h1(pp, rank, m))
    if schedule == "gpipe":
        return tuple([Task("F", i, 0) for i in range(m)] + [Task("B", i, 0) for i in range(m)])
    if schedule == "interleaved":
        return tuple(_interleaved(pp, vpp, rank, m))
    warmup = min(pp - rank - 1, m)
    order = [Task("F", i, 0) for i in range(warmup)]
    for i in range(m - warmup):
        order += [Task("F", warmup + i, 0), Task("B", i, 0)]
    order += [Task("B", i, 0) for i in range(m - warmup, m)]
    return tuple(order)


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
    """Time every rank's tasks (`sweep`); `times[v]` are virtual stage v's costs.

    Each task also carries the seconds of sends on the chain that decided when it started:
    its input's chain plus that input's send when it waited for the input, else the chain of
    the rank's task before it. A rank's last task's (`path_send_s`) is what sends added to
    its finish: the rest of its idle time is the bubble of equal-cost closed forms."""
    pp, vpp = layout.pp, layout.vpp
    assert len(times) == pp * vpp
    plan = _plan(layout.schedule, pp, vpp, microbatches)
    duration_s = [s for t in times for s in (t.forward_s, t.backward_s, t.weight_s)]
    swept = sweep(plan.steps, duration_s, [t.send_s for t in times] + [0.0])
    busy = []
    for starts, ends in zip(swept.start_s, swept.end_s):
        total = 0.0
        for start, end in zip(starts, ends):
            total = total + end - start  # (busy + end) - start, to the last bit as before
        busy.append(total)
    intervals = ()
    if record:
        intervals = tuple(_interval(rank, plan.tasks[rank][i], swept.start_s[rank][i],
                                    swept.end_s[rank][i])
                          for rank, i in start_order(plan.steps, swept.start_s))
    return Timeline(swept.finish_s, tuple(busy), intervals,
                    tuple(p / vpp for p in plan.peak), swept.path_send_s)


def _interval(rank: int, task: Task, start_s: float, end_s: float) -> Interval:
    return Interval(rank, "compute", f"{task.kind}{task.microbatch}.{task.chunk}", start_s,
                    end_s, task)


Step = tuple[int, tuple[tuple[int, int, int], ...]]  # (index of its duration, its inputs:
# (rank, position in that rank's list, index of the send's seconds; -1: no send))


KINDS = ("F", "B", "W")  # a task's cost is durations[stage·3 + its kind's index] in `simulate`


@dataclass(frozen=True)
class _Plan:
    """Everything of a schedule's step that does not depend on the task times."""

    tasks: tuple[tuple[Task, ...], ...]  # per rank, in order
    steps: tuple[tuple[Step, ...], ...]  # the same as `sweep` reads them
    peak: tuple[int, ...]  # per rank: most micro-batch-chunks held at once (F to B)


@lru_cache(maxsize=32)  # up to ~5 MB each (pp 16, vpp 4, m 128); a build costs 3x a sweep
def _plan(schedule: str, pp: int, vpp: int, m: int) -> _Plan:
    """A task's input: an F the F on the stage before (its activation sent from there), a B
    the B on the stage after (its gradient sent back) or on the last stage its own F, a W
    nothing (its B ran before it on the rank)."""
    tasks = tuple(_rank_order(schedule, pp, vpp, rank, m) for rank in range(pp))
    stages = pp * vpp
    where = {(t.kind, t.microbatch, t.chunk * pp + rank): (rank, i)
             for rank, order in enumerate(tasks) for i, t in enumerate(order)}

    def step(task: Task, rank: int) -> Step:
        stage = task.chunk * pp + rank
        if task.kind == "F":
            inputs = ((*where["F", task.microbatch, stage - 1], stage - 1),) if stage else ()
        elif task.kind == "W":
            inputs = ()
        elif stage == stages - 1:
            inputs = ((*where["F", task.microbatch, stage], -1),)
        else:
            inputs = ((*where["B", task.microbatch, stage + 1], stage + 1),)
        return stage * 3 + KINDS.index(task.kind), inputs

    peak = []
    for order in tasks:
        held = most = 0
        for task in order:
            held += 1 if task.kind == "F" else -1 if task.kind == "B" else 0  # W keeps W's inputs
            most = max(most, held)
        peak.append(most)
    return _Plan(tasks, tuple(tuple(step(t, rank) for t in order)
                              for rank, order in enumerate(tasks)), tuple(peak))


@dataclass(frozen=True)
class Swept:
    """When each task of fixed per-rank orders ran (`sweep`)."""

    start_s: list[list[float]]  # per rank, per position in its order
    end_s: list[list[float]]
    finish_s: tuple[float, ...]  # per rank: end of its last task
    path_send_s: tuple[float, ...]  # per rank: sends on the chain of its last task


def sweep(steps: tuple[tuple[Step, ...], ...], duration_s: list[float],
          send_s: list[float]) -> Swept:
    """Start every rank's tasks in order, each at the later of the rank's clock and the last
    arrival of its inputs (their producers' ends plus `send_s[index]`; `send_s[-1]` is the
    no-send 0.0). A rank runs on while its next task's inputs are computed; a rank that waits
    resumes once the rank it waits on has passed the producer. The chain of a task is the
    latest-arriving input's (ties: the longer chain) plus its send when that arrival is not
    before the rank's clock and either arrives later or carries more sends, else the rank's
    previous task's."""
    pp = len(steps)
    start_s = [[0.0] * len(order) for order in steps]
    end_s = [[0.0] * len(order) for order in steps]
    chain_s = [[0.0] * len(order) for order in steps]
    position, clock, chain = [0] * pp, [0.0] * pp, [0.0] * pp
    waiting: list[list[tuple[int, int]]] = [[] for _ in range(pp)]  # per rank: (position it
    # must pass, the rank that waits for it)
    runnable = list(range(pp))
    while runnable:
        rank = runnable.pop()
        order, starts, ends, chains = steps[rank], start_s[rank], end_s[rank], chain_s[rank]
        i, now, path, count = position[rank], clock[rank], chain[rank], len(order)
        while i < count:
            cost, inputs = order[i]
            arrive = via = 0.0
            for source, j, send in inputs:
                if position[source] <= j:
                    break  # not computed yet: wait for `source` to pass j
                seconds = send_s[send]
                at = end_s[source][j] + seconds
                if at >= arrive:
                    sent = chain_s[source][j] + seconds
                    if at > arrive or sent > via:
                        arrive, via = at, sent
            else:
                if arrive >= now:
                    if arrive > now or via > path:
                        path = via
                    now = arrive
                starts[i] = now
                now = ends[i] = now + duration_s[cost]
                chains[i] = path
                i += 1
                position[rank] = i
                continue
            waiting[source].append((j, rank))
            break
        clock[rank], chain[rank] = now, path
        if waiting[rank]:
            runnable += [waiter for j, waiter in waiting[rank] if j < i]
            waiting[rank] = [(j, waiter) for j, waiter in waiting[rank] if j >= i]
    assert all(p == len(order) for p, order in zip(position, steps)), \
        "pipeline schedule deadlocked"
    return Swept(start_s, end_s, tuple(clock), tuple(chain))


def start_order(steps: tuple[tuple[Step, ...], ...],
                start_s: list[list[float]]) -> list[tuple[int, int]]:
    """(rank, position) of every task in the order a discrete-event simulation with (time,
    rank) events starts them: by start time, and among tasks that start at one time by rank,
    except that a task that becomes ready at that time (after a zero-second task) comes after
    those ready before it. Replayed with a heap of the ranks whose next task is ready (its
    predecessor and inputs started), keyed by (its start, rank): in such a simulation a task
    starts at the first event at its start time once it is ready, and there is always one (its
    predecessor's end or its last input's arrival)."""
    consumers: list[list[list[int]]] = [[[] for _ in order] for order in steps]
    for rank, order in enumerate(steps):
        for _, inputs in order:
            for source, j, _ in inputs:
                consumers[source][j].append(rank)
    position, queued = [0] * len(steps), [False] * len(steps)
    heap: list[tuple[float, int]] = []

    def queue_if_ready(rank: int) -> None:
        i = position[rank]
        if not queued[rank] and i < len(steps[rank]) and \
                all(position[source] > j for source, j, _ in steps[rank][i][1]):
            queued[rank] = True
            heapq.heappush(heap, (start_s[rank][i], rank))

    for rank in range(len(steps)):
        queue_if_ready(rank)
    out = []
    while heap:
        _, rank = heapq.heappop(heap)
        i = position[rank]
        position[rank], queued[rank] = i + 1, False
        out.append((rank, i))
        queue_if_ready(rank)
        for consumer in consumers[rank][i]:
            queue_if_ready(consumer)
    return out


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
