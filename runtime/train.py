"""The trainer of `parasim run`: one rank's training steps of a plan, timed and measured.

Every rank builds the plan's process groups (`runtime.parallel.groups`, from the simulator's
placement), its pipeline chunks (virtual stages c·pp + rank, with the plan's layer split and
full-recompute blocks), applies the layout's parallelisms (`runtime.parallel.apply`), and trains
with AdamW on seeded synthetic tokens: `warmup_steps` untimed steps, then `steps` timed ones.
A step is every micro-batch's forward and backward (through the pipeline schedule when pp > 1,
gradient accumulation otherwise), the gradient reduction, and the optimizer step; ranks start
each timed step together (a barrier), so the slowest rank's time is the step's.

Measured per rank (`runtime.measure.RankMeasurement`): the wall time of each timed step, the
mean seconds per phase (forward, backward, pipeline waits, gradient reduction, optimizer), and
the peak memory: model states (the parameter, gradient and optimizer buffers) plus the peak of
the tensors autograd saved (`runtime.saved_bytes`), the quantities `simulator.memory` predicts.
Precision: fp32 (the CPU's; bf16 matmuls on a CPU are emulated and would not be the plan's).
"""

from __future__ import annotations

import os
import statistics
import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist

from parasim.runtime.measure import RankMeasurement
from parasim.runtime.model import Chunk, build_chunk
from parasim.runtime.parallel.apply import Parallelized, check_runtime_layout, local_batch, parallelize
from parasim.runtime.parallel.data import DistributedAdamW
from parasim.runtime.parallel.groups import ParallelGroups, build_groups
from parasim.runtime.parallel.pipeline import PipelineLink, check_schedule, pipeline_link, run_pipeline
from parasim.runtime.run import RunArgs
from parasim.runtime.saved_bytes import SavedBytes
from parasim.simulator.job import Job, num_microbatches

SEED = 1234
LEARNING_RATE = 1e-4


