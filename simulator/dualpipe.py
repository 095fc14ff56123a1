"""DualPipe and DualPipeV: DeepSeek's bidirectional pipeline schedules, as task lists, and the
timing of one replica running them (`schedule.sweep`: each rank's chunks in their fixed order).

DualPipe (DeepSeek-V3 report, arXiv:2412.19437 §3.2.1, Figure 5) feeds micro-batches from both
ends of the pipeline: rank r holds stage r of one copy of the model (micro-batches entering at
rank 0) and stage pp-1-r of a second copy (entering at rank pp-1). DualPipeV (the "cut-in-half"
V of deepseek-ai/DualPipe, README "DualPipeV") splits the layers into 2·pp stages and gives rank
r stages r and 2·pp-1-r: one copy, each micro-batch goes down the ranks and back up.

Both run the same eight steps on every rank (deepseek-ai/DualPipe dualpipe/dualpipe.py and
dualpipev.py, `step`), with n = pp/2 half-ranks and h = min(r, pp-1-r) for DualPipe, n = pp
and h = r for DualPipeV, and m' micro-batches per phase (m/2 per direction; m for the V):
2(n-h-1) F0 | (h+1) x F0 F1 | (n-h-1) x B1 W F1 | (m'-2n+h+1) x F0&B1 F1&B0 |
(n-h-1) x B1 F1&B0 | (h+1) x B1 B0 | (n-h-1) x W B0 | (h+1) x W.
Phase 0 is the chunk whose micro-batches enter nearer the rank. "F&B" runs one micro-batch's
forward and another's whole backward as one chunk, each one's expert all-to-all and pipeline
sends hidden behind the other's compute (§3.2.1, Figure 4); its duration comes from the cost
model (`step_time`). A backward marked zero-bubble computes the input gradient only and its
weight gradient runs later as W, first in first out (their WeightGradStore).

Simplifications: sends are available at the end of the chunk that produced them plus the send
time (the reference code posts them with the next chunk's receives); the middle ranks' first
steady-state pair runs unoverlapped as in the reference code.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from parasim.simulator.errors import SpecError
from parasim.simulator.layout import Layout, rank_stages
from parasim.simulator.schedule import (Interval, Step, Task, TaskTimes, Timeline,
                                        start_order, sweep)
from parasim.simulator.training import TrainingSpec


@dataclass(frozen=True)
class Chunk:
    """One entry of a rank's DualPipe order: the F, B and W tasks it runs back to back (a
    whole backward is B then W; F&B is an F and another micro-batch's B and W overlapped)."""

    parts: tuple[Task, ...]

    @property
    def overlapped(self) -> bool:
        return len(self.parts) == 3


def dual_orders(layout: Layout, microbatches: int) -> list[list[Chunk]]:
    """Every rank's chunk list (deepseek-ai/DualPipe `step`, the eight steps above)."""
    return [list(_rank_order(layout.schedule, layout.pp, rank, microbatches))
            for rank in range(layout.pp)]


