"""The first time and memory model: `predict(job) -> StepPrediction`.

Analytic and replaceable, part by part: op times from a measured profile or the roofline
(`cost.compute`, `profile`), collectives on the cluster's topology graph with contention
between the groups of an axis (`cost.comm`), the closed-form pipeline bubble (`step_time`),
activations per schedule (`memory`). Each pipeline rank is costed separately (its own layers,
embedding or LM head, its slowest GPU in mixed clusters); the slowest sets the pace.
"""

from __future__ import annotations

from dataclasses import replace

from parasim.simulator.cost.profile import AnalyticProfile, default_profile
from parasim.simulator.economics import run_prediction
from parasim.simulator.flops import hardware_flop_per_step, model_flop_per_step
from parasim.simulator.hardware import DeviceSpec, NodeGroup
from parasim.simulator.job import Job
from parasim.simulator.layout import rank_stages, recomputed_modules
from parasim.simulator.memory import (
    block_activation_bytes,
    embedding_activation_bytes,
    head_activation_bytes,
    offloaded_activations,
    rank_host_state_bytes,
    held_params,
    rank_model_states,
)
from parasim.simulator.offload import host_capacity_bytes, node_dp
from parasim.simulator.params import (
    BlockGroup,
    StageParams,
    active_params,
    norm_params,
    total_params,
)
from parasim.simulator.placement import axis_groups
from parasim.simulator.profile import ProfileDB
from parasim.simulator.results import RankMemory, StepPrediction
from parasim.simulator.step_time import (
    StepContext,
    chunk_blocks,
    rank_block_groups,
    rank_precision_groups,
    simulate_step,
    step_context,
)
from parasim.simulator.uncertainty import interval_source, step_band


def predict(job: Job, profile: AnalyticProfile | None = None,
            measured: ProfileDB | None = None, record: bool = False) -> StepPrediction:
    """Step time, FLOPs and per-rank memory of `job` under its layout; op and collective
    times from `measured` where it has them, else from the analytic `profile`. `record`
    keeps every task of the simulated pipeline for a trace."""
    assert job.layout is not None and job.layout.dp is not None, "resolve the layout first"
    layout, training, model = job.layout, job.training, job.model
    ctx = step_context(job, profile or default_profile(), measured)
    per_rank, devices = rank_params(job), rank_devices(job)
    step = simulate_step(ctx, devices, per_rank, record)
    load = ctx.expert_load()
    prediction = StepPrediction(
        breakdown=step.breakdown,
        sources=step.sources.shares(),
        profile_flags=tuple(sorted(ctx.flags)),
        tokens_per_step=training.tokens_per_step,
        num_gpus=job.cluster.world_size,
        model_flop_per_step=model_flop_per_step(model, training),
        hardware_flop_per_step=hardware_flop_per_step(model, training, [
            group for v in range(layout.num_virtual_stages) for group in chunk_blocks(job, v)]),
        peak_flop_per_s=sum(g.num_gpus * g.gpu.peak_flop_per_s(training.precision)
                            for g in job.cluster.node_groups),
        params_total=total_params(model),
        params_active=active_params(model),
        stages=tuple(rank_memory(ctx, r, per_rank[r], step.timeline.peak_in_flight[r])
                     for r in range(layout.pp)),
        microbatches=ctx.microbatches,
        dropped_token_fraction=load.dropped_fraction if load else 0.0,
        intervals=step.timeline.intervals,
        step_band=step_band(ctx.analytic.band, step.sources.shares()["analytic"]),
        interval_source=interval_source(ctx.analytic.band),
    )
    return _with_run(prediction, job)


def rank_params(job: Job) -> list[StageParams]:
    """What each pipeline rank holds, before sharding; ranks alike (the same blocks in each
    chunk, neither end) are counted once."""
    pp, memo, out = job.layout.pp, {}, []
    for rank in range(pp):
        held = rank_stages(job.layout, rank)
        chunks = tuple(chunk_blocks(job, v) for v in held)
        last = len(job.stage_layers) - 1
        key = (chunks, 0 in held, last in held)
        if key not in memo:
            memo[key] = held_params(job.model, job.stage_layers, job.layout, rank)
        out.append(memo[key])
    return out


