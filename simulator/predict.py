"""The first time and memory model: `predict(job) -> StepPrediction`.

Analytic and replaceable, part by part: op times from the roofline (`cost.compute`),
collectives on the cluster's topology graph with contention between the groups of an axis
(`cost.comm`, `topology`, `placement`), the closed-form pipeline
bubble, activations per schedule (`memory`). Each pipeline rank is costed separately (its own
layers, embedding or LM head, its slowest GPU in mixed clusters); the slowest rank sets the pace
of the pipeline (Narayanan et al. 2021, §2.2: step = (m + (pp-1)/vpp) · t_stage).
Communication is not overlapped with compute in this model (issue 5 adds overlap).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from simulator.cost.comm import AxisNetwork, axis_network
from simulator.cost.compute import ops_time_s
from simulator.cost.profile import AnalyticProfile, analytic_profile
from simulator.flops import hardware_flop_per_step, model_flop_per_step
from simulator.hardware import DeviceSpec, NodeGroup
from simulator.job import Job, num_microbatches
from simulator.layout import Layout
from simulator.memory import (
    block_activation_bytes,
    embedding_activation_bytes,
    head_activation_bytes,
    in_flight_microbatches,
    rank_model_states,
)
from simulator.ops import Shard, block_ops, core_attention_ops, embedding_ops, head_ops
from simulator.params import StageParams, active_params, block_kinds, stage_params, total_params
from simulator.placement import axis_groups
from simulator.results import RankMemory, RunPrediction, StepPrediction, TimeBreakdown


@dataclass(frozen=True)
class StageTime:
    """One pipeline rank's time for one micro-batch, split by kind (forward + backward)."""

    forward_s: float  # compute of the forward pass
    backward_s: float  # compute of the backward pass, with recomputation
    tp_s: float  # exposed tensor-parallel collectives, forward and backward
    cp_s: float
    ep_s: float

    @property
    def total_s(self) -> float:
        return self.forward_s + self.backward_s + self.tp_s + self.cp_s + self.ep_s


@dataclass(frozen=True)
class Context:
    """What every part of one prediction shares."""

    job: Job
    layout: Layout
    shard: Shard
    profile: AnalyticProfile
    microbatches: int

    def net(self, axis: str) -> AxisNetwork:
        """The collectives of one parallel axis on the cluster's topology."""
        return axis_network(self.job.cluster, self.layout, axis, self.profile)


def predict(job: Job, profile: AnalyticProfile | None = None) -> StepPrediction:
    """Step time, FLOPs and per-rank memory of `job` under its layout."""
    assert job.layout is not None and job.layout.dp is not None, "resolve the layout first"
    layout, training, model = job.layout, job.training, job.model
    profile = profile or analytic_profile()
    shard = Shard(micro_batch=layout.micro_batch_size, seq_length=training.seq_length,
                  tp=layout.tp, cp=layout.cp, sequence_parallel=layout.sequence_parallel,
                  bytes_per_value=training.activation_bytes_per_value,
                  flash_attention=training.flash_attention)
    ctx = Context(job, layout, shard, profile, num_microbatches(training, layout))
    per_rank = [stage_params(model, job.stage_layers, layout.pp, r) for r in range(layout.pp)]
    devices = [_stage_device(job, r) for r in range(layout.pp)]
    times = [_stage_time(ctx, r, devices[r]) for r in range(layout.pp)]
    slowest = max(range(layout.pp), key=lambda r: times[r].total_s)
    breakdown = _breakdown(ctx, times[slowest], per_rank[slowest], devices[slowest])
    prediction = StepPrediction(
        breakdown=breakdown,
        tokens_per_step=training.tokens_per_step,
        num_gpus=job.cluster.world_size,
        model_flop_per_step=model_flop_per_step(model, training),
        hardware_flop_per_step=hardware_flop_per_step(model, training, layout.recompute),
        peak_flop_per_s=sum(g.num_gpus * g.gpu.peak_flop_per_s(training.precision)
                            for g in job.cluster.node_groups),
        params_total=total_params(model),
        params_active=active_params(model),
        stages=tuple(_stage_memory(ctx, r, per_rank[r]) for r in range(layout.pp)),
        microbatches=ctx.microbatches,
    )
    return _with_run(prediction, job)


