"""Step time: per-stage task costs, the simulated pipeline, data parallelism, optimizer.

Every virtual stage's forward, backward and (ZB-H1) weight-gradient pass is costed from the
cost model with its own layers (embedding and LM head on the end stages), its exposed
communication per axis after the layout's overlaps, and its activation send to the next stage;
`schedule.simulate` then runs one data-parallel replica's pipeline schedule. The gradient
reduction follows each rank's last backward (overlapped in buckets when the layout says so,
`dp_buckets`), then the optimizer. A straggling GPU slows its stage and, through the
data-parallel reduction, every replica. Every duration is `Sourced` (measured / interpolated
/ analytic).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property, lru_cache, partial

from parasim.simulator.cost.comm import AxisNetwork, axis_network
from parasim.simulator.cost.compute import ComputeModel
from parasim.simulator.cost.profile import AnalyticProfile
from parasim.simulator.cost.sourced import Sourced, total
from parasim.simulator.dp_buckets import bucket_count, pipelined_exposed_s
from parasim.simulator.dualpipe import dual_bubble_s, send_target, simulate_dual
from parasim.simulator.job import Job
from parasim.simulator.layout import (
    DUAL_SCHEDULES,
    Layout,
    Recompute,
    rank_stages,
    recomputed_modules,
)
from parasim.simulator.memory import block_activation_bytes, stage_holders
from parasim.simulator.offload import block_exposed_s, optimizer_times_s
from parasim.simulator.zero_pp import zero_pp_traffic
from parasim.simulator.moe_balance import ExpertLoad, expert_load
from parasim.simulator.nvfp4 import precision_spans
from parasim.simulator.ops import Op, Shard, block_ops, core_attention_ops, embedding_ops, head_ops
from parasim.simulator.params import BlockGroup, StageParams, block_groups
from parasim.simulator.placement import axis_signature
from parasim.simulator.profile import ProfileDB, Timed
from parasim.simulator.results import TimeBreakdown
from parasim.simulator.schedule import Interval, TaskTimes, Timeline, simulate, with_streams

AXES = ("tp", "cp", "ep")
PASS_PARTS = ("compute", *AXES, "offload")
SPLIT_BACKWARD = ("zero-bubble", *DUAL_SCHEDULES)  # schedules that defer weight gradients


@dataclass(frozen=True)
class Pass:
    """One pass (forward, backward or weight gradient) of one micro-batch through one virtual
    stage: compute and the exposed communication of each axis."""

    compute: Sourced = Sourced()
    tp: Sourced = Sourced()
    cp: Sourced = Sourced()
    ep: Sourced = Sourced()
    offload: Sourced = Sourced()  # exposed PCIe copies of offloaded activations

    @cached_property  # asked of the same few passes by thousands of closed-form steps
    def total(self) -> Sourced:
        return self.compute + self.tp + self.cp + self.ep + self.offload

    def __add__(self, other: Pass) -> Pass:
        return Pass(*(getattr(self, f) + getattr(other, f) for f in PASS_PARTS))

    def __mul__(self, factor: float) -> Pass:
        return Pass(*(getattr(self, f) * factor for f in PASS_PARTS))


@dataclass(frozen=True)
class StageCost:
    """A virtual stage's passes for one micro-batch, and its send to the neighbour stage."""

    forward: Pass
    backward: Pass  # the whole backward, or only the input gradient under ZB-H1
    weight: Pass  # ZB-H1's weight gradient (empty otherwise)
    send: Sourced  # one activation (or gradient) to the next (previous) stage

    def task_times(self, slowdown: float = 1.0) -> TaskTimes:
        if slowdown == 1.0:
            return self._unslowed_times
        return self._times(slowdown)

    @cached_property
    def _unslowed_times(self) -> TaskTimes:
        return self._times(1.0)

    def _times(self, slowdown: float) -> TaskTimes:
        return TaskTimes(self.forward.total.total_s + self.forward.compute.total_s * (slowdown - 1),
                         self.backward.total.total_s + self.backward.compute.total_s * (slowdown - 1),
                         self.weight.total.total_s * slowdown, self.send.total_s)


