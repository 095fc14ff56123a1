"""ProfileDB: measured > interpolated > analytic, monotone log-log interpolation, checks."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from parasim.simulator import catalog
from parasim.simulator.cost.compute import ComputeModel
from parasim.simulator.cost.profile import analytic_profile
from parasim.simulator.errors import SpecError
from parasim.simulator.jobfile import job_from_mapping
from parasim.simulator.ops import Op, Shard, embedding_ops, gemm, memory
from parasim.simulator.predict import predict
from parasim.simulator.profile import LogGrid, load_profile
from tests.profile_fixtures import attention_time, gemm_time, write_profile

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def db(tmp_path):
    return load_profile(write_profile(tmp_path / "p"))


def test_grid_point_is_measured(db):
    found = db.op_time(gemm("x", 1024, 4096, 256, 2), backward=False)
    assert found.source == "measured"
    assert found.seconds == pytest.approx(gemm_time(1024, 4096, 256))


def test_inside_the_grid_is_interpolated_in_log_log(db):
    """A power law is a plane in log-log space: interpolation reproduces it exactly."""
    found = db.op_time(gemm("x", 700, 3000, 333, 2), backward=False)
    assert found.source == "interpolated"
    assert found.seconds == pytest.approx(gemm_time(700, 3000, 333), rel=1e-9)
    back = db.op_time(gemm("x", 700, 3000, 333, 2), backward=True)
    assert back.seconds == pytest.approx(gemm_time(700, 333, 3000) + gemm_time(333, 3000, 700))


def test_outside_the_grid_falls_back_to_the_roofline(db):
    model = ComputeModel(catalog.gpu("h100-sxm"), "bf16", analytic_profile(), db)
    plain = ComputeModel(catalog.gpu("h100-sxm"), "bf16", analytic_profile())
    big = gemm("x", 65536, 4096, 4096, 2)
    assert db.op_time(big, backward=False) is None
    assert model.op(big) == plain.op(big)
    assert model.op(big).analytic_s > 0


def test_fallback_order(db):
    """The same kind of op, three ways: on the grid, inside it, outside it."""
    model = ComputeModel(catalog.gpu("h100-sxm"), "bf16", analytic_profile(), db)
    on, inside, outside = (model.op(gemm("x", m, 1024, 1024, 2)) for m in (1024, 2000, 9000))
    assert on.measured_s > 0 and on.interpolated_s == on.analytic_s == 0
    assert inside.interpolated_s > 0 and inside.measured_s == inside.analytic_s == 0
    assert outside.analytic_s > 0 and outside.measured_s == outside.interpolated_s == 0


def test_interpolation_is_monotone_even_over_noisy_measurements():
    """A noisy grid (a dip at the middle point) is made monotone before interpolating."""
    grid = LogGrid([[1.0, 10.0, 100.0]], [1.0, 0.5, 4.0])
    times = [grid.lookup((x,)).seconds for x in (1, 3, 10, 30, 100)]
    assert times == sorted(times)


def test_attention_scales_with_batch_and_heads(db):
    op = Op("core_attention", "attention", 0.0, 0.0, (2, 16, 2048, 2048, 128, 128))
    found = db.op_time(op, backward=False)
    assert found.source == "interpolated"  # 32 batch·heads against the table's 8
    assert found.seconds == pytest.approx(attention_time(32, 2048, 128))


def test_elementwise_kernels_by_elements(db):
    found = db.op_time(memory("norm1", "rmsnorm", 2**20, 2, 2), backward=True)
    assert found.source == "measured" and found.seconds == pytest.approx(2 * 2**20 / 1e10)
    assert db.op_time(memory("x", "gelu", 2**20, 2, 2), backward=False) is None  # not measured


def _job(parallel):
    raw = {"model": {"name": "small", "num_layers": 4, "hidden_size": 1024,
                     "num_attention_heads": 8, "ffn_hidden_size": 4096, "vocab_size": 4096},
           "cluster": {"base": "dgx-h100", "num_nodes": 1},
           "training": {"seq_length": 2048, "global_batch_size": 16},
           "parallel": parallel}
    return job_from_mapping(raw, base_dir=Path("."), source="t")


def test_missing_collective_size_is_flagged_not_an_error(db):
    """The profile measured collectives over 2 ranks; tp 8 is answered by the graph model and
    the prediction says so."""
    p = predict(_job({"tp": 8}), measured=db)
    assert any("over 8 ranks" in flag for flag in p.profile_flags)
    assert p.step_time_s > 0
    assert predict(_job({"tp": 2, "pp": 4}), measured=db).breakdown.tp_comm_s > 0


def test_sources_add_up_and_reflect_the_profile(db):
    analytic = predict(_job({"tp": 2}))
    measured = predict(_job({"tp": 2}), measured=db)
    assert analytic.sources == {"measured": 0.0, "interpolated": 0.0, "analytic": 1.0}
    assert sum(measured.sources.values()) == pytest.approx(1.0)
    assert measured.sources["measured"] + measured.sources["interpolated"] > 0.5


@pytest.mark.parametrize("damage, fragment", [
    (lambda p: (p / "meta.json").unlink(), "meta.json"),
    (lambda p: (p / "meta.json").write_text(json.dumps({"device": "cuda"})), "gpu"),
    (lambda p: (p / "gemm.csv").unlink(), "gemm.csv"),
    (lambda p: (p / "gemm.csv").write_text("m,n,k\n1,2,3\n"), "forward_s"),
    (lambda p: _drop_row(p / "gemm.csv"), "hole"),
    (lambda p: _edit_cell(p / "optimizer.csv", "step_s", "fast"), "step_s"),
])
def test_malformed_profiles_are_user_errors(tmp_path, damage, fragment):
    folder = write_profile(tmp_path / "p")
    damage(folder)
    with pytest.raises(SpecError, match=fragment):
        load_profile(folder)


def _drop_row(path: Path) -> None:
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:5] + lines[6:]) + "\n")


def _edit_cell(path: Path, column: str, value: str) -> None:
    with path.open() as f:
        rows = list(csv.DictReader(f))
    rows[0][column] = value
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _estimate(*args):
    return subprocess.run([sys.executable, "-m", "parasim", "estimate",
                           str(REPO / "examples/llama3-70b-dgx-h100.yaml"), *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)


def test_profile_of_another_device_warns_and_strict_refuses(tmp_path):
    folder = write_profile(tmp_path / "a100", gpu="a100-80gb")
    warned = _estimate("--profile", folder)
    assert warned.returncode == 0 and "warning" in warned.stderr and "a100-80gb" in warned.stderr
    refused = _estimate("--profile", folder, "--strict")
    assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1
    assert "Traceback" not in refused.stderr and "--profile" in refused.stderr


def test_estimate_with_a_profile_reports_sources(tmp_path):
    folder = write_profile(tmp_path / "h100")
    result = _estimate("--profile", folder, "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert set(out["sources"]) == {"measured", "interpolated", "analytic"}
    missing = _estimate("--profile", tmp_path / "nope")
    assert missing.returncode == 2 and "no such profile" in missing.stderr


# Below the grid, the embedding's table, sequence-parallel collectives, empty collectives ------


def test_below_the_grid_takes_the_smallest_size(db):
    """A GEMM narrower than the grid (a 4-wide MoE router) is bounded by the grid's smallest
    width, not left to the roofline; a size of 0 is still no lookup."""
    found = db.op_time(gemm("router", 1024, 4, 1024, 2), backward=False)
    assert found.source == "interpolated"
    assert found.seconds == pytest.approx(gemm_time(1024, 256, 1024))
    assert LogGrid([[1.0, 10.0]], [1.0, 2.0]).lookup((0.0,)) is None
    assert LogGrid([[1.0, 10.0]], [1.0, 2.0]).lookup((100.0,)) is None  # above: analytic


def _with_rows(folder: Path, table: str, rows: list[list]) -> None:
    with (folder / table).open("a", newline="") as f:
        csv.writer(f).writerows(rows)


def test_embedding_backward_is_a_pass_over_the_jobs_table(tmp_path):
    """Backward = the copy of the rank's (vocab/tp, hidden) table + the gather's bytes; the
    profile's own embedding backward (here a huge 1 s) is not used."""
    folder = write_profile(tmp_path / "p")
    _with_rows(folder, "elementwise.csv",
               [[kernel, e, e / 1e10, 1.0] for kernel in ("copy", "embedding")
                for e in (2**16, 2**20, 2**24)])
    db = load_profile(folder)
    model = catalog.model_from_mapping({"num_layers": 2, "hidden_size": 1024,
                                        "num_attention_heads": 8, "ffn_hidden_size": 4096,
                                        "vocab_size": 4096}, name="m")
    (op,) = embedding_ops(model, Shard(micro_batch=1, seq_length=2048, tp=2))
    assert op.shape == (2048, 1024)
    found = db.op_time(op, backward=True)
    assert found.seconds == pytest.approx((2048 * 1024 + 2048 * 1024) / 1e10)
    assert db.op_time(op, backward=False).seconds == pytest.approx(2048 * 1024 / 1e10)


