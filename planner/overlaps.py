"""The communication-overlap flags, chosen for the layouts the planner scores in full.

Each flag hides one stream's transfers behind compute at the price of the shared GPU's slowdown
(profiles/analytic.yaml `overlap`), so turning one on is not always a gain: a small transfer
hidden behind a long pass can cost more in slowdown than it saves. No flag changes memory
(simulator/memory.py has no term for them), so the flags are decided after the search has
ranked the layouts by their closed-form step and memory: for each finalist, every flag the
job does not fix and the layout can use is flipped in turn, and kept where the closed-form step
gets shorter (one pass of coordinate descent from the framework defaults; the flags act on
different streams, whose exposed times add).

Where a flag can act (`applies`) follows what Megatron-Core can run, so that a searched flag is
always one `--export megatron` can express:
- tp_comm_overlap: tp > 1 with sequence parallelism (`--tp-comm-overlap` needs
  `--sequence-parallel`, megatron/training/arguments.py);
- ep_comm_overlap: ep > 1, no full recompute and no per-block full recompute, and either no
  pipeline or the interleaved schedule (`--overlap-moe-expert-parallel-comm`, Megatron-Core
  `TransformerConfig.__post_init__`: "virtual_pipeline_model_parallel_size must be specified
  when pipeline_model_parallel_size > 1", "disable full recomputation", "disable recomputation
  method");
- overlap_grad_reduce: gradients reduced over more than one rank (dp·cp > 1);
- overlap_param_gather: ZeRO gathers to overlap (zero_stage >= 1), with overlap_grad_reduce on
  (`--overlap-param-gather` needs `--overlap-grad-reduce`).
cp_comm_overlap is not searched: Megatron-LM's ring attention always overlaps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from parasim.simulator.layout import Layout

SEARCHED_FLAGS = ("tp_comm_overlap", "ep_comm_overlap", "overlap_grad_reduce",
                  "overlap_param_gather")


def applies(layout: Layout, flag: str) -> bool:
    """Whether `flag` can change anything on `layout` and Megatron-Core can run it there."""
    if flag == "tp_comm_overlap":
        return layout.tp > 1 and layout.sequence_parallel
    if flag == "ep_comm_overlap":
        return (layout.ep > 1 and layout.recompute != "full" and not layout.full_recompute_layers
                and (layout.pp == 1 or layout.schedule == "interleaved"))
    if flag == "overlap_grad_reduce":
        return layout.dp * layout.cp > 1
    if flag == "overlap_param_gather":
        return layout.zero_stage >= 1 and layout.overlap_grad_reduce
    raise AssertionError(f"not a searched overlap flag: {flag}")


def best_overlaps(layout: Layout, fixed: dict, step_s: Callable[[Layout], float | None]
                  ) -> Layout:
    """`layout` with each searchable flag flipped where `step_s` (a closed-form step time,
    None when the layout does not fit) gets shorter; flags in `fixed` are held."""
    best, best_s = layout, step_s(layout)
    if best_s is None:
        return layout
    for flag in SEARCHED_FLAGS:
        if flag in fixed or not applies(best, flag):
            continue
        candidate = replace(best, **{flag: not getattr(best, flag)})
        if flag == "overlap_grad_reduce" and not candidate.overlap_grad_reduce:
            candidate = replace(candidate, overlap_param_gather=False) \
                if "overlap_param_gather" not in fixed else best
        seconds = step_s(candidate)
        if seconds is not None and seconds < best_s:
            best, best_s = candidate, seconds
    return best

