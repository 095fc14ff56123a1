"""`parasim plan`: search the layouts of a job, report the best and why the others lost."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

from planner.plan import layout_mapping, plan_document, write_plan
from planner.report import duration, format_estimate, recompute_text
from planner.search import Scored, SearchResult, headroom, search, smallest_fix
from planner.space import fixed_fields
from simulator.calibration.fitted import base_profile
from simulator.cost.profile import AnalyticProfile
from simulator.errors import Infeasible, SpecError
from simulator.job import Job
from simulator.jobfile import job_from_mapping, load_raw


def load_plan_job(path: str, overrides: list[str]) -> tuple[dict, Job, dict]:
    """(raw job, job without a layout, fixed `parallel:` fields)."""
    raw = load_raw(path, overrides)
    fixed = fixed_fields(raw.get("parallel"))
    unlaid = {k: v for k, v in raw.items() if k != "parallel"}
    job = job_from_mapping(unlaid, base_dir=Path(path).parent, source=path)
    return unlaid, job, fixed


def with_max_gpus(job: Job, max_gpus: int | None) -> list[Job]:
    """The job on its cluster, or on every power-of-two number of its nodes up to max_gpus."""
    if max_gpus is None:
        return [job]
    groups = job.cluster.node_groups
    if len(groups) != 1:
        raise SpecError("--max-gpus", max_gpus, "needs a cluster of one node group",
                        "a homogeneous cluster")
    per_node = groups[0].gpus_per_node
    if max_gpus < per_node:
        raise SpecError("--max-gpus", max_gpus, f"is less than one {per_node}-GPU node",
                        f"a number >= {per_node}")
    counts, nodes = [], 1
    while nodes * per_node <= max_gpus:
        counts.append(nodes)
        nodes *= 2
    if max_gpus // per_node not in counts:
        counts.append(max_gpus // per_node)
    return [replace(job, cluster=replace(job.cluster, node_groups=(
        replace(groups[0], num_nodes=n),))) for n in counts]


def run_plan(path: str, overrides: list[str], objective: str, max_gpus: int | None, top: int,
             profile: AnalyticProfile | None = None) -> tuple[dict, Job, SearchResult]:
    raw, job, fixed = load_plan_job(path, overrides)
    results = []
    for variant in with_max_gpus(job, max_gpus):
        try:
            results.append((variant, search(variant, fixed, objective, top, progress=_bar(),
                                             profile=profile)))
        except Infeasible:
            continue
    _clear_bar()
    if not results:
        raise Infeasible(f"no layout of {job.model.name} fits on {job.cluster.world_size} GPUs; "
                         f"smallest change: {smallest_fix(job, fixed)}")
    variant, result = min(results, key=lambda r: r[1].chosen.value(objective))
    best = result.chosen
    if variant is not job:
        raw = {**raw, "cluster": _cluster_with_nodes(raw["cluster"], variant)}
    if best.cluster != variant.cluster:
        raw = {**raw, "cluster": _cluster_reordered(raw["cluster"], variant, best.cluster)}
    return raw, replace(variant, cluster=best.cluster, layout=best.layout), result


def _cluster_reordered(cluster, job: Job, chosen) -> dict:
    """The job file's `node_groups` list in the order the plan chose (the same groups)."""
    assert isinstance(cluster, dict) and isinstance(cluster.get("node_groups"), list), cluster
    remaining = list(range(len(job.cluster.node_groups)))
    order = []
    for group in chosen.node_groups:
        index = next(i for i in remaining if job.cluster.node_groups[i] == group)
        remaining.remove(index)
        order.append(index)
    return {**cluster, "node_groups": [cluster["node_groups"][i] for i in order]}


def _cluster_with_nodes(cluster, job: Job):
    nodes = job.cluster.node_groups[0].num_nodes
    return {**cluster, "num_nodes": nodes} if isinstance(cluster, dict) else \
        {"base": cluster, "num_nodes": nodes}


def _bar():
    """A progress bar on stderr for long searches (only on a terminal)."""
    if not sys.stderr.isatty():
        return None

    def show(done: int, total: int) -> None:
        if done % 200 == 0 or done == total:
            filled = int(30 * done / total)
            print(f"\rscoring layouts [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}",
                  end="", file=sys.stderr, flush=True)
    return show


def _clear_bar() -> None:
    if sys.stderr.isatty():
        print("\r" + " " * 70 + "\r", end="", file=sys.stderr, flush=True)