def rank_devices(job: Job) -> list[DeviceSpec]:
    return [_stage_device(job, r) for r in range(job.layout.pp)]


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


def rank_capacity_bytes(job: Job, rank: int) -> float:
    """The smallest memory among the GPUs of pipeline rank `rank` (before the usable share)."""
    return min(g.gpu.memory_bytes for g in _stage_groups(job, rank))


# Memory ---------------------------------------------------------------------------------------


def rank_memory(ctx: StepContext, rank: int, params: StageParams, in_flight: float
                  ) -> RankMemory:
    """Model states, the activations of the micro-batches the simulated schedule held at
    once at its peak, and the working buffers."""
    job, layout, shard = ctx.job, ctx.layout, ctx.shard
    states = rank_model_states(params, job.training, layout,
                               node_dp(job.cluster, layout) if layout.zero_pp else 1)
    groups = rank_block_groups(job, rank)
    modules = recomputed_modules(layout)
    blocks = sum(g.count * block_activation_bytes(job.model, ctx.shard_for(precision), g.moe,
                                                  g.recompute, modules)
                 for precision, g in rank_precision_groups(job, rank))
    per_mb = 0.0
    held = rank_stages(layout, rank)
    if 0 in held:
        per_mb += embedding_activation_bytes(job.model, shard)
    if len(job.stage_layers) - 1 in held:
        per_mb += head_activation_bytes(job.model, shard)
    host = rank_host_state_bytes(params, job.training, layout)
    activations = in_flight * (per_mb + blocks)
    if layout.offload.activations:
        kept, moved = offloaded_activations(blocks, sum(g.count for g in groups), layout.vpp,
                                             in_flight)
        activations, host = in_flight * per_mb + kept, host + moved
    activations += _working_bytes(ctx, rank, groups, params)
    capacity = rank_capacity_bytes(job, rank)
    group = _stage_groups(job, rank)[0]
    return RankMemory(
        node_host_bytes=host * group.gpus_per_node,
        host_capacity_bytes=host_capacity_bytes(group) if layout.offload.any else None,
        weights_bytes=states.weights_bytes,
        gradients_bytes=states.gradients_bytes,
        optimizer_bytes=states.optimizer_bytes,
        activations_bytes=activations,
        capacity_bytes=ctx.analytic.usable_memory_bytes(capacity),
    )


def _working_bytes(ctx: StepContext, rank: int, groups: list[BlockGroup], params: StageParams
                   ) -> float:
    """Transient memory on top of the stored activations: for a block recomputed in full, its
    activations are rebuilt for its backward pass (Korthikanti et al. §5), one block at a time;
    under ZeRO-3 the weights of the block being computed and of the prefetched next one are
    gathered."""
    job, layout = ctx.job, ctx.layout
    rebuilt = [block_activation_bytes(job.model, ctx.shard, g.moe, "none")
               for g in groups if g.recompute == "full"]
    working = max(rebuilt, default=0.0)
    if layout.zero_stage == 3:
        held = rank_stages(layout, rank)
        layers = sum(job.stage_layers[c] for c in held)
        final_norm = norm_params(job.model) if len(job.stage_layers) - 1 in held else 0
        blocks = params.dense - params.embedding - params.lm_head - final_norm \
            + params.expert / layout.ep
        working += 2 * blocks / layers / layout.tp * job.training.weight_bytes_per_param
    return working


def _with_run(prediction: StepPrediction, job: Job) -> StepPrediction:
    """The whole run (days, dollars, energy, failures) when the job sets training.tokens."""
    if job.training.tokens is None:
        return prediction
    return replace(prediction, run=run_prediction(job, prediction))
