"""Chrome trace export: a simulated pipeline step opens as one row per rank."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from parasim.simulator.errors import SpecError
from parasim.simulator.layout import Layout
from parasim.simulator.schedule import Interval, TaskTimes, simulate
from parasim.simulator.trace import chrome_trace, write_chrome_trace

PP, MICROBATCHES = 4, 8


def one_f_one_b_intervals():
    times = [TaskTimes(1e-3, 2e-3, send_s=1e-4)] * PP
    return simulate(Layout(pp=PP, dp=1), MICROBATCHES, times, record=True).intervals


def load(path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def complete_events(trace: dict) -> list[dict]:
    return [e for e in trace["traceEvents"] if e["ph"] == "X"]


def metadata(trace: dict, name: str) -> dict[tuple[int, int], dict]:
    return {(e["pid"], e["tid"]): e["args"] for e in trace["traceEvents"]
            if e["ph"] == "M" and e["name"] == name}


@pytest.fixture
def trace(tmp_path) -> dict:
    path = tmp_path / "step.json"
    write_chrome_trace(path, one_f_one_b_intervals(), title="4 stages, 8 micro-batches")
    return load(path)


def test_trace_is_a_chrome_trace_object(trace):
    assert isinstance(trace, dict) and isinstance(trace["traceEvents"], list)
    assert trace["displayTimeUnit"] == "ms"
    assert trace["otherData"] == {"title": "4 stages, 8 micro-batches"}


def test_one_row_per_rank(trace):
    """The issue's acceptance: a 4-stage, 8-micro-batch job loads with one row per rank."""
    assert {e["pid"] for e in complete_events(trace)} == set(range(PP))
    names = metadata(trace, "process_name")
    assert {pid for pid, _ in names} == set(range(PP))
    assert all(names[(r, 0)]["name"] == f"pipeline rank {r}" for r in range(PP))
    sort = metadata(trace, "process_sort_index")
    assert all(sort[(r, 0)]["sort_index"] == r for r in range(PP))


def test_events_have_positive_durations_in_microseconds(trace):
    for event in complete_events(trace):
        assert event["ts"] >= 0 and event["dur"] > 0
        assert event["ts"] == pytest.approx(event["args"]["start_s"] * 1e6)
        assert event["dur"] == pytest.approx(
            (event["args"]["end_s"] - event["args"]["start_s"]) * 1e6)
        assert event["cat"] == "compute"
    assert {round(e["dur"], 6) for e in complete_events(trace)} == {1e3, 2e3}


def test_compute_does_not_overlap_on_a_rank(trace):
    by_rank = defaultdict(list)
    for event in complete_events(trace):
        if event["cat"] == "compute":
            by_rank[event["pid"]].append(event)
    for rank, events in by_rank.items():
        assert len(events) == 2 * MICROBATCHES
        assert sorted(e["name"][0] for e in events) == ["B"] * MICROBATCHES + ["F"] * MICROBATCHES
        events.sort(key=lambda e: e["ts"])
        for before, after in zip(events, events[1:]):
            assert before["ts"] + before["dur"] <= after["ts"] + 1e-6, (rank, before, after)


def test_thread_names(trace):
    threads = metadata(trace, "thread_name")
    assert all(threads[(r, 0)]["name"] == "compute" for r in range(PP))


def test_stage_names_name_the_rows():
    names = {0: "embedding + layers 0-7", 3: "layers 24-31 + head"}
    trace = chrome_trace(one_f_one_b_intervals(), title="t", stage_names=names)
    labels = {pid: args["name"] for (pid, _), args in metadata(trace, "process_name").items()}
    assert labels == {0: names[0], 1: "pipeline rank 1", 2: "pipeline rank 2", 3: names[3]}


def test_compute_is_the_first_thread_then_streams_by_name():
    intervals = [Interval(0, "pp", "send F0", 1e-3, 1.1e-3),
                 Interval(0, "dp", "all-reduce", 2e-3, 3e-3),
                 Interval(0, "compute", "F0.0", 0.0, 1e-3),
                 Interval(1, "pp", "send B0", 4e-3, 5e-3)]
    trace = chrome_trace(intervals, title="t")
    tids = {e["cat"]: e["tid"] for e in complete_events(trace)}
    assert tids == {"compute": 0, "dp": 1, "pp": 2}
    threads = metadata(trace, "thread_name")
    assert threads == {(0, 0): {"name": "compute"}, (0, 1): {"name": "dp"},
                       (0, 2): {"name": "pp"}, (1, 2): {"name": "pp"}}


