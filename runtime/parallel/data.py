"""Data parallelism with bucketed gradient reduction overlapped with the backward, ZeRO-1, and
an AdamW that updates this rank's shard.

Gradient sync (PyTorch DDP, Li et al. 2020 §3.2; Megatron-LM's DDP): parameters are grouped
into buckets of about `bucket_bytes`, in reverse registration order (roughly the order the
backward produces their gradients). Every parameter is a view into its bucket's flat parameter
buffer, and a post-accumulate-grad hook adds its gradient into the bucket's flat gradient
buffer; with `overlap` (Layout.overlap_grad_reduce, Megatron-LM `--overlap-grad-reduce`), when
the last gradient of a bucket arrives on the last micro-batch (outside `no_sync`), the
bucket's reduction starts asynchronously while the backward goes on. `finish()` starts what
has not started (every bucket without overlap; parameters that got no gradient), waits, and
scales.

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

ZeRO-1 (Rajbhandari et al. 2020, "ZeRO", §5.1 P_os; Megatron-LM's distributed optimizer):
each bucket is padded to a multiple of the group size and split into equal shards; the
gradients are reduce-scattered (each rank receives the sum of its shard only), AdamW updates
this rank's shard of the weights with its shard of the moments, and the updated shards are
all-gathered back into every rank's full weights. ZeRO-0 all-reduces the whole bucket and
every rank updates everything. The runtime implements stages 0 and 1; stages 2 and 3 raise a
SpecError (`check_zero_stage`). torch's FSDP2 (`fully_shard`) does run on CPU gloo in torch
2.13, but is not wired in: expert weights would need their own edp mesh, the tp-split
gradients a sum over tp of DTensor shards, and the pipeline and the tests DTensor parameters.

Weights are kept in the model's dtype (fp32 on the CPU); there are no fp32 master weights for
bf16 runs yet, and no gradient clipping.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn

from parasim.runtime.parallel.groups import Axis, ParallelGroups, all_gather_single, reduce_scatter_single
from parasim.simulator.errors import SpecError

DEFAULT_BUCKET_BYTES = 25 * 2 ** 20  # PyTorch DDP's bucket_cap_mb
SUPPORTED_ZERO_STAGES = (0, 1)


def check_zero_stage(zero_stage: int) -> None:
    if zero_stage not in SUPPORTED_ZERO_STAGES:
        raise SpecError("parallel.zero_stage", zero_stage,
                        "the runtime shards optimizer states only (ZeRO-1, Megatron-LM's "
                        "distributed optimizer); gradient and weight sharding (ZeRO-2/3) are "
                        "not implemented", "0, 1")


class Bucket:
    """Flat parameter and gradient buffers of some parameters reduced over one group."""

    def __init__(self, params: list[nn.Parameter], axis: Axis, first_sum: Axis | None,
                 shards: int) -> None:
        assert all(p.dtype == params[0].dtype for p in params), "one dtype per bucket"
        self.params, self.axis, self.first_sum, self.shards = params, axis, first_sum, shards
        self.early = first_sum is None or first_sum.name == "tp"  # may start from a hook
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
        self.arrived, self.work, self.received = 0, None, None
        self.launched = self.reduced = False

    def launch(self) -> None:
        """Start the reduction (after the sum over tp or the tied copies, if any)."""
        assert not self.launched
        self.launched = True
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

    def wait(self, scale: float) -> None:
        """Finish the reduction; this rank's shard of the gradient buffer holds the result."""
        if self.work is not None:
            self.work.wait()
        if self.received is not None:
            self.grad_buffer[self.shard].copy_(self.received)
        self.grad_buffer[self.shard].mul_(scale)
        self.arrived, self.work, self.received = 0, None, None
        self.launched, self.reduced = False, True

    def gather(self) -> dist.Work | None:
        """Start the all-gather of the updated weight shards (ZeRO-1)."""
        if self.shards == 1:
            return None
        mine = self.param_buffer[self.shard].clone()
        return all_gather_single(self.param_buffer, mine, group=self.axis.group, async_op=True)


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
    """Bucketed, overlapped gradient reduction of one chunk's parameters."""

    def __init__(self, chunk: nn.Module, groups: ParallelGroups, *, zero_stage: int,
                 expert_names: frozenset[str] = frozenset(),
                 partial_names: frozenset[str] = frozenset(),
                 tied_names: frozenset[str] = frozenset(),
                 bucket_bytes: int = DEFAULT_BUCKET_BYTES, overlap: bool = True) -> None:
        check_zero_stage(zero_stage)
        named = [(n, p) for n, p in chunk.named_parameters() if p.requires_grad]
        self.scale = 1.0 / groups.dp_cp.size
        self.buckets: list[Bucket] = []
        for axis_name, first, params in _bucket_plan(named, expert_names, partial_names,
                                                     tied_names, bucket_bytes):
            axis = getattr(groups, axis_name)
            self.buckets.append(Bucket(params, axis, getattr(groups, first) if first else None,
                                       axis.size if zero_stage >= 1 else 1))
        self.sync, self.overlap = True, overlap
        self.launched_in_backward = 0  # buckets started by the hooks (overlap), for tests
        for bucket in self.buckets:
            for param in bucket.params:
                param.register_post_accumulate_grad_hook(self._hook(bucket))

    def _hook(self, bucket: Bucket):
        def on_grad(param: nn.Parameter) -> None:
            bucket.grad_views[id(param)].add_(param.grad)
            param.grad = None
            if not (self.sync and self.overlap and bucket.early):
                return
            bucket.arrived += 1
            if bucket.arrived == len(bucket.params):
                bucket.launch()
                self.launched_in_backward += 1
        return on_grad

    @contextmanager
    def no_sync(self) -> Iterator[None]:
        """Accumulate gradients without reducing (every micro-batch but the last)."""
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
            if bucket.early and not bucket.launched:
                bucket.launch()

    def finish(self) -> None:
        """Start every bucket not started yet, wait for all, scale by 1/(dp·cp)."""
        for bucket in self.buckets:
            if not bucket.launched:
                bucket.launch()
        for bucket in self.buckets:
            bucket.wait(self.scale)

    def gradient(self, param: nn.Parameter) -> torch.Tensor:
        """The accumulated gradient of `param` (after `finish`: reduced, where this rank's
        shard covers it)."""
        return next(b.grad_views[id(param)] for b in self.buckets if id(param) in b.grad_views)


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
    moments for its shard of every bucket only (ZeRO-1) or for all of it (ZeRO-0)."""

    def __init__(self, syncs: Sequence[GradSync], *, lr: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01) -> None:
        self.buckets = [bucket for sync in syncs for bucket in sync.buckets]
        self.moments = [(torch.zeros_like(b.param_buffer[b.shard]),
                         torch.zeros_like(b.param_buffer[b.shard])) for b in self.buckets]
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.steps = 0

    @torch.no_grad()
    def step(self) -> None:
        """Update this rank's shards, then all-gather the weights (ZeRO-1)."""
        assert all(b.reduced for b in self.buckets), "call GradSync.finish() first"
        self.steps += 1
        for bucket, (exp_avg, exp_avg_sq) in zip(self.buckets, self.moments):
            adamw_(bucket.param_buffer[bucket.shard], bucket.grad_buffer[bucket.shard],
                   exp_avg, exp_avg_sq, step=self.steps, lr=self.lr, betas=self.betas,
                   eps=self.eps, weight_decay=self.weight_decay)
            bucket.reduced = False
        for work in [bucket.gather() for bucket in self.buckets]:
            if work is not None:
                work.wait()

    def zero_grad(self) -> None:
        for bucket in self.buckets:
            bucket.grad_buffer.zero_()


def average_loss(loss: torch.Tensor, groups: ParallelGroups) -> torch.Tensor:
    """The global mean loss: this rank's mean averaged over dp·cp (for reporting)."""
    return groups.dp_cp.all_reduce(loss.detach()) / groups.dp_cp.size