@lru_cache(maxsize=512)
def _rank_order(schedule: str, pp: int, rank: int, microbatches: int) -> tuple[Chunk, ...]:
    dual = schedule == "dualpipe"
    n, h = (pp // 2, min(rank, pp - 1 - rank)) if dual else (pp, rank)
    per_phase = microbatches // 2 if dual else microbatches
    flip = int(dual and rank >= pp // 2)  # second-half ranks: phase 0 is the reverse copy
    counters = {("F", 0): 0, ("F", 1): 0, ("B", 0): 0, ("B", 1): 0}
    deferred: list[Task] = []
    order: list[Chunk] = []

    def task(kind: str, phase: int) -> Task:
        chunk = phase ^ flip
        index = counters[kind, chunk]
        counters[kind, chunk] += 1
        return Task(kind, index + (chunk * per_phase if dual else 0), chunk)

    def forward(phase: int) -> Chunk:
        return Chunk((task("F", phase),))

    def backward(phase: int, zero_bubble: bool = False) -> Chunk:
        b = task("B", phase)
        if zero_bubble:
            deferred.append(Task("W", b.microbatch, b.chunk))
            return Chunk((b,))
        return Chunk((b, Task("W", b.microbatch, b.chunk)))

    def pair(f_phase: int, b_phase: int) -> Chunk:
        f, b = task("F", f_phase), task("B", b_phase)
        return Chunk((f, b, Task("W", b.microbatch, b.chunk)))

    def weight() -> Chunk:
        return Chunk((deferred.pop(0),))

    order += [forward(0) for _ in range(2 * (n - h - 1))]
    for _ in range(h + 1):
        order += [forward(0), forward(1)]
    for _ in range(n - h - 1):
        order += [backward(1, True), weight(), forward(1)]
    for i in range(per_phase - 2 * n + h + 1):
        if i == 0 and h == n - 1:  # "we don't overlap these two chunks" (reference code)
            order += [forward(0), backward(1)]
        else:
            order.append(pair(0, 1))
        order.append(pair(1, 0))
    for _ in range(n - h - 1):
        order += [backward(1), pair(1, 0)]
    zero_bubble = False
    for i in range(h + 1):
        zero_bubble = zero_bubble or (i == (h + 1) // 2 and h % 2 == 1)
        order.append(backward(1, zero_bubble))
        zero_bubble = zero_bubble or (i == (h + 1) // 2 and h % 2 == 0)
        order.append(backward(0, zero_bubble))
    for _ in range(n - h - 1):
        order += [weight(), backward(0, True)]
    order += [weight() for _ in range(h + 1)]
    assert not deferred
    return tuple(order)


def check_dual_microbatches(training: TrainingSpec, layout: Layout, microbatches: int) -> None:
    """At least 2·pp micro-batches, an even number for DualPipe, which feeds half from each
    end (deepseek-ai/DualPipe dualpipe.py: `num_chunks % 2 == 0 and num_chunks >= num_ranks
    * 2`; dualpipev.py: `num_chunks >= num_ranks * 2`)."""
    unit = layout.micro_batch_size * layout.dp
    odd = layout.schedule == "dualpipe" and microbatches % 2
    if microbatches < 2 * layout.pp or odd:
        need = f"at least {2 * layout.pp}" + (", an even number" if layout.schedule ==
                                               "dualpipe" else "")
        raise SpecError("training.global_batch_size", training.global_batch_size,
                        f"gives {microbatches} micro-batches; {layout.schedule} needs {need} "
                        f"(2·pp; deepseek-ai/DualPipe)", f"a multiple of {2 * unit} and at "
                        f"least {2 * layout.pp * unit} (micro_batch_size·dp·2·pp)")


def dual_bubble_s(layout: Layout, forward_s: float, backward_s: float, weight_s: float,
                  overlapped_s: float) -> float:
    """The source's bubble, (PP/2 - 1)(F&B + B - 3W), PP the number of pipeline stages (pp for
    DualPipe, 2·pp for DualPipeV), F, B (whole backward) and W one stage's chunk times and F&B
    an overlapped pair's (deepseek-ai/DualPipe README, "Pipeline Bubbles and Memory Usage
    Comparison"; DeepSeek-V3 report Table 2)."""
    stages = layout.num_virtual_stages
    return (stages / 2 - 1) * (overlapped_s + backward_s - 3 * weight_s)


def dual_in_flight(layout: Layout, microbatches: int) -> float:
    """Peak activations per rank in units of the rank's layers: PP+1 stage-sized chunks of
    micro-batches (DualPipe README table, "Activation Per Device"), the rank holding two
    stage-sized chunks: (pp+1)/2 for DualPipe, (2·pp+1)/2 for DualPipeV; at most all the
    micro-batches' chunks."""
    stages = layout.num_virtual_stages
    held = microbatches if layout.schedule == "dualpipe" else 2 * microbatches
    return min(stages + 1, held) / 2


def simulate_dual(layout: Layout, microbatches: int, times: list[TaskTimes],
                  pair_s: dict[tuple[int, int], float], record: bool = False) -> Timeline:
    """Run every rank's DualPipe(V) chunks in order, each as soon as the rank is free and all
    its inputs have arrived (`schedule.sweep`). `times[c·pp + r]` are the costs of chunk c of
    rank r (the stage `rank_stages(layout, r)[c]`); `pair_s[(f, b)]` the time of an F&B chunk
    whose forward is on chunk index f and backward on b (same numbering). Activations are held
    from a chunk's F to its W. Returns `schedule.Timeline` (peak in flight in units of the
    rank's layers)."""
    pp = layout.pp
    assert len(times) == 2 * pp
    plan = _plan(layout.schedule, pp, microbatches,
                 tuple(rank_stages(layout, rank) for rank in range(pp)))
    duration_s = [sum(parts) for t in times for parts in
                  ((t.forward_s,), (t.backward_s,), (t.weight_s,), (t.backward_s, t.weight_s))]
    duration_s += [pair_s[pair] for pair in plan.pairs]
    swept = sweep(plan.steps, duration_s, [t.send_s for t in times] + [0.0])
    busy = []
    for steps in plan.steps:
        total = 0.0
        for cost, _ in steps:
            total += duration_s[cost]
        busy.append(total)
    intervals: list[Interval] = []
    if record:
        for rank, i in start_order(plan.steps, swept.start_s):
            intervals += _drawn(plan.chunks[rank][i], rank, swept.start_s[rank][i],
                                duration_s[plan.steps[rank][i][0]], times)
    return Timeline(swept.finish_s, tuple(busy), tuple(intervals),
                    tuple(p / 2 for p in plan.peak), swept.path_send_s)


def send_target(layout: Layout, task: Task, rank: int) -> int | None:
    """The stage a task on `rank` sends its output to, None when it sends nothing to another
    rank (a W, the ends, DualPipeV's turn at rank pp-1); for the trace
    (`schedule.with_streams`)."""
    stage = rank_stages(layout, rank)[task.chunk]
    after = {"F": stage + 1, "B": stage - 1}.get(task.kind, -1)
    if not 0 <= after < layout.num_virtual_stages:
        return None
    holders = [r for r in range(layout.pp) if rank_stages(layout, r)[task.chunk] == after] \
        if layout.schedule == "dualpipe" else \
        [r for r in range(layout.pp) if after in rank_stages(layout, r)]
    return None if holders == [rank] else after


SINGLES = (("F",), ("B",), ("W",), ("B", "W"))  # chunks that are not an F&B pair: chunk c of
# rank r costs durations[(c·pp + r)·4 + index here] in `simulate_dual`, a pair after them all


@dataclass(frozen=True)
class _Plan:
    """Everything of a DualPipe(V) step that does not depend on the task times."""

    chunks: tuple[tuple[Chunk, ...], ...]  # per rank, in order
    steps: tuple[tuple[Step, ...], ...]  # the same as `schedule.sweep` reads them
    pairs: tuple[tuple[int, int], ...]  # the F&B pairs' `pair_s` keys, in duration order
    peak: tuple[int, ...]  # per rank: most stage-sized chunks of micro-batches held at once


@lru_cache(maxsize=32)  # ~3 MB each at pp 16, m 128; a build costs several sweeps
def _plan(schedule: str, pp: int, microbatches: int,
          stages: tuple[tuple[int, ...], ...]) -> _Plan:
    """`stages[r]`: `rank_stages` of rank r. A task's input: an F the F on the stage before,
    a B the B on the stage after (on the last stage its own F), a W its B unless the chunk
    runs them both; each sent from its rank when that is another."""
    chunks = tuple(_rank_order(schedule, pp, rank, microbatches) for rank in range(pp))
    last = max(max(held) for held in stages)
    holder = {(chunk if schedule == "dualpipe" else 0, stage): (rank, chunk)  # (copy, stage)
              for rank, held in enumerate(stages) for chunk, stage in enumerate(held)}
    where = {(task.kind, task.microbatch, stages[rank][task.chunk]): (rank, i)
             for rank, order in enumerate(chunks) for i, chunk in enumerate(order)
             for task in chunk.parts}
    pairs: dict[tuple[int, int], int] = {}

    def source(task: Task, rank: int, runs_b: bool) -> tuple[int, int, int] | None:
        stage = stages[rank][task.chunk]
        if task.kind == "F":
            kind, after = "F", stage - 1
        elif task.kind == "W":
            kind, after = "B", -1 if runs_b else stage
        else:
            kind, after = ("F", stage) if stage == last else ("B", stage + 1)
        if after < 0:  # the first stage's F, or a W whose B runs in its chunk
            return None
        sender, chunk = holder[task.chunk if schedule == "dualpipe" else 0, after]
        at = where[kind, task.microbatch, after]
        assert at[0] == sender, (task, rank, at, sender)
        return (*at, chunk * pp + sender if sender != rank else -1)

    def step(chunk: Chunk, rank: int) -> Step:
        runs_b = any(t.kind == "B" for t in chunk.parts)
        inputs = tuple(s for s in (source(t, rank, runs_b) for t in chunk.parts) if s)
        if chunk.overlapped:
            pair = (chunk.parts[0].chunk * pp + rank, chunk.parts[1].chunk * pp + rank)
            return 4 * 2 * pp + pairs.setdefault(pair, len(pairs)), inputs
        assert len({t.chunk for t in chunk.parts}) == 1, chunk
        kinds = tuple(t.kind for t in chunk.parts)
        return (chunk.parts[0].chunk * pp + rank) * 4 + SINGLES.index(kinds), inputs

    steps = tuple(tuple(step(c, rank) for c in order) for rank, order in enumerate(chunks))
    peak = []
    for order in chunks:
        held = most = 0
        for chunk in order:
            held += sum(t.kind == "F" for t in chunk.parts)
            most = max(most, held)
            held -= sum(t.kind == "W" for t in chunk.parts)
        peak.append(most)
    return _Plan(chunks, steps, tuple(pairs), tuple(peak))


def _drawn(chunk: Chunk, rank: int, start: float, duration: float,
           times: list[TaskTimes]) -> list[Interval]:
    """The chunk's tasks one after the other, scaled to fill its time (an F&B interleaves
    them; the trace shows the forward's share first)."""
    pp = len(times) // 2
    nominal = [_task_s(times[t.chunk * pp + rank], t) for t in chunk.parts]
    scale = duration / sum(nominal) if sum(nominal) > 0 else 0.0
    out = []
    for task, seconds in zip(chunk.parts, nominal):
        out.append(Interval(rank, "compute", f"{task.kind}{task.microbatch}.{task.chunk}",
                            start, start + seconds * scale, task))
        start += seconds * scale
    return out


def _task_s(cost: TaskTimes, task: Task) -> float:
    return {"F": cost.forward_s, "B": cost.backward_s, "W": cost.weight_s}[task.kind]