# Devices --------------------------------------------------------------------------------------


def _stage_groups(job: Job, rank: int) -> list[NodeGroup]:
    """The node groups whose GPUs run pipeline rank `rank` (all its tp, cp and dp peers)."""
    cluster = job.cluster
    if cluster.is_homogeneous:
        return [cluster.node_groups[0]]
    ranks = axis_groups(job.layout, "pp")[:, rank]
    return list({id(g): g for g in map(cluster.group_of_rank, ranks.tolist())}.values())


def _stage_device(job: Job, rank: int) -> DeviceSpec:
    """The pipeline rank's pace-setting GPU: the slowest (then smallest) of its GPUs."""
    return min((g.gpu for g in _stage_groups(job, rank)),
               key=lambda d: (d.peak_flop_per_s(job.training.precision), d.memory_bytes))


def _stage_capacity_bytes(job: Job, rank: int) -> float:
    return min(g.gpu.memory_bytes for g in _stage_groups(job, rank))


# Time -----------------------------------------------------------------------------------------


def _stage_time(ctx: Context, rank: int, device: DeviceSpec) -> StageTime:
    """One micro-batch through pipeline rank `rank`: its blocks, embedding, LM head."""
    job, layout, shard, profile = ctx.job, ctx.layout, ctx.shard, ctx.profile
    precision = job.training.precision
    n_dense, n_moe = _rank_block_kinds(job, rank)
    forward = backward = tp = cp = ep = 0.0
    for count, moe in ((n_dense, False), (n_moe, True)):
        if not count:
            continue
        ops = block_ops(job.model, shard, moe, layout.ep)
        f = ops_time_s(ops, device, precision, profile)
        b = ops_time_s(ops, device, precision, profile, backward=True)
        recompute = _recompute_time_s(ctx, ops, device)
        forward += count * f
        backward += count * (b + recompute)
        tp += count * _tp_block_s(ctx)
        cp += count * _cp_block_s(ctx, ops, device)
        ep += count * (_ep_block_s(ctx) if moe else 0.0)
    extra = []
    if rank == 0:
        extra += embedding_ops(job.model, shard)
    if rank == layout.pp - 1:
        extra += head_ops(job.model, shard)
    forward += ops_time_s(extra, device, precision, profile)
    backward += ops_time_s(extra, device, precision, profile, backward=True)
    tp += (rank == 0) * _tp_collective_s(ctx) + (rank == layout.pp - 1) * _tp_collective_s(ctx)
    return StageTime(forward, backward, tp, cp, ep)


def _rank_block_kinds(job: Job, rank: int) -> tuple[int, int]:
    """(dense, MoE) blocks held by pipeline rank `rank` over its virtual stages."""
    split, pp = job.stage_layers, job.layout.pp
    n_dense = n_moe = 0
    for chunk in range(rank, len(split), pp):
        start = sum(split[:chunk])
        d, m = block_kinds(job.model, start, start + split[chunk])
        n_dense, n_moe = n_dense + d, n_moe + m
    return n_dense, n_moe


def _recompute_time_s(ctx: Context, ops, device: DeviceSpec) -> float:
    """Forward work repeated in the backward pass (Korthikanti et al. 2022 §5)."""
    mode = ctx.layout.recompute
    if mode == "none":
        return 0.0
    repeated = ops if mode == "full" else core_attention_ops(ops)
    return ops_time_s(repeated, device, ctx.job.training.precision, ctx.profile)


def _tp_collective_s(ctx: Context) -> float:
    """One all-reduce (or reduce-scatter + all-gather with sequence parallelism: the same
    bytes) of a micro-batch's activations b·s/cp·h over the tp group."""
    size = ctx.shard.tokens * ctx.job.model.hidden_size * ctx.shard.bytes_per_value
    return ctx.net("tp").time_s("all_reduce", size)


