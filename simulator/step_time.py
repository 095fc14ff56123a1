"""Step time of the first model: stage times, exposed communication, bubble, optimizer.

Every duration is `Sourced` (measured / interpolated / analytic), so the prediction can say
what share of the step a measured profile covered. Communication is not overlapped with
compute in this model (issue 5 adds overlap); each pipeline rank is costed separately and the
slowest sets the pace (Narayanan et al. 2021, §2.2: step = (m + (pp-1)/vpp) · t_stage).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from simulator.cost.comm import AxisNetwork, axis_network
from simulator.cost.compute import ComputeModel
from simulator.cost.profile import AnalyticProfile
from simulator.cost.sourced import Sourced, total
from simulator.job import Job
from simulator.layout import Layout
from simulator.ops import Shard, block_ops, core_attention_ops, embedding_ops, head_ops
from simulator.params import StageParams, block_kinds
from simulator.profile import ProfileDB, Timed
from simulator.results import TimeBreakdown


@dataclass(frozen=True)
class StageTime:
    """One pipeline rank's time for one micro-batch (forward + backward), by kind."""

    forward: Sourced  # compute of the forward pass
    backward: Sourced  # compute of the backward pass, with recomputation
    tp: Sourced  # exposed tensor-parallel collectives, forward and backward
    cp: Sourced  # exposed context-parallel key/value exchange
    ep: Sourced  # expert-parallel all-to-alls

    @property
    def total(self) -> Sourced:
        return self.forward + self.backward + self.tp + self.cp + self.ep

    @property
    def total_s(self) -> float:
        return self.total.total_s

    def __mul__(self, count: float) -> StageTime:
        return StageTime(self.forward * count, self.backward * count, self.tp * count,
                         self.cp * count, self.ep * count)


@dataclass
class StepContext:
    """What every part of one step's costing shares; `flags` collects profile misses."""

    job: Job
    layout: Layout
    shard: Shard
    analytic: AnalyticProfile
    measured: ProfileDB | None
    microbatches: int
    flags: set[str] = field(default_factory=set)

    def net(self, axis: str) -> AxisNetwork:
        """The collectives of one parallel axis on the cluster's topology."""
        return axis_network(self.job.cluster, self.layout, axis, self.analytic)

    def collective(self, axis: str, kind: str, size_bytes: float) -> Sourced:
        """A collective on every group of `axis`: from the profile's measured table when the
        groups sit inside one host (what `parasim profile` measures), else on the graph."""
        net = self.net(axis)
        if self.measured is not None and net.size > 1 and net.within_host:
            found: Timed | None = self.measured.collective_time(kind, net.size, size_bytes)
            if found is not None:
                return Sourced.of(found.seconds, found.source)
            self.flags.add(f"{kind} over {net.size} ranks ({axis}) at {size_bytes:.3g} B is "
                           "outside the profile's collectives: analytic")
        return Sourced.of(net.time_s(kind, size_bytes), "analytic")

    def compute(self, device) -> ComputeModel:
        return ComputeModel(device, self.job.training.precision, self.analytic, self.measured)


def rank_block_kinds(job: Job, rank: int) -> tuple[int, int]:
    """(dense, MoE) blocks held by pipeline rank `rank` over its virtual stages."""
    split, pp = job.stage_layers, job.layout.pp
    n_dense = n_moe = 0
    for chunk in range(rank, len(split), pp):
        start = sum(split[:chunk])
        d, m = block_kinds(job.model, start, start + split[chunk])
        n_dense, n_moe = n_dense + d, n_moe + m
    return n_dense, n_moe


