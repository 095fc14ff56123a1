"""runtime.speed_probe: the profile's time of its probe kernels over their time now."""

from __future__ import annotations

import csv

import pytest

torch = pytest.importorskip("torch")

from parasim.runtime import speed_probe  # noqa: E402
from parasim.simulator.profile import load_profile  # noqa: E402
from tests.profile_fixtures import write_profile  # noqa: E402


def with_probe_rows(folder, gemm_s: float, add_s: float):
    """The fixture profile with the probe's two kernels measured at the given times (its GEMM
    table: the probe's shape only)."""
    write_profile(folder, gpu="", dtype="fp32")
    with (folder / "gemm.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["m", "n", "k", "forward_s", "backward_input_s",
                                  "backward_weight_s"],
                                 [*speed_probe.PROBE_GEMM, gemm_s, gemm_s, gemm_s]])
    rows = list(csv.reader((folder / "elementwise.csv").open()))
    rows = [r for r in rows if not (r[0] == "add" and r[1] == str(speed_probe.PROBE_ADD))]
    rows.append(["add", speed_probe.PROBE_ADD, add_s, add_s])
    with (folder / "elementwise.csv").open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return load_profile(folder)


def test_speed_is_the_profiled_time_over_the_time_now(tmp_path, monkeypatch):
    times = iter([0.004, 0.001])  # the probe's GEMM, then its add, as timed now
    monkeypatch.setattr(speed_probe, "median_time_s", lambda *args: next(times))
    db = with_probe_rows(tmp_path, gemm_s=0.0045, add_s=0.001)
    assert speed_probe.machine_speed(db, threads=1) == pytest.approx(0.0055 / 0.005)


def test_a_real_probe_runs_and_restores_the_thread_count(tmp_path):
    db = with_probe_rows(tmp_path, gemm_s=10.0, add_s=10.0)  # a machine far slower than this
    threads = torch.get_num_threads()
    assert speed_probe.machine_speed(db, threads=1) > 100
    assert torch.get_num_threads() == threads


def test_no_speed_without_measured_probe_kernels(tmp_path):
    db = load_profile(write_profile(tmp_path, gpu="", dtype="fp32"))  # 512^3: interpolated
    assert speed_probe.machine_speed(db, threads=1) is None