def _tp_block_s(ctx: Context) -> float:
    """Megatron-LM tensor parallelism: two all-reduces forward (after attention and MLP) and
    two backward (Shoeybi et al. 2019, Figure 4); full recompute repeats the forward two."""
    per_pass = 2 * _tp_collective_s(ctx)
    return per_pass * (3 if ctx.layout.recompute == "full" else 2)


def _cp_block_s(ctx: Context, ops, device: DeviceSpec) -> float:
    """Ring attention passes every rank's keys and values around the cp ring (cp - 1 steps)
    while computing; only what the attention compute cannot hide is exposed. Backward sends
    keys, values and their gradients (twice the bytes)."""
    layout, model = ctx.layout, ctx.job.model
    if layout.cp == 1:
        return 0.0
    kv_heads = model.num_attention_heads // layout.tp if model.mla else max(1, model.kv_heads // layout.tp)
    kv_bytes = ctx.shard.tokens * kv_heads * (model.qk_head_dim + model.v_head_dim) \
        * ctx.shard.bytes_per_value
    ring = ctx.net("cp").time_s("all_gather", kv_bytes * layout.cp)
    precision = ctx.job.training.precision
    attention = core_attention_ops(ops)
    attention_f = ops_time_s(attention, device, precision, ctx.profile)
    attention_b = ops_time_s(attention, device, precision, ctx.profile, backward=True)
    return max(0.0, ring - attention_f) + max(0.0, 2 * ring - attention_b)


def _ep_block_s(ctx: Context) -> float:
    """Token dispatch and combine all-to-alls, forward and backward: four per MoE block, each
    rank sending its tokens·k expert inputs (Lepikhin et al. 2020, GShard, §2.2)."""
    layout, model = ctx.layout, ctx.job.model
    if layout.ep == 1:
        return 0.0
    slots = ctx.shard.tokens * model.experts_per_token * (model.capacity_factor or 1.0)
    size = slots * model.hidden_size * ctx.shard.bytes_per_value
    return 4 * ctx.net("ep").time_s("all_to_all", size)


def _pp_s(ctx: Context) -> float:
    """Blocking sends of activations forward and gradients backward between neighbouring
    stages: two per micro-batch and model chunk on the critical path, plus fill and drain."""
    layout = ctx.layout
    if layout.pp == 1:
        return 0.0
    size = ctx.shard.elementwise_tokens * ctx.job.model.hidden_size * ctx.shard.bytes_per_value
    one = ctx.net("pp_p2p").time_s("p2p", size)
    return 2 * one * (ctx.microbatches * layout.vpp + layout.pp - 1)


def _bubble_s(ctx: Context, stage: StageTime) -> float:
    """Pipeline fill and drain: (pp - 1)/vpp micro-batch times for GPipe, 1F1B and interleaved
    (Narayanan et al. 2021, §2.2); ZB-H1 shrinks it to (pp - 1)·(T_F + T_B - T_W), which is
    (pp - 1)·T_F with the backward split evenly into input and weight gradients
    (Qi et al. 2023, §3)."""
    layout = ctx.layout
    if layout.pp == 1:
        return 0.0
    if layout.schedule == "zero-bubble":  # T_F: forward compute and half the collectives
        return (layout.pp - 1) * (stage.forward_s + (stage.tp_s + stage.cp_s + stage.ep_s) / 2)
    return (layout.pp - 1) / layout.vpp * stage.total_s


def _dp_s(ctx: Context, params: StageParams) -> float:
    """Gradient reduction over the data-parallel ranks (dp·cp, Megatron-Core), exposed.
    ZeRO-0: all-reduce of the gradients; ZeRO-1/2: reduce-scatter of the gradients and
    all-gather of the updated weights; ZeRO-3: weights gathered for forward and backward and
    gradients reduce-scattered in every micro-batch (Rajbhandari et al. 2020, §7)."""
    layout, training = ctx.layout, ctx.job.training
    dense = params.dense_per_rank(layout.tp)
    expert = params.expert_per_rank(layout.tp, layout.ep)
    total = 0.0
    for count, axis in ((dense, "dp_cp"), (expert, "edp")):
        net = ctx.net(axis)
        grads, weights = count * training.grad_bytes_per_param, count * training.weight_bytes_per_param
        if layout.zero_stage == 0:
            total += net.time_s("all_reduce", grads)
        elif layout.zero_stage < 3:
            total += net.time_s("reduce_scatter", grads) + net.time_s("all_gather", weights)
        else:
            total += ctx.microbatches * (2 * net.time_s("all_gather", weights)
                                         + net.time_s("reduce_scatter", grads))
    return total


