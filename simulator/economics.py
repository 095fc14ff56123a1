"""Whole-run economics: a step prediction and its job -> days, GPU-hours, dollars, energy,
carbon and goodput under failures (`RunPrediction`), and the dollars and joules of one step
for the planner's `cost` and `energy` objectives.

The parts: prices per GPU-hour (catalog or job; on-demand and reserved), the power model
(`simulator.energy`), failures, checkpoints and restarts (`simulator.reliability`), all
parameters in the cluster's `FacilitySpec`. Closed forms only, so an estimate stays in
milliseconds; the Monte Carlo runs only when asked (`with_monte_carlo`).
"""

from __future__ import annotations

import math
from dataclasses import replace

from parasim.simulator.cost.profile import analytic_profile
from parasim.simulator.energy import (
    GpuPower,
    StepEnergy,
    compute_utilization,
    gpu_power,
    run_energy,
    step_energy,
)
from parasim.simulator.errors import SpecError
from parasim.simulator.facility import power_model
from parasim.simulator.hardware import NodeGroup
from parasim.simulator.job import Job
from parasim.simulator.reliability import (
    FailureModel,
    Segments,
    expected_run,
    interval_steps,
    monte_carlo,
    spare_restart_s,
    split_run,
    system_mtbf_s,
)
from parasim.simulator.results import RunPrediction, StepPrediction


# Prices -----------------------------------------------------------------------------------------


def _gpu_price(job: Job, group: NodeGroup) -> float:
    return job.cluster.price_per_gpu_hour_usd or group.gpu.price_per_hour_usd


def spare_gpus(job: Job) -> int:
    """GPUs of the spare nodes (nodes like the first node group's)."""
    spares = job.cluster.facility.spare_nodes or 0
    return spares * job.cluster.node_groups[0].gpus_per_node


def usd_per_hour(job: Job, reserved: bool) -> float:
    """Dollars per hour for every GPU paid for (the job's and the spares') at on-demand or
    reserved prices."""
    facility, groups = job.cluster.facility, job.cluster.node_groups
    paid = [(g.num_gpus, _gpu_price(job, g)) for g in groups]
    paid.append((spare_gpus(job), _gpu_price(job, groups[0])))
    return sum(n * (facility.reserved_price(price) if reserved else price) for n, price in paid)


# Power ------------------------------------------------------------------------------------------


def _tdp_w(job: Job, group: NodeGroup) -> float:
    return job.cluster.power_watts_per_gpu or group.gpu.tdp_watts


def _idle_w(job: Job, group: NodeGroup) -> float:
    """The catalog's idle draw, else a share of TDP; never above the (overridden) TDP."""
    model = power_model(analytic_profile().gemm.max_efficiency)
    idle = group.gpu.idle_watts
    if idle is None:
        idle = model.idle_fraction_of_tdp * group.gpu.tdp_watts
    return min(idle, _tdp_w(job, group))


def gpu_powers(job: Job, prediction: StepPrediction) -> list[tuple[int, GpuPower]]:
    """(GPUs, phase powers) per node group; compute phases at the step's achieved FLOP/s share
    of peak (the same share for every group)."""
    model = power_model(analytic_profile().gemm.max_efficiency)
    u = compute_utilization(prediction.hardware_flop_per_step, prediction.peak_flop_per_s,
                            prediction.breakdown)
    return [(g.num_gpus, gpu_power(_idle_w(job, g), _tdp_w(job, g), u, model))
            for g in job.cluster.node_groups]


def overheads_w(job: Job) -> tuple[float, float]:
    """(host, network) power of all nodes, spares included: per GPU slot and per NIC."""
    facility, groups = job.cluster.facility, job.cluster.node_groups
    spares = facility.spare_nodes or 0
    gpus = job.cluster.world_size + spare_gpus(job)
    nics = sum(g.num_nodes * g.nics_per_node for g in groups) + spares * groups[0].nics_per_node
    return facility.host_power_w_per_gpu * gpus, facility.network_power_w_per_nic * nics


def step_energy_of(job: Job, prediction: StepPrediction) -> StepEnergy:
    """IT energy of one step of the job's GPUs, hosts and fabric (spares excluded)."""
    facility, groups = job.cluster.facility, job.cluster.node_groups
    host = facility.host_power_w_per_gpu * job.cluster.world_size
    network = facility.network_power_w_per_nic * sum(g.num_nodes * g.nics_per_node
                                                     for g in groups)
    return step_energy(prediction.breakdown, gpu_powers(job, prediction), host, network)