def stage_time(ctx: StepContext, rank: int, device) -> StageTime:
    """One micro-batch through pipeline rank `rank`: its blocks, embedding, LM head."""
    job, layout, shard = ctx.job, ctx.layout, ctx.shard
    compute = ctx.compute(device)
    parts = []
    for count, moe in zip(rank_block_kinds(job, rank), (False, True)):
        if count:
            parts.append(_block_time(ctx, compute, moe) * count)
    extra = list(embedding_ops(job.model, shard)) if rank == 0 else []
    if rank == layout.pp - 1:
        extra += head_ops(job.model, shard)
    vocab_parallel = (rank == 0) + (rank == layout.pp - 1)
    parts.append(StageTime(compute.ops(extra), compute.ops(extra, backward=True),
                           _tp_collective(ctx) * vocab_parallel, Sourced(), Sourced()))
    return StageTime(*(total(getattr(p, name) for p in parts)
                       for name in ("forward", "backward", "tp", "cp", "ep")))


def _block_time(ctx: StepContext, compute: ComputeModel, moe: bool) -> StageTime:
    ops = block_ops(ctx.job.model, ctx.shard, moe, ctx.layout.ep)
    recompute = Sourced()
    if ctx.layout.recompute != "none":  # Korthikanti et al. 2022 §5
        recompute = compute.ops(ops if ctx.layout.recompute == "full" else core_attention_ops(ops))
    return StageTime(
        forward=compute.ops(ops),
        backward=compute.ops(ops, backward=True) + recompute,
        tp=_tp_block(ctx),
        cp=_cp_block(ctx, compute, ops),
        ep=_ep_block(ctx) if moe else Sourced())


def _tp_collective(ctx: StepContext) -> Sourced:
    """One all-reduce (or reduce-scatter + all-gather with sequence parallelism: the same
    bytes) of a micro-batch's activations b·s/cp·h over the tp group."""
    size = ctx.shard.tokens * ctx.job.model.hidden_size * ctx.shard.bytes_per_value
    return ctx.collective("tp", "all_reduce", size)


def _tp_block(ctx: StepContext) -> Sourced:
    """Megatron-LM tensor parallelism: two all-reduces forward (after attention and MLP) and
    two backward (Shoeybi et al. 2019, Figure 4); full recompute repeats the forward two."""
    return _tp_collective(ctx) * (2 * (3 if ctx.layout.recompute == "full" else 2))


