"""Job: model + cluster + training (+ layout), checked against each other.

The specs validate themselves; this module checks what only the combination can say: does the
layout divide the model, fill the cluster, split the batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from parasim.simulator.checks import divisors
from parasim.simulator.dualpipe import check_dual_microbatches
from parasim.simulator.errors import SpecError
from parasim.simulator.hardware import ClusterSpec
from parasim.simulator.layout import DUAL_SCHEDULES, Layout, default_stage_layers
from parasim.simulator.model import ModelSpec
from parasim.simulator.training import TrainingSpec


@dataclass(frozen=True, kw_only=True)
class Job:
    """Everything a prediction needs. `layout` is None when the planner is to choose it."""

    model: ModelSpec  # the architecture
    cluster: ClusterSpec  # the machines
    training: TrainingSpec  # batch, sequence, precision
    layout: Layout | None = None  # resolved (dp set, checked) when present
    source: str = ""  # where the job came from, for messages
    # the job-file mapping it was built from (overrides applied), for plan files; None when
    # built in code
    mapping: Mapping | None = field(default=None, compare=False, repr=False)

    @property
    def stage_layers(self) -> tuple[int, ...]:
        """Layers of each virtual stage, in pipeline order (stage v·pp + r lives on rank r)."""
        assert self.layout is not None
        return self.layout.stages or default_stage_layers(
            self.model.num_layers, self.layout.num_virtual_stages)


def _valid_list(values: list[int]) -> str:
    return ", ".join(map(str, values)) if values else "none"


def check_model_split(model: ModelSpec, layout: Layout) -> None:
    """Tensor, expert and pipeline degrees must divide the model (Megatron-LM's checks)."""
    heads, kv = model.num_attention_heads, model.kv_heads
    if heads % layout.tp:
        raise SpecError("parallel.tp", layout.tp,
                        f"does not divide num_attention_heads={heads}", _valid_list(divisors(heads)))
    if model.mla is None and layout.tp <= kv and kv % layout.tp:
        raise SpecError("parallel.tp", layout.tp, f"does not divide num_kv_heads={kv}",
                        _valid_list(divisors(kv)) + f", or a multiple of {kv} dividing {heads}")
    if model.mla is None and layout.tp > kv and layout.tp % kv:
        raise SpecError("parallel.tp", layout.tp,
                        f"is above num_kv_heads={kv} but not a multiple of it (kv heads are "
                        "replicated in whole copies)", f"divisors or multiples of {kv}")
    for name in ("ffn_hidden_size", "moe_ffn_hidden_size", "shared_ffn_hidden_size"):
        width = getattr(model, name)
        if width and width % layout.tp:
            raise SpecError("parallel.tp", layout.tp, f"does not divide {name}={width}",
                            _valid_list([d for d in divisors(heads) if width % d == 0]))
    if layout.cp_style == "ulysses" and heads % (layout.tp * layout.cp):
        raise SpecError("parallel.cp", layout.cp,
                        f"with cp_style ulysses, tp·cp = {layout.tp}·{layout.cp} must divide "
                        f"num_attention_heads={heads} (each rank attends over whole heads)",
                        _valid_list([d for d in divisors(heads // layout.tp)])
                        + " (or cp_style: ring)")
    needs = {"mla_up_proj": (model.mla is not None, "has no MLA"),
             "moe_act": (model.is_moe, "has no experts")}
    for module in layout.recompute_modules or ():
        present, missing = needs.get(module, (True, ""))
        if not present:
            raise SpecError("parallel.recompute_modules", list(layout.recompute_modules),
                            f"names {module}, but model {model.name} {missing}",
                            "leave it out of the list")
    if layout.ep > 1 and not model.is_moe:
        raise SpecError("parallel.ep", layout.ep, f"model {model.name} has no experts", "1")
    if model.is_moe and model.num_experts % layout.ep:
        raise SpecError("parallel.ep", layout.ep,
                        f"does not divide num_experts={model.num_experts}",
                        _valid_list(divisors(model.num_experts)))
    _check_stages(model, layout)
    _check_full_recompute_layers(model, layout)


def _check_stages(model: ModelSpec, layout: Layout) -> None:
    layers, stages = model.num_layers, layout.num_virtual_stages
    if stages > layers:
        field, value = ("parallel.pp", layout.pp) if layout.vpp == 1 else ("parallel.vpp", layout.vpp)
        raise SpecError(field, value,
                        f"more pipeline stages (pp·vpp={stages}) than layers (num_layers={layers})",
                        f"pp·vpp <= {layers}")
    if layout.stages is None:
        return
    if len(layout.stages) != stages:
        raise SpecError("parallel.stages", list(layout.stages),
                        f"has {len(layout.stages)} entries for pp·vpp={stages} virtual stages",
                        f"a list of {stages} layer counts")
    if sum(layout.stages) != layers:
        raise SpecError("parallel.stages", list(layout.stages),
                        f"sums to {sum(layout.stages)}, not num_layers={layers}",
                        f"{stages} positive counts summing to {layers}")


def _check_full_recompute_layers(model: ModelSpec, layout: Layout) -> None:
    counts = layout.full_recompute_layers
    if counts is None:
        return
    stages = layout.num_virtual_stages
    if len(counts) != stages:
        raise SpecError("parallel.full_recompute_layers", list(counts),
                        f"has {len(counts)} entries for pp·vpp={stages} virtual stages",
                        f"a list of {stages} block counts")
    split = layout.stages or default_stage_layers(model.num_layers, stages)
    for stage, (n, held) in enumerate(zip(counts, split)):
        if n > held:
            raise SpecError(f"parallel.full_recompute_layers[{stage}]", n,
                            f"is more than the {held} blocks of virtual stage {stage}",
                            f"0..{held}")


def resolve_layout(model: ModelSpec, cluster: ClusterSpec, training: TrainingSpec,
                   layout: Layout) -> Layout:
    """The layout with dp derived from the world size, checked against model, cluster, batch."""
    check_model_split(model, layout)
    world = cluster.world_size
    per_replica = layout.ranks_per_replica
    if layout.dp is None:
        if world % per_replica:
            others = layout.tp * layout.cp
            raise SpecError("parallel.pp", layout.pp,
                            f"tp·cp·pp = {layout.tp}·{layout.cp}·{layout.pp} does not divide the "
                            f"cluster's {world} GPUs", "pp among " + _valid_list(
                                [d for d in divisors(world // others) if d <= model.num_layers])
                            if world % others == 0 else f"tp·cp dividing {world}")
        layout = layout.with_dp(world // per_replica)
    elif layout.world_size != world:
        raise SpecError("parallel.dp", layout.dp,
                        f"tp·pp·dp·cp = {layout.world_size} but the cluster has {world} GPUs",
                        f"dp = {world // per_replica}" if world % per_replica == 0
                        else "tp·cp·pp dividing " + str(world))
    expert_pool = layout.dp * layout.cp
    if layout.ep > 1 and expert_pool % layout.ep:
        raise SpecError("parallel.ep", layout.ep,
                        f"must divide dp·cp={expert_pool} (experts are split over data-parallel "
                        "ranks)", _valid_list([d for d in divisors(expert_pool)
                                              if model.num_experts % d == 0]))
    if layout.cp > 1 and training.seq_length % (2 * layout.cp):
        raise SpecError("parallel.cp", layout.cp,
                        f"2·cp must divide seq_length={training.seq_length} (load-balanced "
                        "causal split)", _valid_list([d for d in divisors(training.seq_length // 2)
                                                     if d <= 64]))
    batch_unit = layout.micro_batch_size * layout.dp
    if training.global_batch_size % batch_unit:
        raise SpecError("training.global_batch_size", training.global_batch_size,
                        f"is not divisible by micro_batch_size·dp = "
                        f"{layout.micro_batch_size}·{layout.dp} = {batch_unit}",
                        f"a multiple of {batch_unit}")
    microbatches = training.global_batch_size // batch_unit
    if layout.schedule in DUAL_SCHEDULES:
        check_dual_microbatches(training, layout, microbatches)
    if layout.schedule == "interleaved" and microbatches % layout.pp:
        raise SpecError("training.global_batch_size", training.global_batch_size,
                        f"gives {microbatches} micro-batches, which the interleaved schedule "
                        f"takes pp={layout.pp} at a time (Megatron-LM)",
                        f"a multiple of micro_batch_size·dp·pp = {batch_unit * layout.pp}")
    return layout


def resolve_key(layout: Layout) -> tuple:
    """What `resolve_layout` reads of a layout (keep the two together): layouts with equal
    keys resolve alike, to the same dp or the same SpecError. Not the ZeRO stage, recompute,
    sequence parallelism, rank order, overlaps or offload: the planner's layouts that differ
    only there (six in seven) share one resolution."""
    return (layout.tp, layout.cp, layout.cp_style, layout.pp, layout.ep, layout.vpp,
            layout.micro_batch_size, layout.schedule, layout.dp, layout.recompute_modules,
            layout.stages, layout.full_recompute_layers)


def num_microbatches(training: TrainingSpec, layout: Layout) -> int:
    """Micro-batches per pipeline per step: global batch / (micro batch · dp)."""
    assert layout.dp is not None
    return training.global_batch_size // (layout.micro_batch_size * layout.dp)
