"""A simulated step as a Chrome trace, to open in Perfetto (ui.perfetto.dev) or chrome://tracing.

The JSON object format of the Trace Event Format: one process per pipeline rank (pid = rank),
one thread per stream ("compute" first, then the communication streams by name: "cp", "dp",
"ep", "pp", "tp") and one complete event ("ph": "X") per `Interval`. A predicted step
(`predict(..., record=True)`) draws each pipeline task as its compute followed by the exposed
tensor-, context- and expert-parallel communication of its layers (summed per task), each
activation or gradient sent to the next rank on "pp", and the exposed gradient reduction on
"dp" (`schedule.with_streams`). Trace times are microseconds; each event's args keep the
simulator's seconds.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from parasim.simulator.files import write_text_atomic
from parasim.simulator.schedule import Interval

COMPUTE = "compute"


def stream_ids(streams: Iterable[str]) -> dict[str, int]:
    """Thread id of each distinct stream: "compute" is 0, the others follow in sorted order."""
    distinct = set(streams)
    ordered = ([COMPUTE] if COMPUTE in distinct else []) + sorted(distinct - {COMPUTE})
    return {stream: tid for tid, stream in enumerate(ordered)}


def rank_label(rank: int, stage_names: dict[int, str] | None = None) -> str:
    """The row title of a rank: its stage name if given, else "pipeline rank R"."""
    if stage_names and rank in stage_names:
        return stage_names[rank]
    return f"pipeline rank {rank}"


def complete_event(interval: Interval, tid: int) -> dict:
    """One interval as a complete ("X") event, times in microseconds."""
    assert interval.end_s >= interval.start_s, interval
    return {
        "ph": "X",
        "name": interval.name,
        "cat": interval.stream,
        "pid": interval.rank,
        "tid": tid,
        "ts": interval.start_s * 1e6,
        "dur": (interval.end_s - interval.start_s) * 1e6,
        "args": {"start_s": interval.start_s, "end_s": interval.end_s},
    }


def metadata_events(rank: int, streams: Iterable[str], tids: dict[str, int],
                    stage_names: dict[int, str] | None = None) -> list[dict]:
    """The process name and sort index of one rank, and the name and order of its threads."""
    events = [
        {"ph": "M", "name": "process_name", "pid": rank, "tid": 0,
         "args": {"name": rank_label(rank, stage_names)}},
        {"ph": "M", "name": "process_sort_index", "pid": rank, "tid": 0,
         "args": {"sort_index": rank}},
    ]
    for stream in sorted(set(streams), key=tids.__getitem__):
        tid = tids[stream]
        events += [
            {"ph": "M", "name": "thread_name", "pid": rank, "tid": tid, "args": {"name": stream}},
            {"ph": "M", "name": "thread_sort_index", "pid": rank, "tid": tid,
             "args": {"sort_index": tid}},
        ]
    return events


def chrome_trace(intervals: Iterable[Interval], *, title: str,
                 stage_names: dict[int, str] | None = None) -> dict:
    """The Chrome trace JSON object of a timeline: a row per rank, a track per stream."""
    intervals = list(intervals)
    tids = stream_ids(i.stream for i in intervals)
    streams_of: dict[int, set[str]] = {}
    for interval in intervals:
        streams_of.setdefault(interval.rank, set()).add(interval.stream)
    metadata = [event for rank in sorted(streams_of)
                for event in metadata_events(rank, streams_of[rank], tids, stage_names)]
    ordered = sorted(intervals, key=lambda i: (i.rank, tids[i.stream], i.start_s, i.end_s))
    events = [complete_event(i, tids[i.stream]) for i in ordered]
    return {"traceEvents": metadata + events, "displayTimeUnit": "ms",
            "otherData": {"title": title}}


def write_chrome_trace(path: str | Path, intervals: Iterable[Interval], *, title: str,
                       stage_names: dict[int, str] | None = None, force: bool = False) -> None:
    """Write `chrome_trace(...)` as JSON to `path`, atomically; an existing file only with
    `force`. SpecError("--trace", ...) if it cannot."""
    text = json.dumps(chrome_trace(intervals, title=title, stage_names=stage_names),
                      separators=(",", ":"), allow_nan=False)
    write_text_atomic(path, text + "\n", force=force, field="--trace")
