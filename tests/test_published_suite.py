"""`parasim validate --suite published`: the leave-one-source-out report, and the shipped
default profile is exactly the one the suite fits (so `reports/published` reproduces it)."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import pytest
import yaml

from parasim.cli import main

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "profiles" / "fitted" / "published" / "profile.yaml"


def _data_dir() -> Path | None:
    given = os.environ.get("PARASIM_DATA")
    for folder in ([Path(given)] if given else []) + [REPO.parent / "shared" / "data"]:
        if (folder / "mosaicml").is_dir() and (folder / "vtrain").is_dir():
            return folder
    return None


def test_the_shipped_profile_has_a_calibrated_band_per_fitted_generation():
    profile = yaml.safe_load(SHIPPED.read_text())
    fitted = {name: g for name, g in profile["generations"].items() if len(g) > 1}
    assert {"ampere", "hopper"} <= set(fitted)
    for g in fitted.values():
        band = g["prediction_interval"]
        assert band["calibrated"] and band["log_low"] < 0 < band["log_high"] and band["runs"]
    assert "prediction_interval" not in profile["generations"]["blackwell"]  # no data: says so


def test_the_committed_report_matches_its_rows():
    rows = list(csv.DictReader((REPO / "reports" / "published" / "results.csv").open()))
    assert len({r["source"] for r in rows}) >= 6 and len(rows) > 1000
    readme = (REPO / "reports" / "published" / "README.md").read_text()
    assert "leave-one-source-out" in readme and "constant-MFU baseline" in readme


@pytest.mark.slow
def test_the_suite_reproduces_the_shipped_profile(tmp_path, capsys):
    data = _data_dir()
    if data is None:
        pytest.skip("the public datasets (../shared/data) are not here")
    out = tmp_path / "published"
    assert main(["validate", "--suite", "published", "--data-dir", str(data), "--out",
                 str(out)]) == 0
    fresh = yaml.safe_load((out / "fitted" / "profile.yaml").read_text())
    assert fresh == yaml.safe_load(SHIPPED.read_text())
    shutil.copy(out / "results.csv", tmp_path / "results.csv")
    (out / "README.md").unlink()
    assert main(["validate", "--suite", "published", "--render", str(out)]) == 0
    assert (out / "README.md").is_file()
    assert "rendered" in capsys.readouterr().out


def test_a_report_written_before_the_own_fit_column_still_renders(tmp_path):
    """A results.csv without `own_s` (written before that column existed) renders, saying
    the own-source fit was not computed."""
    from parasim.published_report import render
    header = "source,generation,job,measured_s,predicted_s,baseline_s,low_s,high_s\n"
    rows = "".join(f"s{i % 2},hopper,j{i},{1 + i},{1.1 + i},{2 + i},{0.5 + i},{2 + i}\n"
                   for i in range(4))
    (tmp_path / "results.csv").write_text(header + rows)
    (tmp_path / "memory.csv").write_text("source,label,predicted_GiB,measured_GiB\n")
    (tmp_path / "fits.csv").write_text("label,predicted_fits,ran\n")
    (tmp_path / "facts.json").write_text('{"command": "c", "created": "t", "elapsed_s": 1, '
                                         '"fitted": ["gemm.max_efficiency"]}')
    summary = render(tmp_path)
    assert summary["own_mean_per_source_error"] is None
    readme = (tmp_path / "README.md").read_text()
    assert "| not computed |" in readme and "Fitted on itself:" not in readme
