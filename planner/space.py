"""The candidate layouts of a job: every combination the model and cluster allow.

Degrees tp, cp, pp, ep, vpp, the micro-batch size, the schedule, the ZeRO stage and recompute
are enumerated; any field the user fixed under `parallel:` is held fixed. A combination that
cannot run is rejected with the reason, counted by reason: divisibility (the job's own checks,
`simulator.job.resolve_layout`), a tensor-parallel group larger than a node's NVLink domain,
or model states alone over the device memory (a lower bound: activations only add).
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from dataclasses import dataclass, fields, replace

from parasim.simulator.checks import divisors
from parasim.simulator.cost.profile import analytic_profile
from parasim.simulator.errors import SpecError
from parasim.simulator.job import Job, resolve_layout
from parasim.simulator.layout import Layout
from parasim.simulator.memory import rank_model_states
from parasim.simulator.params import stage_params

MICRO_BATCHES = (1, 2, 4, 8)
CONTEXT_PARALLEL = (1, 2, 4, 8)
LONG_SEQUENCE = 8192  # context parallelism is searched from this length on (Megatron-Core's
#                       guidance: CP for long sequences; below it the KV ring exposes more
#                       than it saves), unless the job fixes cp
VIRTUAL_STAGES = (1, 2, 4)
# ZeRO-0 is left out unless fixed: ZeRO-1 (Megatron's distributed optimizer) moves the same
# bytes (reduce-scatter + all-gather = all-reduce) with less memory, so it never loses.
ZERO_STAGES = (1, 3)
RECOMPUTES = ("none", "selective", "full")
SEARCHED = ("tp", "cp", "pp", "ep", "vpp", "micro_batch_size", "schedule", "zero_stage",
            "recompute", "sequence_parallel")


@dataclass(frozen=True)
class Space:
    """The layouts worth scoring, and how many were rejected, by reason."""

    layouts: tuple[Layout, ...]
    rejected: Counter

    @property
    def considered(self) -> int:
        return len(self.layouts) + sum(self.rejected.values())


def _choices(job: Job, fixed: dict) -> dict[str, tuple]:
    model, training, world = job.model, job.training, job.cluster.world_size
    options = {
        "tp": tuple(divisors(model.num_attention_heads)),
        "cp": tuple(c for c in CONTEXT_PARALLEL if c == 1 or (
            training.seq_length >= LONG_SEQUENCE and training.seq_length % (2 * c) == 0)),
        "pp": tuple(d for d in divisors(world) if d <= model.num_layers),
        "ep": tuple(divisors(model.num_experts)) if model.is_moe else (1,),
        "vpp": VIRTUAL_STAGES,
        "micro_batch_size": MICRO_BATCHES,
        "zero_stage": ZERO_STAGES,
        "recompute": RECOMPUTES,
    }
    for name, value in fixed.items():
        if name in options:
            options[name] = (value,)
    return options


def enumerate_space(job: Job, fixed: dict) -> Space:
    """Every layout of `job`'s model on its cluster, `fixed` fields held."""
    options = _choices(job, fixed)
    base = Layout(**{k: v for k, v in fixed.items() if k not in SEARCHED})
    layouts, rejected = [], Counter()
    names = list(options)
    for values in itertools.product(*(options[n] for n in names)):
        chosen = dict(zip(names, values))
        for schedule in _schedules(chosen["vpp"], chosen["pp"], fixed):
            layout, reason = _check(job, base, chosen, schedule, fixed)
            if reason:
                rejected[reason] += 1
            else:
                layouts.append(layout)
    return Space(tuple(layouts), rejected)


def _schedules(vpp: int, pp: int, fixed: dict) -> tuple[str, ...]:
    """Without a pipeline every schedule is the same step: only 1F1B is kept."""
    if "schedule" in fixed:
        return (fixed["schedule"],)
    if pp == 1:
        return ("1f1b",) if vpp == 1 else ()
    return ("interleaved",) if vpp > 1 else ("1f1b", "zero-bubble")


def _check(job: Job, base: Layout, chosen: dict, schedule: str, fixed: dict
           ) -> tuple[Layout | None, str]:
    """The resolved layout, or the reason it cannot run."""
    if chosen["tp"] > job.cluster.node_groups[0].gpus_per_node:
        return None, "tensor parallelism beyond one node's NVLink domain"
    sequence_parallel = fixed.get("sequence_parallel", chosen["tp"] > 1)
    try:
        layout = replace(base, schedule=schedule, sequence_parallel=sequence_parallel, **chosen)
        layout = resolve_layout(job.model, job.cluster, job.training, layout)
    except SpecError as err:
        return None, re.sub(r"\d+", "N", f"{err.field}: {err.why}").split(" (")[0]
    if not _states_fit(job, layout):
        return None, "model states alone exceed device memory"
    return layout, ""


def _states_fit(job: Job, layout: Layout) -> bool:
    """Lower bound: the busiest rank's weights, gradients and optimizer states (no
    activations) against the usable memory of the smallest GPU."""
    split_job = replace(job, layout=layout)
    capacity = analytic_profile().usable_memory_bytes(
        min(g.gpu.memory_bytes for g in job.cluster.node_groups))
    for rank in (0, layout.pp // 2, layout.pp - 1):
        params = stage_params(job.model, split_job.stage_layers, layout.pp, rank)
        if rank_model_states(params, job.training, layout).total_bytes > capacity:
            return False
    return True


def fixed_fields(parallel: dict | None) -> dict:
    """The `parallel:` fields the user set (held fixed by the search)."""
    known = {f.name for f in fields(Layout)}
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in (parallel or {}).items()
            if k in known}
