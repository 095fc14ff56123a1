"""Fitted profile folders: `profiles/fitted/NAME/profile.yaml` (+ residuals.csv).

profile.yaml has analytic.yaml's layout (every constant, fitted or not, so that the folder
stands alone) and a `fit` section: each parameter with its 95% confidence interval or why it
was fixed, the error on the runs used, their residual band (the prediction interval), the runs
file's sha256, which rows were used (all, or the calibration half by the split rule), the
command and the date. `estimate --profile NAME` uses it as the analytic profile; given also a
measured profile (`--profile` twice), measured op times replace the fitted roofline per op.
"""

from __future__ import annotations

import csv
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from parasim import profiles
from parasim.simulator.calibration.fit import CONFIDENCE, Calibration
from parasim.simulator.cost.profile import AnalyticProfile, analytic_profile, profile_from_mapping, \
    profile_mapping
from parasim.simulator.errors import SpecError
from parasim.simulator.profile import ProfileDB, profile_db
from parasim.simulator.yamlfile import load_data

PROFILE_FILE = "profile.yaml"
RESIDUALS_FILE = "residuals.csv"


def fitted_dir(name: str) -> Path | None:
    """A fitted profile folder by path, or by name under the user's fitted/ folder
    ($PARASIM_HOME or ~/.parasim) or the ones shipped with parasim; else None."""
    for candidate in (Path(name), *(folder / name for folder in profiles.locations("fitted"))):
        if (candidate / PROFILE_FILE).is_file():
            return candidate
    return None


def load_fitted(path: Path) -> AnalyticProfile:
    try:
        with (path / PROFILE_FILE).open("r", encoding="utf-8") as f:
            raw = load_data(f)
        return profile_from_mapping({k: v for k, v in raw.items() if k != "fit"})
    except (OSError, KeyError, TypeError, ValueError) as err:
        raise SpecError("--profile", str(path), f"not a fitted profile: {err}",
                        "a folder written by `parasim calibrate`") from None


def base_profile(name: str | None) -> AnalyticProfile:
    """`calibrate --profile`: a fitted folder to start from, default profiles/analytic.yaml."""
    if name is None:
        return analytic_profile()
    path = fitted_dir(name)
    if path is None:
        raise SpecError("--profile", name, "no fitted profile folder (profile.yaml) there",
                        "a folder written by `parasim calibrate`, or leave --profile out "
                        "(profiles/analytic.yaml)")
    return load_fitted(path)


def load_profiles(names: list[str]) -> tuple[AnalyticProfile | None, ProfileDB | None]:
    """`estimate --profile` (given once or twice): a fitted and/or a measured profile."""
    fitted: AnalyticProfile | None = None
    measured: ProfileDB | None = None
    for name in names:
        path = fitted_dir(name)
        if path is not None and fitted is None:
            fitted = load_fitted(path)
        elif path is None and measured is None:
            measured = profile_db(name)
        else:
            raise SpecError("--profile", name, "a second " + ("fitted" if path else "measured")
                            + " profile", "at most one fitted and one measured profile")
    return fitted, measured


def write_fitted(out: Path, calibration: Calibration, facts: dict[str, Any]) -> None:
    """profile.yaml and residuals.csv into `out` (created)."""
    out.mkdir(parents=True, exist_ok=True)
    document = {**profile_mapping(calibration.profile), "fit": fit_section(calibration, facts)}
    header = ("# Fitted cost-model profile, written by `parasim calibrate` "
              "(simulator/calibration). Layout of profiles/analytic.yaml; `fit` says how.\n")
    (out / PROFILE_FILE).write_text(header + yaml.safe_dump(document, sort_keys=False,
                                                            width=100), encoding="utf-8")
    with (out / RESIDUALS_FILE).open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["line", "predicted_s", "measured_s", "error_pct"])
        for line, p, m in zip(facts["lines"], calibration.predicted_s, calibration.measured_s):
            writer.writerow([line, f"{p:.6g}", f"{m:.6g}", f"{100 * (p / m - 1):.3f}"])


def fit_section(calibration: Calibration, facts: dict[str, Any]) -> dict[str, Any]:
    return {
        **{k: v for k, v in facts.items() if k != "lines"},
        "confidence": CONFIDENCE,
        "parameters": [asdict(p) for p in calibration.parameters],
        "error_on_runs_used": asdict(calibration.error),
        "evaluations": calibration.evaluations,
    }