def why_lost(best: Scored, other: Scored, objective: str) -> str:
    """One line: how much worse, and the component that differs most."""
    gap = other.value(objective) / best.value(objective) - 1
    a, b = best.prediction.breakdown.as_dict(), other.prediction.breakdown.as_dict()
    name = max(a, key=lambda k: b[k] - a[k])
    return (f"{gap:+.1%} {objective}: {name} {duration(b[name])} vs {duration(a[name])}"
            + ("" if other.prediction.fits else ", does not fit"))


def layout_text(layout) -> str:
    m = layout_mapping(layout)
    parts = [f"tp {m['tp']}", f"pp {m['pp']}", f"dp {m['dp']}", f"cp {m['cp']}", f"ep {m['ep']}"]
    if m["vpp"] > 1:
        parts.append(f"vpp {m['vpp']}")
    return ", ".join(parts) + f", mbs {m['micro_batch_size']}, {m['schedule']}, " \
        f"recompute {recompute_text(layout)}, ZeRO-{m['zero_stage']}" + (
            ", ILP stage split" if m["stages"] else "")


def format_plan(job: Job, result: SearchResult, objective: str) -> str:
    best = result.chosen
    lines = [f"plan ({objective}): " + format_estimate(job, best.prediction),
             f"  per step    ${best.dollars_per_step:.2f} and {best.joules_per_step / 3.6e6:.2f} "
             "kWh (GPU-hour price; phase power model, hosts, fabric, PUE)"]
    if not job.cluster.is_homogeneous:
        lines.append("  placement   node groups take the ranks in this order: " + ", ".join(
            f"{g.num_nodes} x {g.gpu.name}" for g in job.cluster.node_groups))
    lines.append(f"  ties        {result.ties_note}")
    for i, other in enumerate(runners_up(result), start=2):
        lines.append(f"  runner-up {i} {layout_text(other.layout)}: {why_lost(best, other, objective)}"
                     + _tie_text(result, best, other))
    rejected = "; ".join(f"{n} {why}" for why, n in result.rejected.most_common())
    lines.append(f"  searched    {result.considered} layouts, {result.ilp_solves} ILP splits, "
                 f"{duration(result.solve_time_s)}; rejected: {rejected or 'none'}")
    return "\n".join(lines)


def runners_up(result: SearchResult) -> list[Scored]:
    """The top layouts other than the chosen one, in objective order."""
    return [s for s in result.ranked if s is not result.chosen][:max(len(result.ranked) - 1, 0)]


def _tie_text(result: SearchResult, best: Scored, other: Scored) -> str:
    if other is not result.ranked[0] and not any(other is t for t in result.tied):
        return ""
    return (f" (tied: intervals overlap; {headroom(other):.0%} memory free vs "
            f"{headroom(best):.0%})")


def plan_json(job: Job, result: SearchResult, objective: str) -> dict:
    best = result.chosen
    return {
        "layout": layout_mapping(best.layout),
        "node_groups": [{"gpu": g.gpu.name, "num_nodes": g.num_nodes}
                        for g in best.cluster.node_groups],
        "prediction": best.prediction.to_json(),
        "objective": objective,
        "status": "optimal over the searched space",
        "solve_time_s": result.solve_time_s,
        "considered": result.considered,
        "rejected": dict(result.rejected),
        "ilp_solves": result.ilp_solves,
        "ties": {"note": result.ties_note,
                 "tied": [layout_mapping(o.layout) for o in result.tied]},
        "runners_up": [{"layout": layout_mapping(o.layout), "step_time_s": o.prediction.step_time_s,
                        "why": why_lost(best, o, objective)} for o in runners_up(result)],
        "pareto": [{"layout": layout_mapping(p.layout), "step_time_s": p.prediction.step_time_s,
                    "dollars_per_step": p.dollars_per_step} for p in result.pareto],
    }


def plan_command(args) -> None:
    """Raises SpecError or Infeasible for the CLI to report."""
    profile = base_profile(args.profile) if args.profile else None
    raw, job, result = run_plan(args.job, args.overrides, args.objective, args.max_gpus, args.top,
                                profile)
    if args.out:
        write_plan(args.out, plan_document(raw, result.chosen, args.objective))
    if args.json:
        print(json.dumps(plan_json(job, result, args.objective)))
    else:
        print(format_plan(job, result, args.objective))
    if args.export:
        from planner.export import export_layout
        print(export_layout(job, args.export))