@dataclass
class StepContext:
    """What every part of one step's costing shares; `flags` collects profile misses."""

    job: Job
    layout: Layout
    shard: Shard
    analytic: AnalyticProfile
    measured: ProfileDB | None
    microbatches: int
    profile: AnalyticProfile | None = None  # with its generations (`analytic`: resolved for
    #                                         the first node group's GPU)
    flags: set[str] = field(default_factory=set)
    # collectives already costed for this step (every stage asks for its sends alike)
    _collectives: dict[tuple, Sourced] = field(default_factory=dict, repr=False)

    def net(self, axis: str) -> AxisNetwork:
        """The collectives of one parallel axis on the cluster's topology."""
        return axis_network(self.job.cluster, self.layout, axis, self.analytic)

    def collective(self, axis: str, kind: str, size_bytes: float) -> Sourced:
        """A collective on every group of `axis`: from the profile's measured table when the
        groups sit inside one host (what `parasim profile` measures), else on the graph."""
        key = (axis, kind, size_bytes)
        if key not in self._collectives:
            self._collectives[key] = self._collective(axis, kind, size_bytes)
        return self._collectives[key]

    def _collective(self, axis: str, kind: str, size_bytes: float) -> Sourced:
        net = self.net(axis)
        if size_bytes <= 0:  # nothing to send (e.g. the expert gradients of a dense model)
            return Sourced()
        fixed_s = self.analytic.collective_overhead_s if net.size > 1 or kind == "p2p" else 0.0
        if self.measured is not None and net.size > 1 and net.within_host:
            found: Timed | None = self.measured.collective_time(kind, net.size, size_bytes)
            if found is not None:  # the fixed time: waits in training the table cannot hold
                return Sourced.of(found.seconds + fixed_s, found.source)
            self.flags.add(f"{kind} over {net.size} ranks ({axis}) at {size_bytes:.3g} B is "
                           "outside the profile's collectives: analytic")
        return Sourced.of(net.time_s(kind, size_bytes) + fixed_s, "analytic")

    def compute(self, device, precision: str | None = None) -> ComputeModel:
        """Op times on `device`, with the constants of its GPU generation, for GEMMs in
        `precision` (default: the run's)."""
        constants = (self.profile or self.analytic).for_gpu(device.name)
        return ComputeModel(device, precision or self.job.training.precision, constants,
                            self.measured)

    def shard_for(self, precision: str) -> Shard:
        """The shard of a block whose GEMMs run in `precision` (its saved linear inputs)."""
        lin = self.job.training.linear_input_bytes_for(precision)
        return self.shard if lin == self.shard.linear_input_bytes else replace(
            self.shard, linear_input_bytes=lin)

    def overlap(self, hidden_by: Sourced, comm: Sourced, enabled: bool,
                buckets: int | None = None) -> Sourced:
        """What `comm` adds to a pass: all of it, or with overlap only what `hidden_by`
        cannot hide plus the shared GPU's slowdown (profiles/analytic.yaml `overlap`). In
        `buckets` that the pass produces (or needs) evenly, the last (first) one cannot hide
        (`dp_buckets.pipelined_exposed_s`; without buckets, its limit of many)."""
        if not enabled:
            return comm
        if buckets is not None:
            return comm.scaled_to(pipelined_exposed_s(hidden_by.total_s, comm.total_s, buckets,
                                                      self.analytic.overlap_slowdown))
        extra = self.analytic.overlapped_s(hidden_by.total_s, comm.total_s) - hidden_by.total_s
        return comm.scaled_to(extra)

    def expert_load(self) -> ExpertLoad | None:
        model = self.job.model
        if not model.is_moe:
            return None
        return expert_load(model.num_experts, model.experts_per_token, self.layout.ep,
                           self.shard.tokens, model.router_skew, model.capacity_factor)


def step_context(job: Job, analytic: AnalyticProfile, measured: ProfileDB | None = None
                 ) -> StepContext:
    """The context of one prediction of `job` (its layout resolved)."""
    layout, training = job.layout, job.training
    assert layout is not None and layout.dp is not None, "resolve the layout first"
    shard = Shard(micro_batch=layout.micro_batch_size, seq_length=training.seq_length,
                  tp=layout.tp, cp=layout.cp, sequence_parallel=layout.sequence_parallel,
                  bytes_per_value=training.activation_bytes_per_value,
                  linear_input_bytes=training.linear_input_bytes_per_value,
                  moe_act_input_bytes=training.moe_act_input_bytes_per_value,
                  flash_attention=training.flash_attention)
    # the constants of the first node group's GPU generation (compute: each device's own)
    resolved = analytic.for_gpu(job.cluster.node_groups[0].gpu.name)
    return StepContext(job, layout, shard, resolved, measured,
                       training.global_batch_size // (layout.micro_batch_size * layout.dp),
                       analytic)


# Per-stage costs ------------------------------------------------------------------------------


def chunk_blocks(job: Job, stage: int) -> tuple[BlockGroup, ...]:
    """The blocks of virtual stage `stage`, grouped by kind (dense, MoE) and recompute mode."""
    layout = job.layout
    full = layout.full_recompute_layers[stage] if layout.full_recompute_layers else 0
    return _stage_blocks(job.model, job.stage_layers, stage, layout.recompute, full)


@lru_cache(maxsize=65536)  # the planner asks the same stages of thousands of layouts
def _stage_blocks(model, split: tuple[int, ...], stage: int, recompute: Recompute, full: int
                  ) -> tuple[BlockGroup, ...]:
    start = sum(split[:stage])
    return block_groups(model, start, start + split[stage], recompute, start + full)


def precision_chunks(job: Job, stage: int) -> list[tuple[str, tuple[BlockGroup, ...]]]:
    """Virtual stage `stage`'s blocks by GEMM precision: all in the run's, except that fp4
    runs keep their first and last blocks in bf16 (NVIDIA's NVFP4 recipe, `simulator.nvfp4`)."""
    precision = job.training.precision
    if precision != "fp4":
        return [(precision, chunk_blocks(job, stage))]
    split, layout = job.stage_layers, job.layout
    start = sum(split[:stage])
    full = layout.full_recompute_layers[stage] if layout.full_recompute_layers else 0
    return [(gemms, block_groups(job.model, lo, hi, layout.recompute, start + full))
            for lo, hi, gemms in precision_spans(start, start + split[stage],
                                                 job.model.num_layers)]


def rank_precision_groups(job: Job, rank: int) -> list[tuple[str, BlockGroup]]:
    """(GEMM precision, block group) of pipeline rank `rank` over its virtual stages."""
    return [(precision, group) for s in rank_stages(job.layout, rank)
            for precision, groups in precision_chunks(job, s) for group in groups]


def rank_block_groups(job: Job, rank: int) -> list[BlockGroup]:
    """The block groups held by pipeline rank `rank` over its virtual stages."""
    return [group for s in rank_stages(job.layout, rank) for group in chunk_blocks(job, s)]


def stage_cost(ctx: StepContext, stage: int, device) -> StageCost:
    """One micro-batch through virtual stage `stage`: its blocks, embedding or LM head."""
    job, shard = ctx.job, ctx.shard
    compute = ctx.compute(device)
    stages = len(job.stage_layers)
    forward, backward, weight = Pass(), Pass(), Pass()
    for precision, groups in precision_chunks(job, stage):
        gemms = ctx.compute(device, precision)
        for group in groups:
            f, b, w = _block_passes(ctx, gemms, group.moe, group.recompute)
            forward, backward, weight = (forward + f * group.count, backward + b * group.count,
                                         weight + w * group.count)
    extra = list(embedding_ops(job.model, shard)) if stage == 0 else []
    if stage == stages - 1:
        extra += head_ops(job.model, shard)
    vocab_parallel = _tp_collective(ctx) * ((stage == 0) + (stage == stages - 1))
    forward = forward + Pass(compute.ops(extra), vocab_parallel)
    backward = backward + Pass(compute.ops(extra, backward=True))
    send = _pp_send(ctx) if stages > 1 else Sourced()
    return StageCost(forward, backward, weight, send)


