"""`parasim run PLAN.json`: run a plan's training steps in local ranks and measure them.

The trainer (`runtime.train:train_worker`, written with the model and its parallelisms) runs in
every rank as a `runtime.launch` worker: it gets `RunArgs`, runs `warmup_steps` untimed steps
then `steps` timed ones, and returns a `runtime.measure.RankMeasurement`. This module finds
the trainer, checks everything before a process starts, launches the ranks (inside an emulated
multi-node network if asked, whose inter-node rate it measures first) and summarises.
"""

from __future__ import annotations

import importlib
import os
import importlib.util
from dataclasses import dataclass
from typing import Any

from parasim.planner.plan import Plan
from parasim.runtime import netns
from parasim.runtime.errors import MeasurementError
from parasim.runtime.launch import Worker, check_launch, launch_on
from parasim.runtime.measure import Measurement, measurement, write_measurement
from parasim.simulator.errors import ParasimError, SpecError
from parasim.simulator.job import Job
from parasim.simulator.params import total_params

# What `parasim run` (app/run_cli.py, which imports this module lazily) uses.
__all__ = ["MeasurementError", "RunArgs", "find_trainer", "netns", "measure_plan",
           "prepare_run", "write_measurement"]

TRAINER_MODULE = "parasim.runtime.train"
TRAINER_FUNCTION = "train_worker"
PROBE_S = 0.25  # the inter-node rate check sends about this long at the configured rate
PROBE_BYTES = (1 << 20, 64 << 20)  # at least, at most


@dataclass(frozen=True, kw_only=True)
class RunArgs:
    """What the trainer of every rank gets (pickled to the ranks)."""

    job: Job  # the plan's job, its layout included
    plan_path: str
    steps: int  # timed steps, one RankMeasurement.step_times_s entry each
    warmup_steps: int  # untimed steps before them


def find_trainer() -> Worker:
    """`runtime.train:train_worker`, or a one-line error if the installation lacks it."""
    if importlib.util.find_spec(TRAINER_MODULE) is None:
        raise ParasimError("parasim run needs the runtime trainer (runtime/train.py), "
                           "which this installation lacks: reinstall parasim")
    worker = getattr(importlib.import_module(TRAINER_MODULE), TRAINER_FUNCTION, None)
    if worker is None:
        raise ParasimError(f"parasim run needs {TRAINER_MODULE}.{TRAINER_FUNCTION}"
                           "(rank, world_size, args); runtime/train.py has none")
    return worker


def measure_plan(plan: Plan, *, steps: int, warmup_steps: int, nproc: int, timeout_s: float,
                 emulation: netns.Emulation | None = None, job: Job | None = None
                 ) -> Measurement:
    """Run and measure the plan read from its file (`job`: the plan's job shrunk, when the
    layout runs on a small model of the family); SpecError before any process starts if it
    cannot run here, MeasurementError if a rank fails, dies or runs past `timeout_s`."""
    check_launch(nproc, timeout_s, emulation)
    world = (job or plan.job).layout.world_size
    if nproc != world:
        raise SpecError("--nproc", nproc, f"the plan's layout runs tp·cp·dp·pp = {world} ranks",
                        str(world))
    worker, args = prepare_run(plan, job=job, steps=steps, warmup_steps=warmup_steps,
                               ranks_here=nproc)
    if emulation is None:
        results = launch_on(None, worker, nproc, args, timeout_s)
        facts = None
    else:
        with netns.emulated_network(emulation) as network:
            facts = emulation_facts(network, emulation, nproc)
            results = launch_on(network, worker, nproc, args, timeout_s)
    return measurement(results, plan_path=args.plan_path, steps=steps,
                       warmup_steps=warmup_steps, emulation=facts)


def prepare_run(plan: Plan, *, job: Job | None, steps: int, warmup_steps: int,
                ranks_here: int) -> tuple[Worker, RunArgs]:
    """The trainer and its arguments, after every check that needs no process (the plan has a
    file, the host holds its `ranks_here` ranks, the trainer runs the layout): SpecError."""
    if plan.path is None:
        raise SpecError("plan", None, "has no plan file: a measurement names the file it "
                        "measured", "write the plan first (parasim.write_plan, or plan --out)")
    job = job or plan.job
    check_host_memory(job, ranks_here)
    worker = find_trainer()
    check = getattr(importlib.import_module(TRAINER_MODULE), "check_trainable", None)
    if check is not None:  # what the trainer cannot run, before any process starts
        check(job)
    return worker, RunArgs(job=job, plan_path=str(plan.path), steps=steps,
                           warmup_steps=warmup_steps)


def check_host_memory(job: Job, ranks_here: int | None = None) -> None:
    """The model states of this host's ranks (all of them by default; fp32 weights, gradients
    and two Adam moments: 16 bytes a parameter, split over tp·pp·ep at best) must fit in half
    this host's memory."""
    layout = job.layout
    ranks_here = layout.world_size if ranks_here is None else ranks_here
    states_bytes = 16 * total_params(job.model) / (layout.tp * layout.pp * layout.ep)
    need_bytes = states_bytes * ranks_here
    host_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need_bytes > host_bytes / 2:
        raise SpecError("plan", job.source, f"{job.model.name}'s model states need at least "
                        f"{need_bytes / 2**30:.1f} GiB on this host's {ranks_here} "
                        f"ranks, more than half its {host_bytes / 2**30:.0f} GiB",
                        "--shrink (the same layout on a small model of the family)")


def emulation_facts(network: netns.Network, emulation: netns.Emulation,
                    nproc: int) -> dict[str, Any]:
    """The emulated network as configured, and its inter-node rate as measured (node 0 to 1):
    the rate the prediction should be given is the one the links deliver (TCP/IP headers
    included, about 5 % below the line rate)."""
    facts: dict[str, Any] = {"nodes": emulation.nodes, "ranks_per_node": nproc // emulation.nodes,
                             "inter_node_Gbps": emulation.inter_node_bits_per_s / 1e9,
                             "inter_node_latency_us": emulation.latency_s * 1e6}
    if emulation.nodes > 1:
        probe = int(emulation.inter_node_bits_per_s / 8 * PROBE_S)
        probe = min(max(probe, PROBE_BYTES[0]), PROBE_BYTES[1])
        rate = netns.transfer_rate_bits_per_s(network.nodes[0], network.nodes[1],
                                              network.addresses[1], probe)
        facts["measured_inter_node_Gbps"] = rate / 1e9
    return facts