def threads_per_rank(world_size: int) -> int:
    """The host's cores shared evenly by the ranks (all ranks of a local run share one host,
    emulated nodes included), at least one."""
    return max(1, (os.cpu_count() or 1) // world_size)


def check_trainable(job: Job) -> None:
    """SpecError, before any process starts, for what the trainer cannot run."""
    layout = job.layout
    check_runtime_layout(job.model, layout, job.training.seq_length)
    if layout.pp > 1:
        check_schedule(layout, num_microbatches(job.training, layout))


def train_worker(rank: int, world_size: int, args: RunArgs) -> RankMeasurement:
    """`runtime.launch` worker: train and measure this rank (torch.distributed is set up)."""
    torch.set_num_threads(threads_per_rank(world_size))
    torch.manual_seed(SEED)
    trainer = Trainer.build(args.job, build_groups(args.job.layout))
    for step in range(args.warmup_steps):
        trainer.step(step)
    times_s, phases, losses = [], [], []
    for step in range(args.warmup_steps, args.warmup_steps + args.steps):
        dist.barrier()
        start = time.perf_counter()
        phases.append(trainer.step(step))
        times_s.append(time.perf_counter() - start)
        losses.append(trainer.loss)
    memory = trainer.memory_bytes()
    return RankMeasurement(step_times_s=tuple(times_s), peak_bytes=sum(memory.values()),
                           phase_s={k: statistics.fmean(p[k] for p in phases) for k in phases[0]},
                           memory_bytes=memory,
                           losses=tuple(losses) if None not in losses else ())


@dataclass
class Trainer:
    """One rank's model chunks, optimizer and batches."""

    job: Job
    groups: ParallelGroups
    parts: list[Parallelized]  # one per chunk this rank owns (chunk c = stage c·pp + rank)
    optimizer: DistributedAdamW
    link: PipelineLink | None  # None without pipeline parallelism
    saved: SavedBytes
    loss: float | None = None  # the last step's mean loss over its micro-batches (None: no head)

    @classmethod
    def build(cls, job: Job, groups: ParallelGroups) -> Trainer:
        layout = job.layout
        parts = [parallelize(chunk, layout, groups, full_recompute_layers=full)
                 for chunk, full in _chunks(job, groups.pp.rank)]
        optimizer = DistributedAdamW([p.grads for p in parts], lr=LEARNING_RATE)
        link = None
        if layout.pp > 1:
            link = pipeline_link(layout, groups.rank, _activation_shape(job),
                                 group=groups.pp.group)
        params = [p for part in parts for p in part.chunk.parameters()]
        return cls(job, groups, parts, optimizer, link, SavedBytes(excluded=params))

    def step(self, index: int) -> dict[str, float]:
        """One optimizer step; seconds per phase."""
        tokens, labels, positions = _batches(self.job, self.groups, index)
        with self.saved.counting():
            phases = self._pipeline(tokens, labels, positions) if self.link is not None \
                else self._accumulate(tokens, labels, positions)
        start = time.perf_counter()
        for part in self.parts:
            part.grads.finish()
        middle = time.perf_counter()
        self.optimizer.step()
        self.optimizer.zero_grad()
        return {**phases, "grad_sync_s": middle - start,
                "optimizer_s": time.perf_counter() - middle}

    def _accumulate(self, tokens, labels, positions) -> dict[str, float]:
        """pp = 1: forward and backward of each micro-batch, reducing after the last."""
        part, m = self.parts[0], len(tokens)
        forward_s = backward_s = total = 0.0
        for i in range(m):
            with part.grads.no_sync() if i + 1 < m else nullcontext():
                start = time.perf_counter()
                loss = part.chunk.loss(part.chunk(tokens[i], positions), labels[i]) / m
                middle = time.perf_counter()
                loss.backward()
                forward_s += middle - start
                backward_s += time.perf_counter() - middle
                total += float(loss.detach())
        self.loss = total
        return {"forward_s": forward_s, "backward_s": backward_s, "p2p_wait_s": 0.0}

    def _pipeline(self, tokens, labels, positions) -> dict[str, float]:
        """pp > 1: the schedule's order; each chunk's reduction starts after its last backward."""
        last: Chunk = self.parts[-1].chunk
        with ExitStack() as stack:
            for part in self.parts:
                stack.enter_context(part.grads.no_sync())
            result = run_pipeline(
                [p.chunk for p in self.parts], self.link, microbatches=len(tokens),
                inputs=tokens, targets=labels, loss_fn=last.loss if last.head else None,
                side_inputs=[(positions,)] * len(tokens),
                on_chunk_backward_done=lambda c: self.parts[c].grads.start())
        times, self.loss = result.times, result.loss
        return {"forward_s": times.forward_s, "backward_s": times.backward_s,
                "p2p_wait_s": times.p2p_wait_s}

    def memory_bytes(self) -> dict[str, float]:
        """The peak's parts, named as `simulator.results.RankMemory` names them: the
        parameter, gradient and optimizer buffers this rank keeps between steps (ZeRO-2/3:
        the shards), and the peak of the saved activations."""
        buckets = [b for part in self.parts for b in part.grads.buckets]
        return {"weights_bytes": float(sum(b.weights_bytes for b in buckets)),
                "gradients_bytes": float(sum(b.gradients_bytes for b in buckets)),
                "optimizer_bytes": float(sum(t.nbytes for pair in self.optimizer.moments
                                             for t in pair)),
                "activations_bytes": float(self.saved.peak_bytes)}


def _chunks(job: Job, pp_rank: int) -> list[tuple[Chunk, set[int]]]:
    """This pipeline rank's chunks and, per chunk, the blocks it recomputes in full (the first
    full_recompute_layers[v] of virtual stage v; None: as `recompute` says)."""
    layout, split = job.layout, job.stage_layers
    starts = [sum(split[:v]) for v in range(len(split))]
    out = []
    for v in range(pp_rank, len(split), layout.pp):
        layers = range(starts[v], starts[v] + split[v])
        chunk = build_chunk(job.model, layers=layers, has_embedding=v == 0,
                            has_head=v == len(split) - 1, seed=SEED)
        counts = layout.full_recompute_layers
        full = set(layers[:counts[v]]) if counts else None
        out.append((chunk, full))
    return out


def _activation_shape(job: Job) -> tuple[int, int, int]:
    """What a pipeline stage sends: (micro-batch, sequence / cp (/ tp with sequence
    parallelism), hidden)."""
    layout = job.layout
    seq = job.training.seq_length // layout.cp
    if layout.sequence_parallel:
        seq //= layout.tp
    return (layout.micro_batch_size, seq, job.model.hidden_size)


def _batches(job: Job, groups: ParallelGroups, step: int):
    """Step `step`'s micro-batches of seeded random tokens, this rank's share of each:
    (tokens per micro-batch, labels per micro-batch, positions)."""
    layout, training = job.layout, job.training
    generator = torch.Generator().manual_seed(SEED + step)
    rows = layout.dp * layout.micro_batch_size
    tokens, labels, positions = [], [], None
    for _ in range(num_microbatches(training, layout)):
        text = torch.randint(0, job.model.vocab_size, (rows, training.seq_length + 1),
                             generator=generator)
        mine, targets, positions = local_batch(text[:, :-1], text[:, 1:], groups)
        tokens.append(mine)
        labels.append(targets)
    return tokens, labels, positions
