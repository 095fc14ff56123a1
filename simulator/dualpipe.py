"""DualPipe and DualPipeV: DeepSeek's bidirectional pipeline schedules, as task lists run by a
discrete-event simulation of one replica.

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

import heapq
from dataclasses import dataclass

from parasim.simulator.errors import SpecError
from parasim.simulator.layout import Layout, rank_stages
from parasim.simulator.schedule import Interval, Task, TaskTimes, Timeline
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
    return [_rank_order(layout, rank, microbatches) for rank in range(layout.pp)]


def _rank_order(layout: Layout, rank: int, microbatches: int) -> list[Chunk]:
    pp, dual = layout.pp, layout.schedule == "dualpipe"
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
    return order


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
    its inputs have arrived. `times[c·pp + r]` are the costs of chunk c of rank r (the stage
    `rank_stages(layout, r)[c]`); `pair_s[(f, b)]` the time of an F&B chunk whose forward is
    on chunk index f and backward on b (same numbering). Activations are held from a chunk's
    F to its W. Returns `schedule.Timeline` (peak in flight in units of the rank's layers)."""
    pp = layout.pp
    orders = dual_orders(layout, microbatches)
    route = _Route(layout, times)
    position, clock = [0] * pp, [0.0] * pp
    busy, held, peak, chain = [0.0] * pp, [0] * pp, [0] * pp, [0.0] * pp
    intervals: list[Interval] = []
    events = [(0.0, rank) for rank in range(pp)]
    while events:
        now, rank = heapq.heappop(events)
        if clock[rank] > now or position[rank] == len(orders[rank]):
            continue
        chunk = orders[rank][position[rank]]
        ready = route.ready(chunk, rank)
        if ready is None or ready[0] > now:
            continue
        position[rank] += 1
        if ready[0] >= clock[rank] and (ready[0] > clock[rank] or ready[1] > chain[rank]):
            chain[rank] = ready[1]
        duration = route.duration(chunk, rank, pair_s)
        end = now + duration
        for woken in route.finish(chunk, rank, end, chain[rank]):
            heapq.heappush(events, woken)
        heapq.heappush(events, (end, rank))
        clock[rank], busy[rank] = end, busy[rank] + duration
        held[rank] += sum(t.kind == "F" for t in chunk.parts)
        peak[rank] = max(peak[rank], held[rank])
        held[rank] -= sum(t.kind == "W" for t in chunk.parts)
        if record:
            intervals += route.drawn(chunk, rank, now, duration)
    assert all(p == len(o) for p, o in zip(position, orders)), "DualPipe schedule deadlocked"
    return Timeline(tuple(clock), tuple(busy), tuple(intervals),
                    tuple(p / 2 for p in peak), tuple(chain))


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


class _Route:
    """Where each micro-batch's stages are and when its tasks' inputs arrive."""

    def __init__(self, layout: Layout, times: list[TaskTimes]):
        self.layout, self.times, self.pp = layout, times, layout.pp
        self.stages = layout.num_virtual_stages
        self.done: dict[tuple[str, int, int], tuple[float, float]] = {}  # -> (end, chain)
        self.holder = {}  # (copy, stage) -> (rank, chunk)
        for rank in range(self.pp):
            for chunk, stage in enumerate(rank_stages(layout, rank)):
                copy = chunk if layout.schedule == "dualpipe" else 0
                self.holder[copy, stage] = (rank, chunk)

    def _copy(self, task: Task) -> int:
        return task.chunk if self.layout.schedule == "dualpipe" else 0

    def stage(self, task: Task, rank: int) -> int:
        return rank_stages(self.layout, rank)[task.chunk]

    def _input(self, task: Task, rank: int) -> tuple[str, int] | None:
        """(kind, stage) of the task that feeds `task`, None for a first stage's forward."""
        stage = self.stage(task, rank)
        if task.kind == "F":
            return ("F", stage - 1) if stage > 0 else None
        if task.kind == "W":
            return ("B", stage)
        return ("F", stage) if stage == self.stages - 1 else ("B", stage + 1)

    def ready(self, chunk: Chunk, rank: int) -> tuple[float, float] | None:
        """(when every input of the chunk is on the rank, the sends on the latest one's
        chain), or None while one has not been produced."""
        latest = (0.0, 0.0)
        for task in chunk.parts:
            source = self._input(task, rank)
            if source is None or (task.kind == "W" and source[0] == "B" and
                                  any(t.kind == "B" for t in chunk.parts)):
                continue
            kind, stage = source
            found = self.done.get((kind, task.microbatch, stage))
            if found is None:
                return None
            sender = self.holder[self._copy(task), stage]
            send = self.times[sender[1] * self.pp + sender[0]].send_s \
                if sender[0] != rank else 0.0
            latest = max(latest, (found[0] + send, found[1] + send))
        return latest

    def duration(self, chunk: Chunk, rank: int, pair_s: dict) -> float:
        if chunk.overlapped:
            f, b = chunk.parts[0], chunk.parts[1]
            return pair_s[f.chunk * self.pp + rank, b.chunk * self.pp + rank]
        return sum(self._task_s(t, rank) for t in chunk.parts)

    def _task_s(self, task: Task, rank: int) -> float:
        cost = self.times[task.chunk * self.pp + rank]
        return {"F": cost.forward_s, "B": cost.backward_s, "W": cost.weight_s}[task.kind]

    def finish(self, chunk: Chunk, rank: int, end: float, chain: float) -> list:
        """Record the chunk's outputs; the (time, rank) events of the ranks they wake."""
        woken = []
        for task in chunk.parts:
            stage = self.stage(task, rank)
            self.done[task.kind, task.microbatch, stage] = (end, chain)
            if task.kind == "W":
                continue
            after = stage + 1 if task.kind == "F" else stage - 1
            if 0 <= after < self.stages:
                target = self.holder[self._copy(task), after][0]
                send = self.times[task.chunk * self.pp + rank].send_s if target != rank else 0
                woken.append((end + send, target))
        return woken

    def drawn(self, chunk: Chunk, rank: int, start: float, duration: float) -> list[Interval]:
        """The chunk's tasks one after the other, scaled to fill its time (an F&B
        interleaves them; the trace shows the forward's share first)."""
        nominal = [self._task_s(t, rank) for t in chunk.parts]
        scale = duration / sum(nominal) if sum(nominal) > 0 else 0.0
        out = []
        for task, seconds in zip(chunk.parts, nominal):
            out.append(Interval(rank, "compute", f"{task.kind}{task.microbatch}.{task.chunk}",
                                start, start + seconds * scale, task))
            start += seconds * scale
        return out
