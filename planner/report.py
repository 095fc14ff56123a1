"""Human-readable text for the command line: an estimate, a catalog listing."""

from __future__ import annotations

from simulator import catalog
from simulator.job import Job
from simulator.params import active_params, total_params
from simulator.results import StepPrediction

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


def recompute_text(layout) -> str:
    """`selective`, or `none + full for [11, 9] blocks per stage` (the block method)."""
    if not layout.full_recompute_layers:
        return layout.recompute
    return f"{layout.recompute} + full for {list(layout.full_recompute_layers)} blocks per stage"


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
        lines.append(f"  whole run   {_si(p.run.tokens)} tokens = {p.run.steps} steps: "
                     f"{duration(p.run.time_s)}, {_si(p.run.gpu_hours)} GPU-hours")
    return "\n".join(lines)


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
