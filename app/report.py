"""Human-readable text for the command line: an estimate, a catalog listing."""

from __future__ import annotations

from parasim.simulator import catalog
from parasim.simulator.job import Job
from parasim.simulator.layout import cp_text, offload_text, overlap_text, recompute_text
from parasim.simulator.nvfp4 import bf16_blocks
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


# (seconds per unit, name, decimals): a duration is shown in the largest unit it reaches twice
# (seconds from 1 s; milliseconds below)
UNITS = ((86400.0, "days", 1), (3600.0, "hours", 1), (60.0, "min", 1), (1.0, "s", 3),
         (1e-3, "ms", 2))


def time_unit(seconds: float) -> tuple[float, str, int]:
    """(seconds per unit, name, decimals) of the unit `duration` shows `seconds` in."""
    for scale, name, decimals in UNITS:
        if abs(seconds) >= (2 * scale if scale > 1 else scale):
            return scale, name, decimals
    return UNITS[-1]


def duration(seconds: float, unit: tuple[float, str, int] | None = None) -> str:
    """`8.461 s`, `647.04 ms`, `2.6 min`, `175.1 days`; in `unit` (a `time_unit`) when given,
    with at least two significant digits (`0.00028 s`)."""
    scale, name, decimals = unit or time_unit(seconds)
    value = seconds / scale
    text = f"{value:.{decimals}f}"
    if value and abs(value) < 10.0 ** (1 - decimals):  # fewer than two digits would show
        text = f"{value:.2g}"
    return f"{text} {name}"


def durations(*seconds: float, like: float | None = None) -> list[str]:
    """Several durations of one line in one unit: the unit of `like`, by default of the
    largest (`30.383 s to 2.6 min` becomes `0.51 min to 2.6 min`)."""
    if not seconds:
        return []
    unit = time_unit(max(seconds, key=abs) if like is None else like)
    return [duration(s, unit) for s in seconds]


def _layout_line(job: Job) -> str:
    lay = job.layout
    assert lay is not None
    parts = [f"tp {lay.tp}", f"pp {lay.pp}", f"dp {lay.dp}", cp_text(lay), f"ep {lay.ep}"]
    if lay.vpp > 1:
        parts.append(f"vpp {lay.vpp}")
    extras = [f"micro-batch {lay.micro_batch_size}", lay.schedule,
              f"recompute {recompute_text(lay)}",
              f"ZeRO-{lay.zero_stage}" + ("++" if lay.zero_pp else "")]
    if lay.sequence_parallel:
        extras.append("sequence-parallel")
    if overlap_text(lay):
        extras.append(overlap_text(lay))
    if lay.stages:
        extras.append(f"layers per stage {list(lay.stages)}")
    if lay.offload.any:
        extras.append(offload_text(lay))
    return ", ".join(parts) + " | " + ", ".join(extras)


def _cluster_line(job: Job) -> str:
    groups = " + ".join(f"{g.num_nodes} x {g.gpus_per_node} {g.gpu.name}" + (
        f" in {g.domain_gpus}-GPU NVLink domains" if g.domain_gpus != g.gpus_per_node else "")
        for g in job.cluster.node_groups)
    planes = f", {job.cluster.planes} fabric planes" if job.cluster.planes > 1 else ""
    return f"{job.cluster.name}: {groups} ({job.cluster.world_size} GPUs{planes})"


def _interval_line(p: StepPrediction) -> str:
    """The prediction interval and where it comes from, or why there is none."""
    if p.step_band == (1.0, 1.0):
        return f"  interval    none ({p.interval_source})"
    low, high = durations(p.step_time_s_low, p.step_time_s_high)
    return f"  interval    {low} to {high} ({p.interval_source})"


def _host_lines(p: StepPrediction) -> list[str]:
    """The host memory offloading takes on the fullest node, when the layout offloads."""
    if p.stages[0].host_capacity_bytes is None:
        return []
    node = max(p.stages, key=lambda m: m.node_host_bytes)
    verdict = "fits" if node.host_fits else "DOES NOT FIT"
    return [f"  host memory {node.node_host_bytes / GiB:.1f} GiB of "
            f"{node.host_capacity_bytes / GiB:.0f} GiB per node offloaded: {verdict}"]


def _moments_text(job: Job) -> str:
    """` (bf16 Adam moments)` where training.optimizer_moment_precision is not fp32."""
    precision = job.training.optimizer_moment_precision
    return "" if precision == "fp32" else f" ({precision} Adam moments)"


def _act_input_text(job: Job) -> str:
    return " (MoE SwiGLU inputs in FP8)" if job.training.fp8_moe_act_input else ""


