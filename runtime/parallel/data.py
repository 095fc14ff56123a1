"""Data parallelism with bucketed gradient reduction overlapped with the backward, ZeRO stages
0 to 3, and an AdamW that updates this rank's shard.

Gradient sync (PyTorch DDP, Li et al. 2020 §3.2; Megatron-LM's DDP): parameters are grouped into
buckets of about `bucket_bytes` (`default_bucket_bytes`: Megatron-Core's), in reverse
registration order (roughly the order the backward produces their gradients). Every parameter is
a view into its bucket's flat parameter buffer, and a post-accumulate-grad hook adds its
gradient into the bucket's flat gradient buffer; with `overlap` (Layout.overlap_grad_reduce,
Megatron-LM `--overlap-grad-reduce`), when the last gradient of a bucket arrives on the last
micro-batch (outside `no_sync`), the bucket's reduction starts asynchronously while the backward
goes on. `finish()` starts what has not started (every bucket without overlap; parameters that
got no gradient), waits, and scales.

What is reduced over which group (Megatron-Core):
- dense parameters: summed over dp·cp (context-parallel ranks hold different tokens of the
  same sequences);
- expert parameters: summed over edp = dp·cp/ep (an expert's gradient already holds every ep
  rank's tokens, through the all-to-all backward);
- both scaled by 1/(dp·cp): each rank's loss is the mean over its own tokens, and the global
  loss is the mean of those over the dp·cp ranks;
- parameters whose gradient is split over tp (`runtime.parallel.tensor.apply_plan`) are first
  summed over tp, in their own buckets;
- with pipeline parallelism and tied embeddings, the first stage's embedding matrix and the
  last stage's head matrix are two copies of one weight: their gradients are first summed
  over `ParallelGroups.embedding` (Megatron-LM's embedding group), in their own buckets, and
  only from `finish()`: the two stages finish their backward at different times, and a hook
  (or `start()`) waiting for the other stage inside the schedule would stall the pipeline.

ZeRO (Rajbhandari et al. 2020, "ZeRO", §5.1-5.3: P_os, P_os+g, P_os+g+p; Megatron-LM's
distributed optimizer for stage 1): each bucket is padded to a multiple of the group size and
split into equal shards; AdamW updates this rank's shard of the weights with this rank's
shard of the gradients and the moments of that shard only.
- ZeRO-0 all-reduces the whole bucket and every rank updates everything.
- ZeRO-1 reduce-scatters the gradients after the last micro-batch (each rank receives the sum
  of its shard) and all-gathers the updated weight shards into every rank's full weights.
- ZeRO-2 keeps only the gradient shard: the full gradient buffer of a bucket exists from its
  first gradient of a micro-batch until that bucket's reduce-scatter is done, then its storage
  is freed and the received shard is added into the persistent shard (DeepSpeed's stage 2,
  which reduces every micro-batch: a full buffer kept across micro-batches would be ZeRO-1's
  memory). So `no_sync` has no effect; with overlap_grad_reduce a bucket's reduce-scatter runs
  while the backward goes on and is waited for when the next one starts, without it at once.
  The sums over tp (split gradients) and over the tied copies commute with the reduce-scatter
  (every member holds the same bucket layout), so they are applied to the shard by `finish()`.
- ZeRO-3 keeps only the weight shard too (`runtime.parallel.zero3`): each transformer block is
  a unit whose buckets are all-gathered before its forward, freed after it, gathered again
  before its backward and freed when its gradients are reduce-scattered; the rest of a chunk
  (embedding, final norm, head) is a root unit that stays gathered from its forward to its
  backward. With overlap_param_gather the next unit's gather is started when a unit begins
  (forward: the block after; backward: the block before), which is the overlap the simulator
  assumes (`simulator.step_time._dp_traffic`: 2 gathers and one reduce-scatter per
  micro-batch). The optimizer updates the shard; the next forward gathers it.
  ZeRO-2 with several micro-batches therefore reduce-scatters m times a step, as ZeRO-3 does;
  the simulator charges ZeRO-2 one reduce-scatter a step, as for ZeRO-1 (equal for m = 1).
Memory (what `simulator.memory.model_states` charges, exactly when the buckets need no padding):
persistent weight bytes are the full buffers below stage 3 and the shards from it, gradient
bytes the full buffers below stage 2 and the shards from it, optimizer bytes the shards' moments
from stage 1. The transient buffers of ZeRO-2/3 (a bucket or two of gradients, a unit or two of
weights) are not model states and are not counted, as the simulator does not count them.

Why buckets and not torch's FSDP2 (`fully_shard`, which runs on CPU gloo in torch 2.13): the
runtime's other parallelisms work on plain tensors and groups of their own. FSDP2 would need
the expert weights on their own edp mesh, the tp-split and tied-copy gradients summed inside
its reduce-scatter, DTensor parameters in the pipeline, the tests and the optimizer, and its
own buffers in the memory accounting; sharding the existing buckets keeps one optimizer, one
memory count and the tp/ep/cp/pp/tied handling of ZeRO-0/1 for every stage.

Weights are kept in the model's dtype (fp32 on the CPU); there are no fp32 master weights for
bf16 runs yet, and no gradient clipping.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn

from parasim.runtime.parallel.groups import Axis, ParallelGroups, all_gather_single, reduce_scatter_single
from parasim.runtime.parallel.zero3 import WeightSharding, weight_units
from parasim.simulator.errors import SpecError
from parasim.simulator.dp_buckets import bucket_params
from parasim.simulator.layout import Layout

SUPPORTED_ZERO_STAGES = (0, 1, 2, 3)


def default_bucket_bytes(chunk: nn.Module, layout: Layout, groups: ParallelGroups) -> int:
    """Megatron-Core's buckets, which the simulator prices (`simulator.dp_buckets`): at most
    max(40M, 1M·dp) parameters in the chunk that holds the embedding (the first pipeline
    stage's first chunk) when the reduction overlaps the backward; one bucket elsewhere."""
    params = [p for p in chunk.parameters() if p.requires_grad]
    if not params or not layout.overlap_grad_reduce or getattr(chunk, "embed", None) is None:
        return sys.maxsize
    return bucket_params(groups.dp.size) * params[0].element_size()


def check_zero_stage(layout: Layout) -> None:
    """SpecError for a combination with a ZeRO stage the runtime cannot run (`Layout` has
    checked the stage itself)."""
    if layout.zero_stage >= 2 and layout.schedule == "zero-bubble":
        raise SpecError("parallel.zero_stage", layout.zero_stage,
                        "the runtime shards gradients only with whole backward passes; the "
                        "zero-bubble schedule's split weight-gradient pass is not checked with it",
                        "0 or 1 (or --set parallel.schedule=1f1b)")


def _free(buffer: torch.Tensor) -> None:
    """Release a flat buffer's memory; its views (the parameters, the gradient views) stay
    valid tensors and see the data again once `_allocate` restores it."""
    buffer.untyped_storage().resize_(0)


def _allocate(buffer: torch.Tensor) -> torch.Tensor:
    """Give a freed buffer its memory back (uninitialised); the buffer's `.data`, whose
    version counter is not the parameters': writing it does not invalidate what autograd
    saved of them."""
    storage = buffer.untyped_storage()
    if storage.nbytes() == 0:
        storage.resize_(buffer.numel() * buffer.element_size())
    return buffer.data


class Bucket:
    """Flat parameter and gradient buffers of some parameters reduced over one group, and the
    shards of them this rank keeps (the whole buffers for ZeRO-0)."""

    def __init__(self, params: list[nn.Parameter], axis: Axis, first_sum: Axis | None,
                 shards: int, stage: int = 0) -> None:
        assert all(p.dtype == params[0].dtype for p in params), "one dtype per bucket"
        self.params, self.axis, self.first_sum, self.shards = params, axis, first_sum, shards
        self.stage = stage
        # may start from a hook (ZeRO-2/3 sum over first_sum after the reduce-scatter)
        self.early = first_sum is None or first_sum.name == "tp" or stage >= 2
        numel = sum(p.numel() for p in params)
        padded = math.ceil(numel / shards) * shards
        self.param_buffer = params[0].new_zeros(padded)
        self.grad_buffer = params[0].new_zeros(padded)
        self.grad_views: dict[int, torch.Tensor] = {}
        offset = 0
        for p in params:
            view = self.param_buffer[offset:offset + p.numel()]
            view.copy_(p.detach().flatten())
            p.data = view.view_as(p)
            self.grad_views[id(p)] = self.grad_buffer[offset:offset + p.numel()].view_as(p)
            offset += p.numel()
        mine = axis.rank if shards > 1 else 0
        self.shard = slice(mine * padded // shards, (mine + 1) * padded // shards)
        self.param_shard = self.param_buffer[self.shard].clone() if stage >= 3 \
            else self.param_buffer[self.shard]
        self.grad_shard = self.grad_buffer[self.shard].clone() if stage >= 2 \
            else self.grad_buffer[self.shard]
        if stage >= 2:
            _free(self.grad_buffer)
        if stage >= 3:
            _free(self.param_buffer)
        self.gathered, self.gather_work = stage < 3, None
        self.holding: set[int] = set()  # ZeRO-2/3: parameters with a gradient in the buffer
        self.arrived, self.work, self.received = 0, None, None
        self.launched = self.reduced = False

    @property
    def weights_bytes(self) -> int:
        """Bytes of weights this rank keeps between steps."""
        return (self.param_shard if self.stage >= 3 else self.param_buffer).nbytes

    @property
    def gradients_bytes(self) -> int:
        """Bytes of gradients this rank keeps between steps."""
        return (self.grad_shard if self.stage >= 2 else self.grad_buffer).nbytes

    def add(self, param: nn.Parameter, grad: torch.Tensor) -> None:
        """Accumulate a parameter's gradient (ZeRO-2/3: into a buffer allocated on the first)."""
        if self.stage >= 2 and not self.holding:
            _allocate(self.grad_buffer).zero_()
        self.grad_views[id(param)].add_(grad)
        self.holding.add(id(param))

    def launch(self) -> None:
        """Start the reduction (after the sum over tp or the tied copies, if any)."""
        assert not self.launched
        self.launched = True
        if self.stage >= 2:
            self._launch_shard()
            return
        if self.first_sum is not None and self.first_sum.size > 1:
            dist.all_reduce(self.grad_buffer, group=self.first_sum.group)
        if self.axis.size == 1:
            return
        if self.shards == 1:
            self.work = dist.all_reduce(self.grad_buffer, group=self.axis.group, async_op=True)
            return
        self.received = self.grad_buffer.new_empty(self.shard.stop - self.shard.start)
        self.work = reduce_scatter_single(self.received, self.grad_buffer,
                                          group=self.axis.group, async_op=True)

    def _launch_shard(self) -> None:
        """ZeRO-2/3: reduce-scatter the buffer's gradients (no sum over first_sum yet)."""
        if self.shards == 1:
            return
        self.received = self.grad_buffer.new_empty(self.shard.stop - self.shard.start)
        self.work = reduce_scatter_single(self.received, self.grad_buffer,
                                          group=self.axis.group, async_op=True)

    def settle(self) -> None:
        """ZeRO-2/3: finish the reduce-scatter, add the shard received into the persistent
        shard and free the full gradient buffer."""
        assert self.stage >= 2 and self.launched
        if self.work is not None:
            self.work.wait()
        self.grad_shard.add_(self.received if self.received is not None
                             else self.grad_buffer[self.shard])
        _free(self.grad_buffer)
        self.holding.clear()
        self.work, self.received, self.launched = None, None, False

    def wait(self, scale: float) -> None:
        """Finish the reduction; this rank's gradient shard holds the result."""
        if self.stage >= 2:
            if self.launched:
                self.settle()
            if self.first_sum is not None and self.first_sum.size > 1:
                dist.all_reduce(self.grad_shard, group=self.first_sum.group)
        else:
            if self.work is not None:
                self.work.wait()
            if self.received is not None:
                self.grad_buffer[self.shard].copy_(self.received)
        self.grad_shard.mul_(scale)
        self.arrived, self.work, self.received = 0, None, None
        self.launched, self.reduced = False, True

    def gather(self) -> dist.Work | None:
        """Start the all-gather of the updated weight shards (ZeRO-1/2; ZeRO-3 gathers before
        the next use)."""
        if self.shards == 1 or self.stage >= 3:
            return None
        mine = self.param_buffer[self.shard].clone()
        return all_gather_single(self.param_buffer, mine, group=self.axis.group, async_op=True)

    def start_weights(self) -> None:
        """ZeRO-3: start gathering the full weights from the shards, unless held or coming."""
        if self.gathered or self.gather_work is not None:
            return
        full = _allocate(self.param_buffer)
        if self.shards == 1:
            full.copy_(self.param_shard)
            self.gathered = True
            return
        self.gather_work = all_gather_single(full, self.param_shard, group=self.axis.group,
                                             async_op=True)

    def wait_weights(self) -> None:
        """ZeRO-3: the full weights are in the buffer once this returns."""
        self.start_weights()
        if self.gather_work is not None:
            self.gather_work.wait()
            self.gather_work = None
        self.gathered = True

    def free_weights(self) -> None:
        """ZeRO-3: drop the full weights (a gather under way is finished first)."""
        if self.stage < 3:
            return
        if self.gather_work is not None:
            self.wait_weights()
        if self.gathered:
            _free(self.param_buffer)
            self.gathered = False


BucketKey = tuple[str, str | None]  # (reduction axis, axis summed over first or None)


def _bucket_plan(named: list[tuple[str, nn.Parameter]], expert_names: frozenset[str],
                 partial_names: frozenset[str], tied_names: frozenset[str],
                 bucket_bytes: int) -> list[tuple[str, str | None, list[nn.Parameter]]]:
    """(axis name, first-sum axis name, parameters) per bucket, reverse registration order."""
    assert not partial_names & tied_names
    open_buckets: dict[BucketKey, list[nn.Parameter]] = {}
    sizes: dict[BucketKey, int] = {}
    plan = []
    for name, param in reversed(named):
        first = "tp" if name in partial_names else "embedding" if name in tied_names else None
        key = ("edp" if name in expert_names else "dp_cp", first)
        open_buckets.setdefault(key, []).append(param)
        sizes[key] = sizes.get(key, 0) + param.numel() * param.element_size()
        if sizes[key] >= bucket_bytes:
            plan.append((*key, open_buckets.pop(key)))
            sizes[key] = 0
    plan.extend((*key, params) for key, params in open_buckets.items())
    return plan


class GradSync:
    """Bucketed, overlapped gradient reduction of one chunk's parameters (and, for ZeRO-3,
    the gathering of its weights, `runtime.parallel.zero3`)."""

    def __init__(self, chunk: nn.Module, groups: ParallelGroups, *, zero_stage: int,
                 expert_names: frozenset[str] = frozenset(),
                 partial_names: frozenset[str] = frozenset(),
                 tied_names: frozenset[str] = frozenset(),
                 bucket_bytes: int = sys.maxsize, overlap: bool = True,
                 prefetch: bool = True) -> None:
        assert zero_stage in SUPPORTED_ZERO_STAGES, zero_stage
        named = [(n, p) for n, p in chunk.named_parameters() if p.requires_grad]
        self.scale, self.stage = 1.0 / groups.dp_cp.size, zero_stage
        # ZeRO-3 buckets never span two units: a unit's weights are gathered and freed together
        units = weight_units(chunk, named) if zero_stage >= 3 else [(chunk, named, False)]
        self.buckets: list[Bucket] = []
        unit_buckets = []
        for _, members, _ in units:
            unit_buckets.append([])
            for axis_name, first, params in _bucket_plan(members, expert_names, partial_names,
                                                         tied_names, bucket_bytes):
                axis = getattr(groups, axis_name)
                unit_buckets[-1].append(Bucket(params, axis,
                                               getattr(groups, first) if first else None,
                                               axis.size if zero_stage >= 1 else 1, zero_stage))
            self.buckets.extend(unit_buckets[-1])
        self.weights = None if zero_stage < 3 else WeightSharding(
            [(module, buckets, free) for (module, _, free), buckets in zip(units, unit_buckets)],
            prefetch=prefetch)
        self.sync, self.overlap = True, overlap
        self.in_flight: list[Bucket] = []  # ZeRO-2/3: reduce-scatters not waited for yet
        self.launched_in_backward = 0  # buckets started by the hooks (overlap), for tests
        for bucket in self.buckets:
            for param in bucket.params:
                param.register_post_accumulate_grad_hook(self._hook(bucket))

    def _hook(self, bucket: Bucket):
        def on_grad(param: nn.Parameter) -> None:
            if self.stage >= 2 and bucket.launched:  # its previous micro-batch's reduction
                self.in_flight.remove(bucket)
                bucket.settle()
            bucket.add(param, param.grad)
            param.grad = None
            if self.stage >= 2:
                if len(bucket.holding) == len(bucket.params):
                    self._reduce_shard(bucket)
                    self.launched_in_backward += 1 if self.overlap else 0
                return
            if not (self.sync and self.overlap and bucket.early):
                return
            bucket.arrived += 1
            if bucket.arrived == len(bucket.params):
                bucket.launch()
                self.launched_in_backward += 1
        return on_grad

    def _reduce_shard(self, bucket: Bucket) -> None:
        """ZeRO-2/3, every micro-batch: reduce-scatter a bucket whose gradients are all in,
        free its weights (ZeRO-3), and wait for the reduce-scatter started before it (with
        overlap) or for this one (without), freeing their full gradient buffers."""
        bucket.launch()
        bucket.free_weights()
        self.in_flight.append(bucket)
        while len(self.in_flight) > (1 if self.overlap else 0):
            self.in_flight.pop(0).settle()

    @contextmanager
    def no_sync(self) -> Iterator[None]:
        """Accumulate gradients without reducing (every micro-batch but the last; ZeRO-2/3
        reduce every micro-batch, see the module docstring)."""
        self.sync = False
        try:
            yield
        finally:
            self.sync = True

    def start(self) -> None:
        """Start the reductions the backward has not started (e.g. once a pipeline chunk's
        last backward is done, its micro-batches having run under `no_sync`), except those of
        tied embedding copies, which wait for the other stage (`finish`)."""
        for bucket in self.buckets:
            if bucket.early and not bucket.launched and (self.stage < 2 or bucket.holding):
                bucket.launch()

    def finish(self) -> None:
        """Start every bucket not started yet, wait for all, scale by 1/(dp·cp)."""
        for bucket in self.buckets:
            if not bucket.launched and (self.stage < 2 or bucket.holding):
                bucket.launch()
        self.in_flight.clear()
        for bucket in self.buckets:
            bucket.wait(self.scale)
            bucket.free_weights()

    def gradient(self, param: nn.Parameter) -> torch.Tensor:
        """The accumulated gradient of `param` (after `finish`: reduced, where this rank's
        shard covers it; ZeRO-2/3 keep the shard only, see `shard_gradients`)."""
        assert self.stage < 2, "ZeRO-2/3 keep no full gradient"
        return next(b.grad_views[id(param)] for b in self.buckets if id(param) in b.grad_views)

    def shard_gradients(self) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """After `finish`: id(parameter) -> (its gradient with this rank's reduced shard filled
        in, zeros elsewhere; mask of the elements the shard holds)."""
        out = {}
        for bucket in self.buckets:
            full = bucket.grad_shard.new_zeros(bucket.param_buffer.numel())
            held = torch.zeros(full.numel(), dtype=torch.bool)
            full[bucket.shard], held[bucket.shard] = bucket.grad_shard, True
            offset = 0
            for param in bucket.params:
                piece = slice(offset, offset + param.numel())
                out[id(param)] = (full[piece].view(param.shape), held[piece].view(param.shape))
                offset += param.numel()
        return out

    @contextmanager
    def full_weights(self) -> Iterator[None]:
        """ZeRO-3: every parameter holds its full weights inside (a collective: every rank of
        the data-parallel groups enters it); nothing to do for the other stages."""
        if self.weights is None:
            yield
            return
        for bucket in self.buckets:
            bucket.wait_weights()
        try:
            yield
        finally:
            for bucket in self.buckets:
                bucket.free_weights()


def adamw_(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor,
           exp_avg_sq: torch.Tensor, *, step: int, lr: float, betas: tuple[float, float],
           eps: float, weight_decay: float) -> None:
    """One AdamW update in place (Loshchilov & Hutter 2019; torch.optim.AdamW's arithmetic)."""
    beta1, beta2 = betas
    param.mul_(1 - lr * weight_decay)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    step_size = lr / (1 - beta1 ** step)
    denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2 ** step)).add_(eps)
    param.addcdiv_(exp_avg, denom, value=-step_size)