def _cp_block(ctx: StepContext, compute: ComputeModel, ops) -> Sourced:
    """Ring attention passes every rank's keys and values around the cp ring (cp - 1 steps)
    while computing; only what the attention compute cannot hide is exposed. Backward sends
    keys, values and their gradients (twice the bytes)."""
    layout, model = ctx.layout, ctx.job.model
    if layout.cp == 1:
        return Sourced()
    kv_heads = model.num_attention_heads // layout.tp if model.mla else \
        max(1, model.kv_heads // layout.tp)
    kv_bytes = ctx.shard.tokens * kv_heads * (model.qk_head_dim + model.v_head_dim) \
        * ctx.shard.bytes_per_value
    ring = ctx.collective("cp", "all_gather", kv_bytes * layout.cp)
    attention = core_attention_ops(ops)
    hidden_f = compute.ops(attention).total_s
    hidden_b = compute.ops(attention, backward=True).total_s
    exposed = max(0.0, ring.total_s - hidden_f) + max(0.0, 2 * ring.total_s - hidden_b)
    return ring.scaled_to(exposed)


def _ep_block(ctx: StepContext) -> Sourced:
    """Token dispatch and combine all-to-alls, forward and backward: four per MoE block, each
    rank sending its tokens·k expert inputs (Lepikhin et al. 2020, GShard, §2.2)."""
    layout, model = ctx.layout, ctx.job.model
    if layout.ep == 1:
        return Sourced()
    slots = ctx.shard.tokens * model.experts_per_token * (model.capacity_factor or 1.0)
    size = slots * model.hidden_size * ctx.shard.bytes_per_value
    return ctx.collective("ep", "all_to_all", size) * 4


def _pp(ctx: StepContext) -> Sourced:
    """Blocking sends of activations forward and gradients backward between neighbouring
    stages: two per micro-batch and model chunk on the critical path, plus fill and drain."""
    layout = ctx.layout
    if layout.pp == 1:
        return Sourced()
    size = ctx.shard.elementwise_tokens * ctx.job.model.hidden_size * ctx.shard.bytes_per_value
    sends = 2 * (ctx.microbatches * layout.vpp + layout.pp - 1)
    return ctx.collective("pp_p2p", "p2p", size) * sends


def _bubble(ctx: StepContext, stage: StageTime) -> Sourced:
    """Pipeline fill and drain: (pp - 1)/vpp micro-batch times for GPipe, 1F1B and interleaved
    (Narayanan et al. 2021, §2.2); ZB-H1 shrinks it to (pp - 1)·(T_F + T_B - T_W), which is
    (pp - 1)·T_F with the backward split evenly into input and weight gradients
    (Qi et al. 2023, §3); T_F carries half the stage's collectives."""
    layout = ctx.layout
    if layout.pp == 1:
        return Sourced()
    if layout.schedule == "zero-bubble":
        return (stage.forward + (stage.tp + stage.cp + stage.ep) * 0.5) * (layout.pp - 1)
    return stage.total * ((layout.pp - 1) / layout.vpp)


def _dp(ctx: StepContext, params: StageParams) -> Sourced:
    """Gradient reduction over the data-parallel ranks (dp·cp, Megatron-Core), exposed.
    ZeRO-0: all-reduce of the gradients; ZeRO-1/2: reduce-scatter of the gradients and
    all-gather of the updated weights; ZeRO-3: weights gathered for forward and backward and
    gradients reduce-scattered in every micro-batch (Rajbhandari et al. 2020, §7)."""
    layout, training = ctx.layout, ctx.job.training
    parts = []
    for count, axis in ((params.dense_per_rank(layout.tp), "dp_cp"),
                        (params.expert_per_rank(layout.tp, layout.ep), "edp")):
        grads = count * training.grad_bytes_per_param
        weights = count * training.weight_bytes_per_param
        if layout.zero_stage == 0:
            parts.append(ctx.collective(axis, "all_reduce", grads))
        elif layout.zero_stage < 3:
            parts += [ctx.collective(axis, "reduce_scatter", grads),
                      ctx.collective(axis, "all_gather", weights)]
        else:
            parts.append((ctx.collective(axis, "all_gather", weights) * 2
                          + ctx.collective(axis, "reduce_scatter", grads)) * ctx.microbatches)
    return total(parts)


def _optimizer(ctx: StepContext, params: StageParams, device) -> Sourced:
    """Adam update of the rank's shard of the optimizer states: measured per parameter count
    when the profile has it, else memory-bound at the analytic bytes per parameter."""
    layout = ctx.layout
    shards = layout.dp * layout.cp if layout.zero_stage >= 1 else 1
    dense = params.dense_per_rank(layout.tp) / shards
    expert_shards = max(1, shards // layout.ep) if layout.zero_stage >= 1 else 1
    count = dense + params.expert_per_rank(layout.tp, layout.ep) / expert_shards
    found = ctx.measured.optimizer_time(count) if ctx.measured is not None else None
    if found is not None:
        return Sourced.of(found.seconds, found.source)
    traffic = count * ctx.analytic.optimizer_bytes_per_param
    return Sourced.of(traffic / (device.memory_bytes_per_s
                                 * ctx.analytic.memory_bandwidth_efficiency), "analytic")


def breakdown(ctx: StepContext, stage: StageTime, params: StageParams, device
              ) -> tuple[TimeBreakdown, Sourced]:
    """The named components of the step, and the whole step split by source."""
    m = ctx.microbatches
    parts = {
        "compute_s": (stage.forward + stage.backward) * m,
        "tp_comm_s": stage.tp * m,
        "cp_comm_s": stage.cp * m,
        "ep_comm_s": stage.ep * m,
        "pp_comm_s": _pp(ctx),
        "bubble_s": _bubble(ctx, stage),
        "dp_comm_s": _dp(ctx, params),
        "optimizer_s": _optimizer(ctx, params, device),
    }
    return (TimeBreakdown(**{name: part.total_s for name, part in parts.items()}),
            total(parts.values()))