def format_estimate(job: Job, p: StepPrediction) -> str:
    """The default output of `parasim estimate`."""
    mem = p.peak_stage
    on_gpu = all(m.peak_bytes <= m.capacity_bytes for m in p.stages)
    verdict = "fits" if on_gpu else "DOES NOT FIT"
    lines = [
        f"{job.source or 'job'}: {job.model.name} on {_cluster_line(job)}",
        f"  layout      {_layout_line(job)}; {p.microbatches} micro-batches per step",
        f"  step time   {duration(p.step_time_s)}   {_si(p.tokens_per_s)} tokens/s   "
        f"MFU {p.mfu:.1%}   HFU {p.hfu:.1%}   {p.tflops_per_gpu:.0f} TFLOP/s per GPU",
        _interval_line(p),
        f"  parameters  {_count(p.params_total)} total, {_count(p.params_active)} active per token",
        f"  memory      peak {mem.peak_bytes / GiB:.1f} GiB of {mem.capacity_bytes / GiB:.1f} GiB "
        f"usable per GPU: {verdict}",
        f"              weights {mem.weights_bytes / GiB:.1f}, gradients "
        f"{mem.gradients_bytes / GiB:.1f}, optimizer {mem.optimizer_bytes / GiB:.1f}"
        f"{_moments_text(job)}, activations {mem.activations_bytes / GiB:.1f} GiB"
        f"{_act_input_text(job)}",
        *_host_lines(p),
        "  breakdown   " + _breakdown_text(p),
    ]
    if job.training.precision == "fp4":
        lines.insert(2, "  precision   " + fp4_text(job.model.num_layers))
    if p.dropped_token_fraction > 0:
        lines.append(f"  experts     {p.dropped_token_fraction:.1%} of the routed tokens "
                     f"dropped: over capacity factor {job.model.capacity_factor:g} (router "
                     f"skew {job.model.router_skew:g})")
    shares = ", ".join(f"{source} {share:.0%}" for source, share in p.sources.items() if share)
    lines.append(f"  sources     {shares} of the step time")
    lines += [f"  profile     {flag}" for flag in p.profile_flags]
    if p.run is not None:
        lines += run_lines(p.run, job.training.checkpoint_interval_steps is not None)
    return "\n".join(lines)


def fp4_text(num_layers: int) -> str:
    """What an fp4 run computes in 4 bits (`simulator.nvfp4`)."""
    first, last = bf16_blocks(num_layers)
    if first + last >= num_layers:
        return "fp4 (NVIDIA NVFP4 recipe): every block kept in bf16 (the recipe's first and " \
            f"last blocks cover all {num_layers})"
    return (f"fp4 (NVIDIA NVFP4 recipe): linear-layer GEMMs of blocks {first}-"
            f"{num_layers - last - 1} in 4 bits; blocks 0-{first - 1} and "
            f"{num_layers - last}-{num_layers - 1}, attention, norms, embedding and LM head in "
            "bf16")


def _breakdown_text(p: StepPrediction) -> str:
    """`compute 5.674 s (67%), tp_comm 1.818 s (21%), ...`: the non-zero parts, one unit."""
    parts = {name: s for name, s in p.breakdown.as_dict().items() if s > 0}
    return ", ".join(f"{name} {text} ({seconds / p.step_time_s:.0%})" for (name, seconds), text
                     in zip(parts.items(), durations(*parts.values())))


def _tonnes(kg: float) -> str:
    tonnes = kg / 1000
    return f"{tonnes:,.0f}" if tonnes >= 1000 else f"{tonnes:.3g}"


def run_lines(run: RunPrediction, interval_set: bool = False) -> list[str]:
    """The whole-run section of the estimate: time under failures, money, energy, risk."""
    r, m = run.reliability, run.reliability.model
    chosen = "training.checkpoint_interval_steps" if interval_set else "Young/Daly"
    training, wall = durations(run.time_s, run.wall_time_s)
    mtbf, lost, rework, restarts = durations(m.mtbf_s, r.lost_s, r.rework_s, r.restarts_s,
                                             like=max(m.mtbf_s, 2 * 3600.0))  # hours or days
    write, interval, restart = durations(m.checkpoint_s, r.interval_s, m.restart_s,
                                         like=r.interval_s)
    lines = [
        f"  whole run   {_si(run.tokens)} tokens = {run.steps} steps: {training} of training; "
        f"expected {wall} with checkpoints and failures",
        f"  failures    job MTBF {mtbf}: {r.interruptions:.0f} interruptions expected, {lost} "
        f"lost (rework {rework}, restarts {restarts}); goodput {r.goodput:.1%}",
        f"  checkpoint  {run.checkpoint_bytes / GiB:.0f} GiB written in {write} every "
        f"{r.interval_steps} steps ({interval}, {chosen}); restart {restart}",
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
                         f"{d.peak_fp4_flop_per_s / 1e12:.0f}" if d.peak_fp4_flop_per_s else "-",
                         f"{d.memory_bytes / GiB:.0f}", f"{d.memory_bytes_per_s / 1e12:.2f}",
                         f"{d.nvlink_bytes_per_s / 1e9:.0f}", f"{d.tdp_watts:.0f}",
                         f"{d.price_per_hour_usd:.2f}"])
        return table(["gpu", "bf16 TFLOP/s", "fp8 TFLOP/s", "fp4 TFLOP/s", "memory GiB",
                      "HBM TB/s",
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
                     str(entry.get("nvlink_domain_gpus", entry["gpus_per_node"])),
                     f"{intra['bandwidth_GBps']:g}",
                     f"{inter.get('nics_per_node', 1)} x {inter['bandwidth_Gbps']:g}",
                     entry.get("topology", "fat-tree")])
    return table(["cluster", "gpu", "gpus/node", "NVLink domain", "NVLink GB/s per GPU",
                  "NICs x Gb/s",
                   "topology"], rows)