class DistributedAdamW:
    """AdamW over the buckets of one or more chunks (virtual pipeline stages): each rank keeps
    moments for its shard of every bucket only (ZeRO-1 and up) or for all of it (ZeRO-0)."""

    def __init__(self, syncs: Sequence[GradSync], *, lr: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01) -> None:
        self.buckets = [bucket for sync in syncs for bucket in sync.buckets]
        self.moments = [(torch.zeros_like(b.param_shard), torch.zeros_like(b.param_shard))
                        for b in self.buckets]
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.steps = 0

    @torch.no_grad()
    def step(self) -> None:
        """Update this rank's shards, then all-gather the weights (ZeRO-1/2; ZeRO-3 gathers
        them before their next use)."""
        assert all(b.reduced for b in self.buckets), "call GradSync.finish() first"
        self.steps += 1
        for bucket, (exp_avg, exp_avg_sq) in zip(self.buckets, self.moments):
            adamw_(bucket.param_shard, bucket.grad_shard,
                   exp_avg, exp_avg_sq, step=self.steps, lr=self.lr, betas=self.betas,
                   eps=self.eps, weight_decay=self.weight_decay)
            bucket.reduced = False
        for work in [bucket.gather() for bucket in self.buckets]:
            if work is not None:
                work.wait()

    def zero_grad(self) -> None:
        for bucket in self.buckets:
            if bucket.stage >= 2:
                bucket.grad_shard.zero_()
            else:
                bucket.grad_buffer.zero_()


def average_loss(loss: torch.Tensor, groups: ParallelGroups) -> torch.Tensor:
    """The global mean loss: this rank's mean averaged over dp·cp (for reporting)."""
    return groups.dp_cp.all_reduce(loss.detach()) / groups.dp_cp.size