def step_economics(job: Job, prediction: StepPrediction) -> tuple[float, float]:
    """(dollars, facility joules) of one step without failures: every GPU paid at the job's
    pricing; energy from the power model, times the PUE."""
    facility = job.cluster.facility
    dollars = prediction.step_time_s / 3600 * usd_per_hour(job, facility.pricing == "reserved")
    return dollars, step_energy_of(job, prediction).total_j * facility.pue


# Failures and the whole run ---------------------------------------------------------------------


def checkpoint_bytes(job: Job, prediction: StepPrediction) -> float:
    """Weights and optimizer states of every parameter, once (shards together)."""
    return prediction.params_total * job.training.checkpoint_bytes_per_param


def failure_model(job: Job, prediction: StepPrediction) -> FailureModel:
    """The job's MTBF (its nodes and GPUs in series), the checkpoint write over every node's
    storage rate, and the restart: relaunch (waiting for a repair when the spares are out)
    plus reading the checkpoint back at the same rate."""
    facility, cluster = job.cluster.facility, job.cluster
    storage = facility.checkpoint_write_bytes_per_s_per_node * cluster.num_nodes
    transfer_s = checkpoint_bytes(job, prediction) / storage
    relaunch = spare_restart_s(facility.restart_s, facility.repair_s, facility.spare_nodes,
                               cluster.num_nodes, facility.node_mtbf_s)
    mtbf = system_mtbf_s(cluster.num_nodes, facility.node_mtbf_s, cluster.world_size,
                         facility.gpu_mtbf_s)
    return FailureModel(mtbf_s=mtbf, checkpoint_s=transfer_s, restart_s=relaunch + transfer_s)


def run_segments(job: Job, prediction: StepPrediction, model: FailureModel) -> Segments:
    """The run's steps cut at its checkpoints: every training.checkpoint_interval_steps, else
    Young's interval in whole steps."""
    steps = math.ceil(job.training.tokens / prediction.tokens_per_step)
    every = job.training.checkpoint_interval_steps or interval_steps(prediction.step_time_s,
                                                                     model)
    return split_run(steps, prediction.step_time_s, every)


def run_prediction(job: Job, prediction: StepPrediction) -> RunPrediction | None:
    """The whole run of training.tokens (None without it), closed forms only."""
    if job.training.tokens is None:
        return None
    facility = job.cluster.facility
    model = failure_model(job, prediction)
    segments = run_segments(job, prediction, model)
    reliability = expected_run(segments, model)
    powers = gpu_powers(job, prediction)
    idle = [(sum(n * p.idle_w for n, p in powers),
             reliability.checkpoints_s + reliability.restarts_s),
            (spare_gpus(job) * powers[0][1].idle_w, reliability.wall_s)]
    energy = run_energy(step_energy_of(job, prediction),
                        reliability.useful_s + reliability.rework_s, prediction.step_time_s,
                        idle, reliability.wall_s, *overheads_w(job), facility.pue)
    return RunPrediction(
        tokens=job.training.tokens, steps=segments.full * segments.interval_steps
        + segments.last_steps, time_s=segments.useful_s, reliability=reliability,
        energy=energy, power=powers[0][1], checkpoint_bytes=checkpoint_bytes(job, prediction),
        gpus_paid=job.cluster.world_size + spare_gpus(job),
        on_demand_usd_per_hour=usd_per_hour(job, reserved=False),
        reserved_usd_per_hour=usd_per_hour(job, reserved=True), pricing=facility.pricing,
        grid_kg_co2_per_j=facility.grid_kg_co2_per_j, pue=facility.pue)


def with_monte_carlo(prediction: StepPrediction, job: Job, runs: int,
                     seed: int = 0) -> StepPrediction:
    """The prediction with `runs` simulated runs (seeded) beside the closed form."""
    if prediction.run is None:
        raise SpecError("--monte-carlo", runs, "simulates the whole run, which needs "
                        "training.tokens", "set training.tokens, e.g. --set training.tokens=15e12")
    if isinstance(runs, bool) or not isinstance(runs, int) or not 1 <= runs <= 1_000_000:
        raise SpecError("--monte-carlo", runs, "is the number of simulated runs",
                        "an integer from 1 to 1000000")
    model = prediction.run.reliability.model
    segments = run_segments(job, prediction, model)
    result = monte_carlo(segments, model, runs, seed)
    return replace(prediction, run=replace(prediction.run, monte_carlo=result))
