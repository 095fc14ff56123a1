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
from parasim.simulator.checks import require_number
from parasim.simulator.errors import SpecError
from parasim.simulator.files import staged_folder
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
    """The fitted profile in folder `path`; SpecError naming the file and the key of anything
    malformed: unreadable, not a mapping, a section or key missing, a number that is not
    finite or out of its range."""
    file = path / PROFILE_FILE
    try:
        with file.open("r", encoding="utf-8") as f:
            raw = load_data(f)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, ValueError, RecursionError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else \
            str(err).splitlines()[0] if str(err) else type(err).__name__
        raise SpecError("--profile", str(file), f"cannot read: {reason}", _REMAKE) from None
    if not isinstance(raw, dict):
        raise SpecError("--profile", str(file), "is not a mapping of profile sections", _REMAKE)
    raw = {k: v for k, v in raw.items() if k != "fit"}
    _check_numbers(raw, file, "")
    band = raw.get("prediction_interval")
    if isinstance(band, dict) and all(isinstance(band.get(k), (int, float))
                                      for k in ("log_low", "log_high")) \
            and band["log_low"] > band["log_high"]:
        raise SpecError(f"{file}: prediction_interval.log_low", band["log_low"],
                        f"is above log_high={band['log_high']}", "log_low <= log_high")
    try:
        return profile_from_mapping(raw)
    except KeyError as err:
        raise SpecError("--profile", str(file), f"missing key {err}", _REMAKE) from None
    except (AttributeError, TypeError, ValueError) as err:
        raise SpecError("--profile", str(file), f"malformed: {err}", _REMAKE) from None


_REMAKE = "a folder written by `parasim calibrate` (profile.yaml in analytic.yaml's layout)"
# Keys of profile.yaml whose numbers have a range other than "finite and >= 0":
# key -> (minimum, maximum, above the minimum)
_RANGES = {
    "max_efficiency": (0, 1, True), "bandwidth_efficiency": (0, 1, True),
    "intra_node_efficiency": (0, 1, True), "inter_node_efficiency": (0, 1, True),
    "causal_work_fraction": (0, 1, True), "fraction": (0, 0.99, False),
    "backward_factor": (0, None, True), "reference_width": (0, None, True),
    "compute_scale": (0, None, True), "memory_scale": (0, None, True),
    "log_low": (None, None, False), "log_high": (None, None, False),
}


_NOT_NUMBERS = ("source", "calibrated", "gpus")  # the keys whose values are not numbers


def _check_numbers(node: Any, file: Path, where: str) -> None:
    """Every value in the profile's sections a finite number in its key's range, except the
    few that are text, flags or lists of GPU names."""
    key = where.rsplit(".", 1)[-1]
    if isinstance(node, dict):
        for name, value in node.items():
            _check_numbers(value, file, f"{where}.{name}" if where else str(name))
    elif key not in _NOT_NUMBERS:
        low, high, above = _RANGES.get(key, (0, None, False))
        require_number(f"{file}: {where}", node, low, high, above=above)


ANALYTIC = "analytic"  # `--profile analytic`: the uncalibrated roofline constants


def base_profile(name: str | None) -> AnalyticProfile:
    """`calibrate --profile`: a fitted folder to start from, default profiles/analytic.yaml."""
    if name is None or name == ANALYTIC:
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
        if name == ANALYTIC and fitted is None:
            fitted = analytic_profile()
        elif path is not None and fitted is None:
            fitted = load_fitted(path)
        elif path is None and measured is None:
            measured = profile_db(name)
        else:
            raise SpecError("--profile", name, "a second " + ("fitted" if path else "measured")
                            + " profile", "at most one fitted and one measured profile")
    return fitted, measured


def write_fitted(out: Path, calibration: Calibration, facts: dict[str, Any], *,
                 force: bool = False) -> None:
    """profile.yaml and residuals.csv into the folder `out`, all or nothing: staged, then
    moved in with profile.yaml (what makes the folder a fitted profile) last
    (`simulator.files.staged_folder`). Into an `out` with files in it only with `force`;
    SpecError naming --out otherwise, or when it cannot be written (read-only, no space)."""
    document = {**profile_mapping(calibration.profile), "fit": fit_section(calibration, facts)}
    header = ("# Fitted cost-model profile, written by `parasim calibrate` "
              "(simulator/calibration). Layout of profiles/analytic.yaml; `fit` says how.\n")
    with staged_folder(out, force=force, field="--out", marker=PROFILE_FILE) as staging:
        (staging / PROFILE_FILE).write_text(header + yaml.safe_dump(
            document, sort_keys=False, width=100), encoding="utf-8")
        with (staging / RESIDUALS_FILE).open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["line", "predicted_s", "measured_s", "error_pct"])
            for line, p, m in zip(facts["lines"], calibration.predicted_s,
                                  calibration.measured_s):
                writer.writerow([line, f"{p:.6g}", f"{m:.6g}", f"{100 * (p / m - 1):.3f}"])


def fit_section(calibration: Calibration, facts: dict[str, Any]) -> dict[str, Any]:
    return {
        **{k: v for k, v in facts.items() if k != "lines"},
        "confidence": CONFIDENCE,
        "parameters": [asdict(p) for p in calibration.parameters],
        "error_on_runs_used": asdict(calibration.error),
        "evaluations": calibration.evaluations,
    }