def _optimizer_s(ctx: Context, params: StageParams, device: DeviceSpec) -> float:
    """Adam update of the rank's shard of the optimizer states: memory-bound."""
    layout = ctx.layout
    shards = layout.dp * layout.cp if layout.zero_stage >= 1 else 1
    dense = params.dense_per_rank(layout.tp) / shards
    expert_shards = max(1, shards // layout.ep) if layout.zero_stage >= 1 else 1
    expert = params.expert_per_rank(layout.tp, layout.ep) / expert_shards
    traffic = (dense + expert) * ctx.profile.optimizer_bytes_per_param
    return traffic / (device.memory_bytes_per_s * ctx.profile.memory_bandwidth_efficiency)


def _breakdown(ctx: Context, stage: StageTime, params: StageParams, device: DeviceSpec) -> TimeBreakdown:
    m = ctx.microbatches
    return TimeBreakdown(
        compute_s=m * (stage.forward_s + stage.backward_s),
        tp_comm_s=m * stage.tp_s,
        cp_comm_s=m * stage.cp_s,
        ep_comm_s=m * stage.ep_s,
        pp_comm_s=_pp_s(ctx),
        bubble_s=_bubble_s(ctx, stage),
        dp_comm_s=_dp_s(ctx, params),
        optimizer_s=_optimizer_s(ctx, params, device),
    )


# Memory ---------------------------------------------------------------------------------------


def _stage_memory(ctx: Context, rank: int, params: StageParams) -> RankMemory:
    job, layout, shard = ctx.job, ctx.layout, ctx.shard
    states = rank_model_states(params, job.training, layout)
    n_dense, n_moe = _rank_block_kinds(job, rank)
    per_mb = sum(count * block_activation_bytes(job.model, shard, moe, layout.recompute)
                 for count, moe in ((n_dense, False), (n_moe, True)) if count)
    if rank == 0:
        per_mb += embedding_activation_bytes(job.model, shard)
    if rank == layout.pp - 1:
        per_mb += head_activation_bytes(job.model, shard)
    activations = in_flight_microbatches(layout, rank, ctx.microbatches) * per_mb
    activations += _working_bytes(ctx, rank, n_moe > 0, params)
    capacity = _stage_capacity_bytes(job, rank)
    return RankMemory(
        weights_bytes=states.weights_bytes,
        gradients_bytes=states.gradients_bytes,
        optimizer_bytes=states.optimizer_bytes,
        activations_bytes=activations,
        capacity_bytes=ctx.profile.usable_memory_bytes(capacity),
    )


def _working_bytes(ctx: Context, rank: int, moe: bool, params: StageParams) -> float:
    """Transient memory on top of the stored activations: under full recompute one block's
    activations are rebuilt for its backward pass (Korthikanti et al. §5); under ZeRO-3 the
    weights of the block being computed and of the prefetched next one are gathered."""
    job, layout = ctx.job, ctx.layout
    working = 0.0
    if layout.recompute == "full":
        working += block_activation_bytes(job.model, ctx.shard, moe, "none")
    if layout.zero_stage == 3:
        layers = sum(job.stage_layers[c] for c in range(rank, len(job.stage_layers), layout.pp))
        blocks = params.dense - params.embedding - params.lm_head + params.expert / layout.ep
        working += 2 * blocks / layers / layout.tp * job.training.weight_bytes_per_param
    return working


def _with_run(prediction: StepPrediction, job: Job) -> StepPrediction:
    tokens = job.training.tokens
    if tokens is None:
        return prediction
    steps = math.ceil(tokens / prediction.tokens_per_step)
    time_s = steps * prediction.step_time_s
    run = RunPrediction(tokens=tokens, steps=steps, time_s=time_s,
                        gpu_hours=time_s / 3600 * prediction.num_gpus)
    return replace(prediction, run=run)