def test_zero_bubble_trace_shows_weight_gradients(tmp_path):
    times = [TaskTimes(1e-3, 1e-3, weight_s=1e-3)] * PP
    timeline = simulate(Layout(pp=PP, dp=1, schedule="zero-bubble"), MICROBATCHES, times,
                        record=True)
    path = tmp_path / "zb.json"
    write_chrome_trace(path, timeline.intervals, title="ZB-H1")
    events = complete_events(load(path))
    assert {e["pid"] for e in events} == set(range(PP))
    for rank in range(PP):
        weights = [e for e in events if e["pid"] == rank and e["name"].startswith("W")]
        assert len(weights) == MICROBATCHES
        assert all(e["dur"] > 0 for e in weights)


@pytest.mark.parametrize("where", ["directory", "missing parent"])
def test_unwritable_path_is_a_spec_error(tmp_path, where):
    path = tmp_path if where == "directory" else tmp_path / "no such dir" / "step.json"
    with pytest.raises(SpecError, match=r"--trace=.*cannot write") as caught:
        write_chrome_trace(path, one_f_one_b_intervals(), title="t")
    assert caught.value.field == "--trace" and caught.value.value == str(path)
    assert caught.value.valid == "a writable file path"


# A predicted step: communication tracks (issue 17) -----------------------------------------------


def _predicted(parallel: dict, model="mixtral-8x7b", nodes: int = 2):
    from pathlib import Path

    from parasim.simulator.jobfile import job_from_mapping
    from parasim.simulator.predict import predict

    raw = {"model": model, "cluster": {"base": "dgx-h100", "num_nodes": nodes},
           "training": {"seq_length": 4096, "global_batch_size": 64}, "parallel": parallel}
    return predict(job_from_mapping(raw, base_dir=Path("."), source="t"), record=True)


def test_a_predicted_step_has_one_track_per_communication_stream():
    """tp, ep, pp and dp under each pipeline rank; the expert all-to-all of the critical rank
    adds up to its breakdown's ep_comm, and each task's pieces tile the task."""
    p = _predicted({"tp": 2, "pp": 2, "ep": 4, "vpp": 2, "schedule": "interleaved"})
    trace = chrome_trace(p.intervals, title="t")
    events = complete_events(trace)
    streams = {(e["pid"], e["cat"]) for e in events}
    assert streams == {(r, s) for r in range(2) for s in ("compute", "tp", "ep", "pp", "dp")}
    threads = {args["name"] for args in metadata(trace, "thread_name").values()}
    assert threads == {"compute", "tp", "ep", "pp", "dp"}
    for rank in range(2):
        ep = sum(i.end_s - i.start_s for i in p.intervals if i.rank == rank and i.stream == "ep")
        assert ep == pytest.approx(p.breakdown.ep_comm_s, rel=1e-9)
    by_task = defaultdict(list)
    for i in p.intervals:
        if i.task is not None and i.stream != "pp":
            by_task[(i.rank, i.task)].append(i)
    for pieces in by_task.values():
        pieces.sort(key=lambda i: i.start_s)
        assert all(a.end_s == b.start_s for a, b in zip(pieces, pieces[1:]))
        assert [i.stream for i in pieces] == ["compute", "tp", "ep"]


def test_pipeline_sends_do_not_overlap_on_a_track():
    p = _predicted({"tp": 8, "pp": 4}, model="llama3-8b", nodes=4)
    for rank in range(4):
        sends = sorted((i for i in p.intervals if i.rank == rank and i.stream == "pp"),
                       key=lambda i: i.start_s)
        assert sends and all(a.end_s <= b.start_s + 1e-12 for a, b in zip(sends, sends[1:]))


def test_an_estimate_records_nothing_unless_asked():
    from pathlib import Path

    from parasim.simulator.jobfile import job_from_mapping
    from parasim.simulator.predict import predict

    raw = {"model": "llama3-8b", "cluster": {"base": "dgx-h100", "num_nodes": 1},
           "training": {"seq_length": 4096, "global_batch_size": 64},
           "parallel": {"tp": 2, "pp": 4}}
    assert predict(job_from_mapping(raw, base_dir=Path("."), source="t")).intervals == ()
