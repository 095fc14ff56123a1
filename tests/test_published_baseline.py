"""Smoke test of benchmarks/published_baseline.py on a handful of published rows.

The full run (`python3 benchmarks/published_baseline.py`) prints the baseline; here its functions
run on a few rows of each file: jobs build, predictions come back, the statistics add up. Skipped
when ../shared/data is absent (the data is not part of the repository).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "published_baseline.py"


def _load():
    spec = importlib.util.spec_from_file_location("published_baseline", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


pb = _load()


@pytest.fixture(scope="module")
def data_dir() -> Path:
    if pb.check_data_dir(pb.DEFAULT_DATA_DIR) is not None:
        pytest.skip(f"published data not found at {pb.DEFAULT_DATA_DIR}")
    return pb.DEFAULT_DATA_DIR


def _some(rows: list[dict[str, str]], n: int = 6) -> list[dict[str, str]]:
    """n rows spread over the file."""
    step = max(1, len(rows) // n)
    return rows[::step][:n]


def test_error_stats():
    stats = pb.ErrorStats.of([-0.5, 0.1, 0.3])
    assert stats.n == 3
    assert stats.mape == pytest.approx(30.0)
    assert stats.median_ape == pytest.approx(30.0)
    assert stats.worst_ape == pytest.approx(50.0)
    assert stats.bias == pytest.approx(-100 / 30)
    assert pb.ErrorStats.of([]) is None


def test_missing_data_dir_is_one_line_and_exit_2(tmp_path, capsys):
    assert pb.main(["--data-dir", str(tmp_path / "nowhere")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "error:" in captured.err


@pytest.mark.parametrize("kind", ["single", "multi"])
def test_vtrain_rows_predict(data_dir, kind):
    rows = _some(pb.read_rows(data_dir / pb.VTRAIN_FILES[kind]))
    outcomes = pb.run_rows(rows, pb.vtrain_job)
    assert not pb.spec_error_counts(outcomes)
    for o in outcomes:
        assert o.prediction.step_time_s > 0
        assert o.prediction.num_gpus == int(o.row["# GPUs"])
        assert o.prediction.tokens_per_step == int(o.row["global batch"]) * int(o.row["sequence length"])
    stats = pb.ErrorStats.of([pb.vtrain_error(o) for o in outcomes])
    assert stats.n == len(rows) and stats.worst_ape >= stats.median_ape >= 0
    shares = pb.component_shares(outcomes)
    assert sum(shares.values()) == pytest.approx(100.0)


def test_vtrain_small_node_uses_its_gpu_count(data_dir):
    row = next(r for r in pb.read_rows(data_dir / pb.VTRAIN_FILES["single"]) if r["# GPUs"] == "2")
    job = pb.vtrain_job(row)
    assert job["cluster"] == {"base": "dgx-a100", "num_nodes": 1, "gpus_per_node": 2}


def test_hagemann_flags_cover_every_row(data_dir):
    rows = pb.read_rows(data_dir / pb.HAGEMANN_FILE)
    for row in rows:
        if row["status"] in ("ok", "OOM Error"):
            recompute, sp, fa = pb.hagemann_flags(row)
            assert recompute in ("none", "full") and isinstance(sp, bool) and isinstance(fa, bool)


def test_hagemann_rows_predict(data_dir):
    rows = pb.read_rows(data_dir / pb.HAGEMANN_FILE)
    ok = _some([r for r in rows if r["status"] == "ok" and r["mfu_pct"]])
    oom = _some([r for r in rows if r["status"] == "OOM Error"])
    outcomes = pb.run_rows(ok + oom, pb.hagemann_job)
    assert not pb.spec_error_counts(outcomes)
    table = pb.confusion(outcomes)
    assert sum(table.values()) == len(ok) + len(oom)
    assert 0 <= pb.accuracy(table) <= 100
    for o in outcomes:
        assert o.prediction.microbatches == 2 * int(o.row["pp"])
        assert o.prediction.stages[0].capacity_bytes == pytest.approx(75 * pb.GiB)
    for o in outcomes[:len(ok)]:
        assert 0 < o.prediction.mfu < 1
        assert pb.implied_global_batch(o) > 0
    assumed = pb.run_rows(ok, lambda r: pb.hagemann_job(r, pb.assumed_global_batch(r)))
    for o in assumed:
        assert o.prediction.tokens_per_step == pb.ASSUMED_BATCH_TOKENS