_BLOCKS: dict[tuple, tuple[Pass, Pass, Pass]] = {}


def _block_passes(ctx: StepContext, compute: ComputeModel, moe: bool, recompute: Recompute
                  ) -> tuple[Pass, Pass, Pass]:
    """A block's passes, shared between layouts that cost a block alike (the planner scores
    thousands): same model, shard, device, recompute, overlaps and tp/cp/ep placement. A
    measured profile is not cached (its misses are flagged per prediction)."""
    if ctx.measured is not None:
        return _block_passes_uncached(ctx, compute, moe, recompute)
    layout = ctx.layout
    key = (ctx.job.model, ctx.shard, moe, compute.device, compute.precision, ctx.analytic,
           recompute, layout.recompute_modules, layout.schedule in SPLIT_BACKWARD,
           layout.tp_comm_overlap, layout.cp_comm_overlap, layout.cp_style,
           layout.ep_comm_overlap, layout.ep, ctx.job.cluster, layout.offload.activations,
           *(axis_signature(layout, axis) for axis in AXES))
    passes = _BLOCKS.get(key)
    if passes is None:
        if len(_BLOCKS) > 4096:
            _BLOCKS.clear()
        passes = _BLOCKS[key] = _block_passes_uncached(ctx, compute, moe, recompute)
    return passes


def _block_passes_uncached(ctx: StepContext, compute: ComputeModel, moe: bool,
                           recompute: Recompute) -> tuple[Pass, Pass, Pass]:
    """Forward, backward (input gradient only under ZB-H1 and DualPipe(V)) and
    weight-gradient passes."""
    layout = ctx.layout
    ops = _paced(ctx, block_ops(ctx.job.model, ctx.shard, moe, layout.ep))
    f_compute, b_compute = _ops(compute, ops), _ops(compute, ops, backward=True)
    weight = Pass()
    if layout.schedule in SPLIT_BACKWARD:
        w = compute.weight_gradient([op.op if isinstance(op, _Paced) else op for op in ops])
        weight, b_compute = Pass(w), b_compute + w * -1
    if recompute != "none":  # Korthikanti et al. 2022 §5
        repeated = ops if recompute == "full" else _recomputed_ops(ops, layout)
        b_compute = b_compute + _ops(compute, repeated)
    gemms = _ops(compute, [op for op in ops if _kind(op) == "gemm"])
    # attention's pair, then the MLP's or the expert dispatch's (`_routed_tokens`)
    tp_pair = _tp_collective(ctx) + _tp_collective(ctx, _routed_tokens(ctx) if moe else None)
    tp_f = ctx.overlap(gemms, tp_pair, layout.tp_comm_overlap)
    tp_b = ctx.overlap(gemms, tp_pair * (2 if recompute == "full" else 1),
                       layout.tp_comm_overlap)
    cp_f, cp_b = _cp_passes(ctx, compute, ops, recompute)
    ep_f = ep_b = Sourced()
    if moe and layout.ep > 1:
        others = _ops(compute, [op for op in ops if not _name(op).startswith("expert_")])
        ep_f = ctx.overlap(others, _ep_all_to_all(ctx) * 2, layout.ep_comm_overlap)
        ep_b = ep_f
    f_off, b_off = _activation_offload(ctx, compute, moe, recompute, f_compute, b_compute)
    return (Pass(f_compute, tp_f, cp_f, ep_f, f_off), Pass(b_compute, tp_b, cp_b, ep_b, b_off),
            weight)


def _activation_offload(ctx: StepContext, compute: ComputeModel, moe: bool, recompute: Recompute,
                        forward: Sourced, backward: Sourced) -> tuple[Sourced, Sourced]:
    """Exposed copies of a block's stored activations to the host after its forward and back
    before its backward (`offload.block_exposed_s`); nothing without activation offload. Every
    block is charged, the one a chunk keeps too (at most one block's copy too many)."""
    if not ctx.layout.offload.activations:
        return Sourced(), Sourced()
    stored = block_activation_bytes(ctx.job.model, ctx.shard, moe, recompute,
                                    recomputed_modules(ctx.layout))
    return (Sourced.of(block_exposed_s(stored, forward.total_s, compute.device), "analytic"),
            Sourced.of(block_exposed_s(stored, backward.total_s, compute.device), "analytic"))


# The ops selective recompute repeats for each of `layout.RECOMPUTE_MODULES` but core_attn
# (the ops marked core_attention): Megatron-Core's --recompute-modules layernorm, mla_up_proj,
# moe_act, by the ops' names (`simulator.ops`).
RECOMPUTED_OPS = {"layernorm": ("norm1", "norm2"), "mla_up_proj": ("q_up", "kv_up"),
                  "moe_act": ("expert_activation",)}


def _recomputed_ops(ops, layout: Layout) -> list:
    """The block's ops that selective recompute runs again in the backward."""
    modules = recomputed_modules(layout)
    names = {name for m in modules for name in RECOMPUTED_OPS.get(m, ())}
    return [op for op in ops if _name(op) in names
            or ("core_attn" in modules and isinstance(op, Op) and op.core_attention)]


@dataclass(frozen=True)
class _Paced:
    """An expert op slowed by the busiest expert-parallel rank's extra tokens."""

    op: Op
    pace: float


def _imbalance(ctx: StepContext) -> float:
    """How much more than its padded share the busiest expert-parallel rank computes: the
    ops already carry the capacity padding (`ops.ffn_ops`), so the capacity factor is divided
    out of `moe_balance`'s pace."""
    load = ctx.expert_load()
    return 1.0 if load is None else load.pace_factor / (ctx.job.model.capacity_factor or 1.0)


