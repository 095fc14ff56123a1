"""`parasim plan`: search the layouts of a job, report the best and why the others lost."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from parasim.planner.plan import layout_mapping, make_plan, write_plan
from parasim.report import duration, durations, format_estimate
from parasim.simulator.layout import cp_text, offload_text, overlap_text, recompute_text
from parasim.planner.search import Scored, SearchResult, headroom
from parasim.simulator.calibration.fitted import base_profile
from parasim.simulator.files import check_new_file
from parasim.simulator.job import Job
from parasim.simulator.jobfile import load_raw


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
    theirs, ours = durations(b[name], a[name])
    return (f"{gap:+.1%} {objective}: {name} {theirs} vs {ours}"
            + ("" if other.prediction.fits else ", does not fit"))


def layout_text(layout) -> str:
    m = layout_mapping(layout)
    parts = [f"tp {m['tp']}", f"pp {m['pp']}", f"dp {m['dp']}", cp_text(layout), f"ep {m['ep']}"]
    if m["vpp"] > 1:
        parts.append(f"vpp {m['vpp']}")
    return ", ".join(parts) + f", mbs {m['micro_batch_size']}, {m['schedule']}, " \
        f"recompute {recompute_text(layout)}, ZeRO-{m['zero_stage']}" \
        + ("++" if layout.zero_pp else "") + (", ILP stage split" if m["stages"] else "") \
        + (f", {overlap_text(layout)}" if overlap_text(layout) else "") \
        + (f", {offload_text(layout)}" if layout.offload.any else "")


def format_plan(job: Job, result: SearchResult, objective: str) -> str:
    best = result.chosen
    lines = [f"plan ({objective}): " + format_estimate(job, best.prediction),
             f"  per step    ${best.dollars_per_step:.2f} and {best.joules_per_step / 3.6e6:.2f} "
             "kWh (GPU-hour price; phase power model, hosts, fabric, PUE)"]
    if not job.cluster.is_homogeneous:
        lines.append("  placement   node groups take the ranks in this order: " + ", ".join(
            f"{g.num_nodes} x {g.gpu.name}" for g in job.cluster.node_groups))
    if result.tied:  # the note says something only when layouts tied
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


def plan_command(args: argparse.Namespace, argv: list[str]) -> None:
    """`parasim plan`: SpecError or Infeasible for the CLI to report."""
    if args.out:
        check_new_file(args.out, force=args.force, field="--out")
    try:
        plan = make_plan(load_raw(args.job, args.overrides), base_dir=Path(args.job).parent,
                         source=args.job, objective=args.objective, top=args.top,
                         max_gpus=args.max_gpus,
                         profile=base_profile(args.profile) if args.profile else None,
                         progress=_bar())
    finally:
        _clear_bar()
    exported = None
    if args.export:  # before anything is written: a plan it cannot express is refused
        from parasim.planner.export import export_layout
        exported = export_layout(plan.job, args.export)
    if args.out:
        write_plan(args.out, plan.document(), force=args.force)
    if args.json:
        print(json.dumps(plan_json(plan.job, plan.result, args.objective)))
    else:
        print(format_plan(plan.job, plan.result, args.objective))
    if exported is not None:
        print(exported)