def test_sequence_parallel_pays_a_reduce_scatter_and_an_all_gather(tmp_path):
    """From a measured profile the two collectives that replace an all-reduce are two calls:
    with all three timed alike, sequence parallelism doubles the exposed tp communication."""
    folder = write_profile(tmp_path / "p")
    with (folder / "collectives.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["collective", "group_size", "bytes", "time_s"])
        writer.writerows([[kind, 2, b, 1e-4 + b / 1e10] for kind in
                          ("all_reduce", "reduce_scatter", "all_gather")
                          for b in (2**10, 2**20, 2**30)])
    db = load_profile(folder)
    plain = predict(_job({"tp": 2, "pp": 4}), measured=db).breakdown.tp_comm_s
    sp = predict(_job({"tp": 2, "pp": 4, "sequence_parallel": True}), measured=db)
    assert sp.breakdown.tp_comm_s == pytest.approx(2 * plain)


def test_empty_collectives_cost_nothing_and_are_not_flagged(tmp_path):
    """A dense model has no expert gradients to reduce: no 0-byte collective is flagged."""
    db = load_profile(write_profile(tmp_path / "p", collective_sizes=(2, 4)))
    p = predict(_job({"tp": 2}), measured=db)
    assert not [flag for flag in p.profile_flags if " 0 B " in flag]