def _paced(ctx: StepContext, ops) -> list:
    pace = _imbalance(ctx)
    if pace == 1:
        return list(ops)
    return [_Paced(op, pace) if op.name.startswith("expert_") else op for op in ops]


def _kind(op) -> str:
    return (op.op if isinstance(op, _Paced) else op).kind


def _name(op) -> str:
    return (op.op if isinstance(op, _Paced) else op).name


_OPS: dict[tuple, Sourced] = {}


def _ops(compute: ComputeModel, ops, backward: bool = False) -> Sourced:
    """The ops' summed times; from the roofline alone, shared between the blocks that run the
    same ops (a block's passes under each recompute mode and schedule repeat them)."""
    if compute.measured is not None:
        return _ops_uncached(compute, ops, backward)
    key = (compute, tuple(ops), backward)
    summed = _OPS.get(key)
    if summed is None:
        if len(_OPS) > 16384:
            _OPS.clear()
        summed = _OPS[key] = _ops_uncached(compute, ops, backward)
    return summed


def _ops_uncached(compute: ComputeModel, ops, backward: bool) -> Sourced:
    return total(compute.op(op.op, backward) * op.pace if isinstance(op, _Paced)
                 else compute.op(op, backward) for op in ops)


def message_bytes(ctx: StepContext, axis: str) -> float:
    """Bytes of one collective of an axis for one micro-batch on one rank: tp's activations
    b·s/cp·h; cp's keys and values of the whole sequence; ep's routed tokens b·s/cp·k·h
    (/tp with SP: each tp rank dispatches its own sequence shard); the activation (or
    gradient) a pipeline stage sends, b·s/cp·h (/tp with SP)."""
    model, layout, shard = ctx.job.model, ctx.layout, ctx.shard
    h, bpv = model.hidden_size, shard.bytes_per_value
    if axis == "tp":
        return shard.tokens * h * bpv
    if axis == "cp":
        kv_heads = model.num_attention_heads // layout.tp if model.mla else \
            max(1, model.kv_heads // layout.tp)
        return shard.tokens * kv_heads * (model.qk_head_dim + model.v_head_dim) * bpv * layout.cp
    if axis == "ep":
        return _routed_tokens(ctx) * shard.elementwise_tokens / shard.tokens * h * bpv
    assert axis == "pp_p2p", axis
    return shard.elementwise_tokens * h * bpv


def _routed_tokens(ctx: StepContext) -> float:
    """The expert inputs of a micro-batch's tokens on one tp group: tokens·k, padded to the
    capacity factor when one is set.

    Megatron-Core's all-to-all token dispatcher (`--moe-token-dispatcher-type alltoall`,
    megatron/core/transformer/moe/token_dispatcher.py, core 0.8-0.12) with tp > 1 and sequence
    parallelism: each tp rank routes its b·s/(cp·tp) tokens, sends their k copies over the ep
    group, then all-gathers what it received over the tp group (the experts are tp-sharded)
    and reduce-scatters the experts' output back: the MoE half of a block moves k times the
    dense MLP's tp bytes, and the ep all-to-all 1/tp of the tokens' copies."""
    model = ctx.job.model
    return ctx.shard.tokens * model.experts_per_token * (model.capacity_factor or 1.0)


def _tp_collective(ctx: StepContext, tokens: float | None = None) -> Sourced:
    """One all-reduce of a micro-batch's activations b·s/cp·h (or of `tokens` tokens' hidden
    states) over the tp group, or with
    sequence parallelism the reduce-scatter and the all-gather that replace it (Korthikanti et
    al. 2022, §4.2.2). Megatron-LM runs two per block forward and two backward (Shoeybi et al.
    2019, Figure 4); full recompute repeats the forward two in the backward pass. On the
    topology a ring reduce-scatter plus all-gather is the ring all-reduce, bytes and steps;
    from a measured profile they are two calls, each with its own fixed cost (on gloo
    1.3-1.6 ms each at 512 KiB against 1.8 ms for the all-reduce)."""
    size = message_bytes(ctx, "tp")
    if tokens is not None:
        size *= tokens / ctx.shard.tokens
    if ctx.layout.sequence_parallel:
        return ctx.collective("tp", "reduce_scatter", size) + \
            ctx.collective("tp", "all_gather", size)
    return ctx.collective("tp", "all_reduce", size)


def _cp_passes(ctx: StepContext, compute: ComputeModel, ops, recompute: Recompute
               ) -> tuple[Sourced, Sourced]:
    """Ring attention passes every rank's keys and values around the cp ring (cp - 1 steps)
    while it computes (overlap switchable); the backward sends keys, values and their
    gradients (twice the bytes). Ulysses: `_ulysses_all_to_alls`."""
    layout = ctx.layout
    if layout.cp == 1:
        return Sourced(), Sourced()
    if layout.cp_style == "ulysses":
        forward = _ulysses_all_to_alls(ctx)
        return forward, forward * (2 if recompute == "full" else 1)
    ring = ctx.collective("cp", "all_gather", message_bytes(ctx, "cp"))
    attention = core_attention_ops([op for op in ops if isinstance(op, Op)])
    return (ctx.overlap(compute.ops(attention), ring, layout.cp_comm_overlap),
            ctx.overlap(compute.ops(attention, backward=True), ring * 2, layout.cp_comm_overlap))


def ulysses_bytes(ctx: StepContext) -> tuple[float, float]:
    """Bytes one rank holds before each of the two Ulysses all-to-alls of a block's forward:
    its b·s/cp tokens' queries, keys and values (of its tp shard of the heads), then the
    attention output. Keys and values with fewer heads per tp rank than cp are replicated to
    cp heads first, so every rank receives one (DeepSpeed-Ulysses, Jacobs et al. 2023,
    arXiv:2309.14509, §3.1-3.2: with h the hidden size and N the sequence, 4·N·h/P values
    cross each link per layer for MHA)."""
    model, layout, shard = ctx.job.model, ctx.layout, ctx.shard
    heads = model.num_attention_heads // layout.tp
    kv = heads if model.mla else max(1, model.kv_heads // layout.tp, layout.cp)
    dqk, dv, bpv = model.qk_head_dim, model.v_head_dim, shard.bytes_per_value
    qkv = shard.tokens * (heads * dqk + kv * (dqk + dv)) * bpv
    return qkv, shard.tokens * heads * dv * bpv


def _ulysses_all_to_alls(ctx: StepContext) -> Sourced:
    """A block's forward under Ulysses: queries, keys and values all-to-all from the
    sequence split to the head split, attention over the whole sequence on cp times fewer
    heads (the same FLOPs as the ring's, `ops.core_attention`), the output all-to-all back;
    the backward runs the same two on the gradients. Nothing to hide them behind: attention
    waits for its inputs, the next projection for its output."""
    qkv, out = ulysses_bytes(ctx)
    return ctx.collective("cp", "all_to_all", qkv) + ctx.collective("cp", "all_to_all", out)


def _ep_all_to_all(ctx: StepContext) -> Sourced:
    """Token dispatch and combine: two all-to-alls per pass, each rank sending its tokens·k
    expert inputs (Lepikhin et al. 2020, GShard, §2.2); the busiest rank receives the most."""
    return ctx.collective("ep", "all_to_all", message_bytes(ctx, "ep")) * _imbalance(ctx)


def _pp_send(ctx: StepContext) -> Sourced:
    """One activation (forward) or its gradient (backward) to the neighbouring stage."""
    return ctx.collective("pp_p2p", "p2p", message_bytes(ctx, "pp_p2p"))


# The step -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepResult:
    """The simulated step: components, sources, timeline."""

    breakdown: TimeBreakdown
    sources: Sourced
    timeline: Timeline
    critical_rank: int


def simulate_step(ctx: StepContext, devices: list, params: list[StageParams],
                  record: bool = False) -> StepResult:
    """Costs per virtual stage, the pipeline simulated, then DP reduction and optimizer."""
    layout = ctx.layout
    costs = _stage_costs(ctx, devices)
    timeline = _run_schedule(ctx, costs, [1.0] * len(costs), record)
    tails = [_tail(ctx, r, costs, params[r], devices[r]) for r in range(layout.pp)]
    ends = [timeline.finish_s[r] + tails[r][0].total_s + tails[r][1].total_s
            for r in range(layout.pp)]
    # The breakdown is the busiest rank's: its work, and everything else until the last rank
    # is done (fill, drain, waiting on slower stages) as bubble and pipeline sends.
    critical = max(range(layout.pp), key=lambda r: (timeline.busy_s[r], ends[r]))
    if record:
        sends_to = partial(send_target, layout) if layout.schedule in DUAL_SCHEDULES else None
        drawn = with_streams(timeline.intervals, layout.pp, [_stream_seconds(c) for c in costs],
                             [c.send.total_s for c in costs], sends_to)
        timeline = replace(timeline, intervals=drawn + _tail_intervals(timeline, tails))
    last = max(range(layout.pp), key=ends.__getitem__)  # the rank that ends the step
    parts = _components(ctx, critical, costs, timeline, tails[critical], max(ends),
                        timeline.path_send_s[last])
    parts["straggler_s"] = Sourced.of(_straggler_s(ctx, costs, ends, tails), "analytic")
    parts["overhead_s"] = Sourced.of(ctx.analytic.step_overhead_s, "analytic")
    return StepResult(TimeBreakdown(**{k: v.total_s for k, v in parts.items()}),
                      total(parts.values()), timeline, critical)


def closed_form_step_s(ctx: StepContext, devices: list, params: list[StageParams]) -> float:
    """The step without simulating the schedule, for ranking many layouts quickly: the
    slowest rank's m micro-batches plus the others' fill and drain,
    m·T + (Σ_r t_r - T)/vpp (Narayanan et al. 2021 §2.2 for equal ranks), plus the tail."""
    layout = ctx.layout
    costs = _stage_costs(ctx, devices)
    per_stage = {id(c): c.task_times() for c in costs}
    rank_s = [sum(per_stage[id(c)].forward_s + per_stage[id(c)].backward_s
                  + per_stage[id(c)].weight_s for c in costs[r::layout.pp])
              for r in range(layout.pp)]
    slowest = max(rank_s)
    pipeline_s = ctx.microbatches * slowest + (sum(rank_s) - slowest) / layout.vpp
    if layout.schedule in DUAL_SCHEDULES:
        pipeline_s = _dual_closed_form_s(ctx, costs)
    tails: dict[tuple, float] = {}
    for r in range(layout.pp):
        key = (r == 0, params[r], devices[r], tuple(id(c) for c in costs[r::layout.pp]))
        if key not in tails:
            tails[key] = sum(x.total_s for x in _tail(ctx, r, costs, params[r], devices[r]))
    return pipeline_s + max(tails.values()) + ctx.analytic.step_overhead_s


def closed_form_lower_bound_s(ctx: StepContext, devices: list) -> float:
    """At most `closed_form_step_s` of the layout, and of it with every block recomputed in
    full, from one block's passes alone (no stage costs, embedding, LM head, sends or
    data-parallel tail), for a search to drop what cannot win before costing it. With L blocks,
    m micro-batches and Σ the blocks' passes on the fastest of `devices`:
    - 1F1B, GPipe, interleaved, ZB-H1: m·T + (Σ_r t_r - T)/vpp grows with T, which is at least
      the mean Σ_r t_r/pp, and Σ_r t_r ≥ Σ: at least (Σ/pp)(m + (pp - 1)/vpp);
    - DualPipe(V): the slowest rank is at least the mean rank. Its forwards each cost at least
      their chunk's compute, tensor- and context-parallel time (what an F&B pair cannot hide),
      m·L/pp blocks' worth per rank; its bubble (S/2 - 1)(F&B + B - 3W), S stages, is at least
      (S/2 - 1)·(L/S)·(F + 2B - W) of one block's compute (F&B ≥ F + B + W), W exact.
    Recomputing in full only adds compute, so the bound holds for that estimate too."""
    layout, model = ctx.layout, ctx.job.model
    layers = model.num_layers
    groups = block_groups(model, 0, layers, layout.recompute)
    bounds = []
    for device in dict.fromkeys(devices):
        compute = ctx.compute(device)
        passes = [(g.count, _block_passes(ctx, compute, g.moe, g.recompute)) for g in groups]
        if layout.schedule not in DUAL_SCHEDULES:
            work = sum(n * (f.total.total_s + b.total.total_s + w.total.total_s)
                       for n, (f, b, w) in passes)
            bounds.append(work / layout.pp * (ctx.microbatches + (layout.pp - 1) / layout.vpp))
            continue
        unhidden = sum(n * sum(p.compute.total_s + p.tp.total_s + p.cp.total_s for p in (f, b, w))
                       for n, (f, b, w) in passes)
        bubble = sum(n * (f.compute.total_s + 2 * b.compute.total_s - w.total.total_s)
                     for n, (f, b, w) in passes)
        stages = layout.num_virtual_stages
        bounds.append(ctx.microbatches * unhidden / layout.pp
                      + (stages / 2 - 1) * bubble / stages)
    return min(bounds) + ctx.analytic.step_overhead_s


def _dual_closed_form_s(ctx: StepContext, costs: list[StageCost]) -> float:
    """DualPipe(V)'s pipeline without simulating it: the slowest rank's work, its F&B pairs'
    saving counted on all but PP of its forwards (the warm-up and cool-down run unpaired),
    plus the source's bubble (PP/2 - 1)(F&B + B - 3W) on that rank's mean chunk
    (`dualpipe.dual_bubble_s`). Ranks with the same two chunks are costed once."""
    layout, pp = ctx.layout, ctx.layout.pp
    forwards = ctx.microbatches * chunk_share(layout) * 2  # per rank, both chunks
    pairs = max(0.0, forwards - layout.num_virtual_stages)
    seen: dict[tuple[int, int], float] = {}
    for rank in range(pp):
        first, second = costs[rank], costs[rank + pp]
        key = (id(first), id(second))
        if key in seen:
            continue
        times = [first.task_times(), second.task_times()]
        nominal = sum(t.forward_s + t.backward_s + t.weight_s for t in times) / 2
        pair_s = (overlapped_pair_s(ctx, first, second) + overlapped_pair_s(ctx, second, first)) / 2
        busy = forwards * nominal - pairs * (nominal - pair_s)
        f, b, w = (sum(getattr(t, k) for t in times) / 2
                   for k in ("forward_s", "backward_s", "weight_s"))
        seen[key] = busy + dual_bubble_s(layout, f, b + w, w, pair_s)
    return max(seen.values())


def block_time_s(ctx: StepContext, device, recompute: Recompute | None = None) -> float:
    """One transformer block, one micro-batch, all passes with exposed communication, under
    `recompute` (default: the layout's): the mean over the model's dense and MoE blocks."""
    compute = ctx.compute(device)
    model = ctx.job.model
    groups = block_groups(model, 0, model.num_layers, recompute or ctx.layout.recompute)
    total_s = sum(g.count * sum(p.total.total_s for p in _block_passes(ctx, compute, g.moe,
                                                                       g.recompute))
                  for g in groups)
    return total_s / model.num_layers


def _stream_seconds(cost: StageCost) -> dict[str, dict[str, float]]:
    """Seconds of compute and of each axis's exposed communication per task kind (the trace's
    tracks, `schedule.with_streams`)."""
    return {kind: {name: getattr(p, name).total_s for name in ("compute", *AXES)}
            for kind, p in (("F", cost.forward), ("B", cost.backward), ("W", cost.weight))}


def _tail_intervals(timeline: Timeline, tails: list[tuple[Sourced, Sourced]]) -> tuple:
    """Each rank's exposed gradient reduction and optimizer step after its last task."""
    out = []
    for rank, (reduce, optimizer) in enumerate(tails):
        start = timeline.finish_s[rank]
        out.append(Interval(rank, "dp", "gradient reduction", start,
                            start + reduce.total_s))
        out.append(Interval(rank, "compute", "optimizer", start + reduce.total_s,
                            start + reduce.total_s + optimizer.total_s))
    return tuple(out)


def _stage_costs(ctx: StepContext, devices: list) -> list[StageCost]:
    """The costs of chunk c of rank r at c·pp + r (virtual stage c·pp + r, except under
    DualPipe(V), `layout.rank_stages`); stages alike (same blocks and GPU, neither end)
    once."""
    memo: dict[tuple, StageCost] = {}
    layout = ctx.layout
    stages, pp = layout.num_virtual_stages, layout.pp
    out = []
    for v in range(pp * layout.chunks_per_rank):
        stage, device = rank_stages(layout, v % pp)[v // pp], devices[v % pp]
        key = (chunk_blocks(ctx.job, stage), device, stage == 0, stage == stages - 1)
        if key not in memo:
            memo[key] = stage_cost(ctx, stage, device)
        out.append(memo[key])
    return out


def _run_schedule(ctx: StepContext, costs: list[StageCost], slowdowns: list[float],
                  record: bool = False) -> Timeline:
    """The pipeline schedule simulated on the chunks' task times (each slowed by its factor):
    `schedule.simulate`, or `dualpipe.simulate_dual` with its overlapped F&B pairs."""
    times = [c.task_times(f) for c, f in zip(costs, slowdowns)]
    if ctx.layout.schedule not in DUAL_SCHEDULES:
        return simulate(ctx.layout, ctx.microbatches, times, record)
    pp, alike = ctx.layout.pp, {}
    pairs = {}
    for rank in range(pp):
        for f in (rank, rank + pp):
            for b in (rank, rank + pp):
                key = (id(costs[f]), id(costs[b]), slowdowns[f])
                if key not in alike:
                    alike[key] = overlapped_pair_s(ctx, costs[f], costs[b], slowdowns[f])
                pairs[f, b] = alike[key]
    return simulate_dual(ctx.layout, ctx.microbatches, times, pairs, record)


def overlapped_pair_s(ctx: StepContext, forward: StageCost, backward: StageCost,
                      slowdown: float = 1.0) -> float:
    """DualPipe's F&B chunk: one micro-batch's forward and another's whole backward (input
    and weight gradients) on one rank, run as one. Their compute adds up; the expert
    all-to-alls each leaves exposed (dispatch and combine) run beside the pair's compute,
    which hides them up to the shared GPU's slowdown (`StepContext.overlap`): DeepSeek-V3
    report, arXiv:2412.19437 §3.2.1: "both all-to-all and PP communication can be fully
    hidden" (the pipeline sends are hidden by the schedule itself, `dualpipe`). Tensor- and
    context-parallel communication stays as each pass exposes it."""
    passes = forward.forward + backward.backward + backward.weight
    compute = passes.compute * slowdown
    hidden = ctx.overlap(compute, passes.ep, True)
    return compute.total_s + passes.tp.total_s + passes.cp.total_s + hidden.total_s


def _rank_passes(ctx: StepContext, rank: int, costs: list[StageCost]) -> Pass:
    """All compute and exposed collectives of a rank's tasks over the step (before
    DualPipe's F&B overlap): every micro-batch through each chunk, or under DualPipe through
    one of the rank's two copies."""
    chunks = costs[rank::ctx.layout.pp]
    return total_passes([c.forward + c.backward + c.weight for c in chunks]) * \
        (ctx.microbatches * chunk_share(ctx.layout))


def chunk_share(layout: Layout) -> float:
    """The share of the micro-batches each of a rank's chunks runs: 1/2 under DualPipe (one
    direction each), else all."""
    return 0.5 if layout.schedule == "dualpipe" else 1.0


def total_passes(passes: list[Pass]) -> Pass:
    out = Pass()
    for p in passes:
        out = out + p
    return out


def _components(ctx: StepContext, rank: int, costs: list[StageCost], timeline: Timeline,
                tail: tuple[Sourced, Sourced], step_s: float, sends_s: float
                ) -> dict[str, Sourced]:
    """The busiest rank's step: its work, its exposed gradient reduction and optimizer step,
    and the rest of the step as idle time. Of that, `sends_s`, the sends on the chain of
    tasks that ends the pipeline (`Timeline.path_send_s` of the rank that finishes last),
    count as pp_comm, the rest (fill, drain, slower stages) as bubble."""
    work = _rank_passes(ctx, rank, costs)
    if ctx.layout.schedule in DUAL_SCHEDULES:  # the F&B pairs hid part of the all-to-alls
        hidden_s = max(0.0, work.total.total_s - timeline.busy_s[rank])
        work = replace(work, ep=work.ep.scaled_to(max(0.0, work.ep.total_s - hidden_s)))
    idle_s = step_s - timeline.busy_s[rank] - tail[0].total_s - tail[1].total_s
    if idle_s < 1e-9 * step_s:  # the rounding of the timeline's sums, not idle time
        idle_s = 0.0
    pp_s = min(idle_s, sends_s)
    return {
        "compute_s": work.compute, "tp_comm_s": work.tp, "cp_comm_s": work.cp,
        "ep_comm_s": work.ep,
        "pp_comm_s": costs[rank].send.scaled_to(pp_s),
        "bubble_s": work.total.scaled_to(idle_s - pp_s),
        "dp_comm_s": tail[0], "optimizer_s": tail[1], "offload_s": work.offload,
    }


def _tail(ctx: StepContext, rank: int, costs: list[StageCost], params: StageParams, device
          ) -> tuple[Sourced, Sourced]:
    """(exposed data-parallel communication, optimizer) after the rank's last task.

    The gradient reduction follows the last micro-batch's backward, in buckets behind it with
    overlap_grad_reduce (Megatron-LM `--overlap-grad-reduce`; `dp_buckets`: the last bucket is
    always exposed, and on pipeline ranks after the first the whole one-bucket reduction);
    ZeRO-1/2's all-gather of the updated weights follows the optimizer, bucket by bucket ahead
    of the next step's first forward with overlap_param_gather (charged here: the same
    seconds); ZeRO-3's gathers hide behind every pass. ZeRO-3 reduce-scatters every
    micro-batch, and all m of them are charged behind the last backward: pessimistic in
    structure (the earlier ones run beside later passes), but the FSDP runs of
    arXiv:2504.14960 support it; hiding them behind the passes predicted those runs 25-35%
    fast (2026-12-05). What overlaps compute slows it (`StepContext.overlap`)."""
    layout = ctx.layout
    traffic = _dp_traffic(ctx, params, bucketed=rank == 0 and layout.overlap_grad_reduce)
    chunks = costs[rank::layout.pp]
    last_backward = total(c.backward.total + c.weight.total for c in chunks)
    exposed = ctx.overlap(last_backward, traffic.reduce, layout.overlap_grad_reduce,
                          traffic.buckets)
    if traffic.regather.total_s:
        first_forward = total(c.forward.total for c in chunks)
        exposed = exposed + ctx.overlap(first_forward, traffic.regather,
                                        layout.overlap_param_gather, traffic.buckets)
    if traffic.spread.total_s:
        passes = total(c.forward.total + c.backward.total for c in chunks) * ctx.microbatches
        exposed = exposed + ctx.overlap(passes, traffic.spread, layout.overlap_param_gather)
    if layout.offload.optimizer:
        return exposed, _offloaded_optimizer(ctx, params, device, last_backward)
    return exposed, _optimizer(ctx, params, device)


@dataclass(frozen=True)
class DpTraffic:
    """A rank's data-parallel communication in one step, by when it can run."""

    reduce: Sourced  # the gradient reduction, behind the last micro-batch's backward
    regather: Sourced  # ZeRO-1/2: the updated weights' all-gather, after the optimizer
    spread: Sourced  # ZeRO-3: the weight gathers, behind every pass
    buckets: int  # what `reduce` and `regather` run in


def _dp_traffic(ctx: StepContext, params: StageParams, bucketed: bool) -> DpTraffic:
    """The rank's data-parallel traffic over dp·cp (experts over dp·cp/ep), Rajbhandari et
    al. 2020 §7. ZeRO-0: all-reduce; ZeRO-1/2: reduce-scatter, then all-gather of the updated
    weights; ZeRO-3 (and ZeRO++, which builds on it): all-gather of the weights for every
    forward and backward and a reduce-scatter of the gradients per micro-batch, in one unit
    per block (FSDP's `fully_shard` per block; `runtime.parallel.zero3`) plus the rest.
    Below stage 3, each collective runs in Megatron-Core's buckets where `bucketed` (first
    pipeline rank, overlap_grad_reduce; `dp_buckets`), each bucket a collective of its own;
    with interleaving every chunk of that rank is bucketed, where Megatron-Core buckets only
    its first chunk, whose backward ends the step (the others' reductions run beside it)."""
    layout, training = ctx.layout, ctx.job.training
    m = ctx.microbatches
    reduce, regather, spread, buckets = [], [], [], 0
    for count, axis in ((params.dense_per_rank(layout.tp), "dp_cp"),
                        (params.expert_per_rank(layout.tp, layout.ep), "edp")):
        if count <= 0:
            continue
        if layout.zero_stage >= 3:
            r, g = zero_pp_traffic(ctx, axis, count) if layout.zero_pp else (
                ctx.collective(axis, "reduce_scatter", count * training.grad_bytes_per_param),
                ctx.collective(axis, "all_gather", count * training.weight_bytes_per_param) * 2)
            reduce.append(r * m)
            spread.append(g * m)
            continue
        n = bucket_count(count, layout.dp, bucketed)
        buckets += n
        grads = count * training.grad_bytes_per_param / n
        weights = count * training.weight_bytes_per_param / n
        if layout.zero_stage == 0:
            reduce.append(ctx.collective(axis, "all_reduce", grads) * n)
        else:
            reduce.append(ctx.collective(axis, "reduce_scatter", grads) * n)
            regather.append(ctx.collective(axis, "all_gather", weights) * n)
    if layout.zero_stage >= 3:
        buckets = _blocks_per_rank(ctx) + 1
    return DpTraffic(total(reduce), total(regather), total(spread), max(1, buckets))


def _blocks_per_rank(ctx: StepContext) -> int:
    """Transformer blocks on the pipeline rank with the most (ZeRO-3's units, less the rest)."""
    split, pp = ctx.job.stage_layers, ctx.layout.pp
    return max(sum(split[r::pp]) for r in range(pp))


def _shard_params(ctx: StepContext, params: StageParams) -> float:
    """Parameters whose optimizer states the rank holds (its ZeRO shard, or all)."""
    layout = ctx.layout
    shards = layout.dp * layout.cp * stage_holders(layout) if layout.zero_stage >= 1 else 1
    dense = params.dense_per_rank(layout.tp) / shards
    expert_shards = max(1, shards // layout.ep) if layout.zero_stage >= 1 else 1
    return dense + params.expert_per_rank(layout.tp, layout.ep) / expert_shards


def _offloaded_optimizer(ctx: StepContext, params: StageParams, device,
                         last_backward: Sourced) -> Sourced:
    """The step's optimizer under optimizer offload (`offload.optimizer_times_s`), without
    ZeRO-Offload's one-step delayed update (§5.2, optional): the shard's gradients go to
    the host bucket by bucket behind the last micro-batch's backward, as the gradient reduction
    does (§4.1-4.2's schedule; fully exposed without overlap_grad_reduce); then the CPU update and
    the weights' way back run in overlapped chunks, max(CPU Adam, copy up) (Megatron-LM
    `--overlap-cpu-optimizer-d2h-h2d`: "Overlap CPU optimizer step, gradients D2H and updated
    parameters H2D")."""
    training, layout = ctx.job.training, ctx.layout
    group = ctx.job.cluster.node_groups[0]
    down_s, cpu_s, up_s = optimizer_times_s(_shard_params(ctx, params),
                                            training.weight_bytes_per_param,
                                            training.grad_bytes_per_param, device, group)
    down = ctx.overlap(last_backward, Sourced.of(down_s, "analytic"), layout.overlap_grad_reduce)
    return down + Sourced.of(max(cpu_s, up_s), "analytic")


def _optimizer(ctx: StepContext, params: StageParams, device) -> Sourced:
    """Adam update of the rank's shard of the optimizer states: measured per parameter count
    when the profile has it, else memory-bound at the analytic bytes per parameter."""
    count = _shard_params(ctx, params)
    found = ctx.measured.optimizer_time(count) if ctx.measured is not None else None
    if found is not None:
        return Sourced.of(found.seconds, found.source)
    traffic = count * ctx.analytic.optimizer_bytes_per_param
    return Sourced.of(traffic / (device.memory_bytes_per_s
                                 * ctx.analytic.memory_bandwidth_efficiency), "analytic")


def _straggler_s(ctx: StepContext, costs: list[StageCost], ends: list[float],
                 tails: list[tuple[Sourced, Sourced]]) -> float:
    """One GPU `straggler_slowdown` times slower: its pipeline runs the slowed stage's compute
    that much longer, and the data-parallel reduction makes every replica wait for it. The
    straggler is put on the rank where it costs most (the busiest), a worst case."""
    slowdown = ctx.job.cluster.straggler_slowdown
    if slowdown == 1:
        return 0.0
    layout = ctx.layout
    worst = 0.0
    for rank in range(layout.pp):
        slowed = _run_schedule(ctx, costs, [slowdown if v % layout.pp == rank else 1.0
                                            for v in range(len(costs))])
        worst = max(worst, max(slowed.finish_s[r] + tails[r][0].total_s + tails[r][1].total_s
                               for r in range(layout.pp)))
    return max(0.0, worst - max(ends))
