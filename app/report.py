"""Human-readable text for the command line: an estimate, a catalog listing."""

from __future__ import annotations

from parasim.simulator import catalog
from parasim.simulator.job import Job
from parasim.simulator.layout import recompute_text
from parasim.simulator.params import active_params, total_params
from parasim.simulator.results import RunPrediction, StepPrediction

GiB = 2**30


def _si(value: float, unit: str = "") -> str:
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}".rstrip()


def _count(value: float) -> str:
    """Parameter counts the way model cards write them: 70.6B, 1.01T, 125M."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.3g}{suffix}"
    return str(int(value))


def duration(seconds: float) -> str:
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.1f} hours"
    if seconds >= 120:
        return f"{seconds / 60:.1f} min"
    if seconds >= 1:
        return f"{seconds:.3f} s"
    return f"{seconds * 1e3:.2f} ms"




def _layout_line(job: Job) -> str:
    lay = job.layout
    assert lay is not None
    parts = [f"tp {lay.tp}", f"pp {lay.pp}", f"dp {lay.dp}", f"cp {lay.cp}", f"ep {lay.ep}"]
    if lay.vpp > 1:
        parts.append(f"vpp {lay.vpp}")
    extras = [f"micro-batch {lay.micro_batch_size}", lay.schedule,
              f"recompute {recompute_text(lay)}", f"ZeRO-{lay.zero_stage}"]
    if lay.sequence_parallel:
        extras.append("sequence-parallel")
    if lay.stages:
        extras.append(f"layers per stage {list(lay.stages)}")
    return ", ".join(parts) + " | " + ", ".join(extras)


def _cluster_line(job: Job) -> str:
    groups = " + ".join(f"{g.num_nodes} x {g.gpus_per_node} {g.gpu.name}"
                        for g in job.cluster.node_groups)
    return f"{job.cluster.name}: {groups} ({job.cluster.world_size} GPUs)"


def format_estimate(job: Job, p: StepPrediction) -> str:
    """The default output of `parasim estimate`."""
    mem = p.peak_stage
    verdict = "fits" if p.fits else "DOES NOT FIT"
    lines = [
        f"{job.source or 'job'}: {job.model.name} on {_cluster_line(job)}",
        f"  layout      {_layout_line(job)}; {p.microbatches} micro-batches per step",
        f"  step time   {duration(p.step_time_s)}   {_si(p.tokens_per_s)} tokens/s   "
        f"MFU {p.mfu:.1%}   HFU {p.hfu:.1%}   {p.tflops_per_gpu:.0f} TFLOP/s per GPU",
        f"  interval    {duration(p.step_time_s_low)} to {duration(p.step_time_s_high)} "
        "(5th-95th percentile of measured/predicted on the profile's calibration runs)",
        f"  parameters  {_count(p.params_total)} total, {_count(p.params_active)} active per token",
        f"  memory      peak {mem.peak_bytes / GiB:.1f} GiB of {mem.capacity_bytes / GiB:.1f} GiB "
        f"usable per GPU: {verdict}",
        f"              weights {mem.weights_bytes / GiB:.1f}, gradients "
        f"{mem.gradients_bytes / GiB:.1f}, optimizer {mem.optimizer_bytes / GiB:.1f}, "
        f"activations {mem.activations_bytes / GiB:.1f} GiB",
        "  breakdown   " + ", ".join(
            f"{name} {duration(seconds)} ({seconds / p.step_time_s:.0%})"
            for name, seconds in p.breakdown.as_dict().items() if seconds > 0),
    ]
    shares = ", ".join(f"{source} {share:.0%}" for source, share in p.sources.items() if share)
    lines.append(f"  sources     {shares} of the step time")
    lines += [f"  profile     {flag}" for flag in p.profile_flags]
    if p.run is not None:
        lines += run_lines(p.run, job.training.checkpoint_interval_steps is not None)
    return "\n".join(lines)


def _tonnes(kg: float) -> str:
    tonnes = kg / 1000
    return f"{tonnes:,.0f}" if tonnes >= 1000 else f"{tonnes:.3g}"


def run_lines(run: RunPrediction, interval_set: bool = False) -> list[str]:
    """The whole-run section of the estimate: time under failures, money, energy, risk."""
    r, m = run.reliability, run.reliability.model
    chosen = "training.checkpoint_interval_steps" if interval_set else "Young/Daly"
    lines = [
        f"  whole run   {_si(run.tokens)} tokens = {run.steps} steps: {duration(run.time_s)} "
        f"of training; expected {duration(run.wall_time_s)} with checkpoints and failures",
        f"  failures    job MTBF {duration(m.mtbf_s)}: {r.interruptions:.0f} interruptions "
        f"expected, {r.lost_s / 3600:.0f} h lost (rework {duration(r.rework_s)}, restarts "
        f"{duration(r.restarts_s)}); goodput {r.goodput:.1%}",
        f"  checkpoint  {run.checkpoint_bytes / GiB:.0f} GiB written in {duration(m.checkpoint_s)} "
        f"every {r.interval_steps} steps ({duration(r.interval_s)}, {chosen}); restart "
        f"{duration(m.restart_s)}",
        f"  cost        {_si(run.gpu_hours)} GPU-hours: ${_si(run.cost_on_demand_usd)} on demand, "
        f"${_si(run.cost_reserved_usd)} reserved ({run.pricing} counted)",
        f"  energy      {_si(run.energy_j / 3600, 'Wh')} at PUE {run.pue:.3g} (IT "
        f"{_si(run.energy.it_j / 3600, 'Wh')}), {_tonnes(run.co2_kg)} t CO2 at "
        f"{run.grid_kg_co2_per_j * 3.6e9:.0f} g/kWh",
        f"  power       per GPU: compute {run.power.compute_w:.0f} W, memory-bound "
        f"{run.power.memory_w:.0f} W, waiting {run.power.waiting_w:.0f} W, idle "
        f"{run.power.idle_w:.0f} W",
    ]
    mc = run.monte_carlo
    if mc is not None:
        day = 86400
        lines.append(f"  monte carlo {mc.runs} runs (seed {mc.seed}): mean {mc.mean_s / day:.2f} "
                     f"± {mc.std_err_s / day:.2f} days; p10 {mc.p10_s / day:.2f}, p50 "
                     f"{mc.p50_s / day:.2f}, p90 {mc.p90_s / day:.2f} days")
    return lines


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*row).rstrip() for row in [header, *rows])


def format_listing(kind: str) -> str:
    """`parasim list models|gpus|clusters`."""
    if kind == "gpus":
        rows = []
        for name in catalog.names("gpus"):
            d = catalog.gpu(name)
            rows.append([name, f"{d.peak_bf16_flop_per_s / 1e12:.0f}",
                         f"{d.peak_fp8_flop_per_s / 1e12:.0f}" if d.peak_fp8_flop_per_s else "-",
                         f"{d.memory_bytes / GiB:.0f}", f"{d.memory_bytes_per_s / 1e12:.2f}",
                         f"{d.nvlink_bytes_per_s / 1e9:.0f}", f"{d.tdp_watts:.0f}",
                         f"{d.price_per_hour_usd:.2f}"])
        return table(["gpu", "bf16 TFLOP/s", "fp8 TFLOP/s", "memory GiB", "HBM TB/s",
                       "NVLink GB/s", "TDP W", "$/GPU-hour"], rows)
    if kind == "models":
        rows = []
        for name in catalog.names("models"):
            m = catalog.model(name)
            moe = f"{m.num_experts}x top-{m.experts_per_token}" if m.is_moe else "-"
            rows.append([name, _count(total_params(m)), _count(active_params(m)), str(m.num_layers),
                         str(m.hidden_size), f"{m.num_attention_heads}/{m.kv_heads}",
                         str(m.vocab_size), moe])
        return table(["model", "params", "active", "layers", "hidden", "heads/kv", "vocab",
                       "experts"], rows)
    rows = []
    for name, entry in sorted(catalog.entries("clusters").items()):
        intra, inter = entry["intra_node"], entry["inter_node"]
        rows.append([name, entry["gpu"], str(entry["gpus_per_node"]),
                     f"{intra['bandwidth_GBps']:g}",
                     f"{inter.get('nics_per_node', 1)} x {inter['bandwidth_Gbps']:g}",
                     entry.get("topology", "fat-tree")])
    return table(["cluster", "gpu", "gpus/node", "NVLink GB/s per GPU", "NICs x Gb/s",
                   "topology"], rows)
