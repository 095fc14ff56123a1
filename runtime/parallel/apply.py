"""`parallelize`: the one place that applies a layout's parallelisms to a model chunk.

The order is fixed, and each step says why it comes where it does:
1. checks: what the runtime cannot run raises SpecError before anything is changed;
2. tensor (+ sequence) parallelism: slices the full weights, so it must see them unsliced;
3. expert parallelism: keeps this rank's experts (already tp-sliced along the ffn dim; the two
   slicings touch different dims, so they commute, but EP must precede the DP buffers);
4. context parallelism: swaps the core attention for ring or Ulysses attention;
5. recompute: wraps the final modules (after the swaps, so selective recompute wraps the ring
   attention too);
6. data parallelism / ZeRO: last, because it turns every (final, local) parameter into a view
   of its bucket's flat buffer and hooks its gradient (and, ZeRO-3, the blocks' forward).

Honoured layout switches: sequence_parallel, recompute, zero_stage (0 to 3; 2 and 3 not with
the zero-bubble schedule), overlap_grad_reduce (bucket reductions start in the backward),
overlap_param_gather (ZeRO-3: the next unit's weights are gathered while the current one
computes; ZeRO-1/2 gather the updated weights at the end of the optimizer step either way,
which is what Megatron-LM's overlap with the next forward exposes of a chunk in one bucket,
the simulator's `dp_buckets`),
cp_comm_overlap (always on: the ring forward sends the next key/value block while computing
the current one). Not implemented, no effect: tp_comm_overlap, ep_comm_overlap.

The pipeline split is not done here: build the stage's chunk (`runtime.model.build_chunk`)
and parallelize each chunk of a rank; one `DistributedAdamW` takes all their `grads`. A
training step with pipeline micro-batches: run every micro-batch's backward under
`grads.no_sync()` (or let the last one run outside it), call `grads.start()` when a chunk's
last backward is done (the pipeline engine's `on_chunk_backward_done`), then `grads.finish()`,
`optimizer.step()`, `optimizer.zero_grad()`. Tied embedding copies on the first and last
stages are summed over `ParallelGroups.embedding` by `finish()`.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import torch

from parasim.runtime.model import Chunk, check_buildable
from parasim.runtime.parallel.context import apply_context_parallel, local_positions, split_sequence
from parasim.runtime.parallel.data import GradSync, check_zero_stage, default_bucket_bytes
from parasim.runtime.parallel.expert import shard_experts
from parasim.runtime.parallel.groups import ParallelGroups
from parasim.runtime.parallel.recompute import apply_recompute
from parasim.runtime.parallel.tensor import TensorParallel, apply_plan
from parasim.simulator.errors import SpecError
from parasim.simulator.layout import Layout
from parasim.simulator.model import ModelSpec


@dataclass(frozen=True, kw_only=True)
class Parallelized:
    """A chunk with its parallelisms applied, and what the training loop needs of them."""

    chunk: Chunk  # the same module, changed in place
    grads: GradSync  # call grads.finish() after the last micro-batch's backward
    tp_partial: frozenset[str]  # parameters whose gradients are summed over tp
    experts: frozenset[str]  # expert parameters (reduced over edp)
    tied: frozenset[str]  # this stage's copy of a tied embedding/head matrix (summed over
    # ParallelGroups.embedding first)
    full_recompute: frozenset[int]  # layers recomputed in full


def check_runtime_layout(spec: ModelSpec, layout: Layout, seq_length: int | None = None) -> None:
    """SpecError for what the runtime cannot run (the simulator's own checks come first)."""
    check_buildable(spec)
    check_zero_stage(layout)
    if layout.ep > 1 and not spec.is_moe:
        raise SpecError("parallel.ep", layout.ep, f"model {spec.name} has no experts", "1")
    if seq_length is None:
        return
    unit = 2 * layout.cp * (layout.tp if layout.sequence_parallel else 1)
    if seq_length % unit:
        raise SpecError("training.seq_length", seq_length,
                        f"must split into 2·cp{'·tp' if layout.sequence_parallel else ''} = "
                        f"{unit} equal pieces (context-parallel chunks"
                        f"{', sequence-parallel shards' if layout.sequence_parallel else ''})",
                        f"a multiple of {unit}")


def parallelize(chunk: Chunk, layout: Layout, groups: ParallelGroups, *,
                full_recompute_layers: Collection[int] | None = None,
                bucket_bytes: int | None = None) -> Parallelized:
    """Apply TP(+SP), EP, CP, recompute and DP/ZeRO to `chunk` in place, in that order.

    `full_recompute_layers` (global layer indices) overrides which blocks recompute in full;
    by default all under recompute=full, none otherwise. `bucket_bytes` overrides the gradient
    buckets' size (default: Megatron-Core's, `data.default_bucket_bytes`)."""
    spec = chunk.spec
    check_runtime_layout(spec, layout)  # 1
    tp = TensorParallel(axis=groups.tp, sequence_parallel=layout.sequence_parallel,
                        head_dim=spec.qk_head_dim, kv_heads=spec.kv_heads,
                        vocab_size=spec.vocab_size)
    tp_partial = apply_plan(chunk, tp)  # 2
    experts = shard_experts(chunk, groups.ep)  # 3
    apply_context_parallel(chunk, groups.cp, layout.cp_style)  # 4
    full = apply_recompute(chunk, layout.recompute, full_recompute_layers)  # 5
    tied = tied_copies(chunk)
    grads = GradSync(chunk, groups, zero_stage=layout.zero_stage, expert_names=experts,
                     partial_names=tp_partial, tied_names=tied,
                     bucket_bytes=bucket_bytes or default_bucket_bytes(chunk, layout, groups),
                     overlap=layout.overlap_grad_reduce,
                     prefetch=layout.overlap_param_gather)  # 6
    return Parallelized(chunk=chunk, grads=grads, tp_partial=tp_partial, experts=experts,
                        tied=tied, full_recompute=full)


def tied_copies(chunk: Chunk) -> frozenset[str]:
    """The chunk's copy of a tied embedding matrix when the other copy lives on another
    pipeline stage (a chunk with both shares one Parameter)."""
    if not chunk.spec.tied_embeddings or (chunk.embed is None) == (chunk.head is None):
        return frozenset()
    return frozenset({"embed.tokens.weight" if chunk.embed is not None else "head.weight"})


def local_batch(tokens: torch.Tensor, labels: torch.Tensor, groups: ParallelGroups,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """This rank's (tokens, labels, positions) of a batch of dp·b full sequences: data-parallel
    rank d takes sequences [d·b, (d+1)·b), the context-parallel rank its two chunks."""
    assert tokens.shape == labels.shape and tokens.shape[0] % groups.dp.size == 0, tokens.shape
    rows = tokens.shape[0] // groups.dp.size
    mine = slice(groups.dp.rank * rows, (groups.dp.rank + 1) * rows)
    positions = local_positions(tokens.shape[1], groups.cp, batch=rows)
    return (split_sequence(tokens[mine], groups.cp), split_sequence(labels[mine], groups.cp),
            positions)
