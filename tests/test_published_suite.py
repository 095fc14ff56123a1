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
