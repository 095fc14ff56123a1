"""`parasim calibrate`: fit cost-model parameters to measured runs into a fitted profile.

    parasim calibrate --runs RUNS.csv [--profile BASE] [--profile MEASURED]
                      --out profiles/fitted/NAME
                      [--params a,b,...] [--calibration-half] [--max-evaluations N] [--force]

Reads the runs (`simulator.calibration.runs`: a parasim or a vTrain runs file), fits the named
parameters of the base profile (a fitted folder, default profiles/analytic.yaml), over a
measured profile's op times when one is given, by bounded least squares on log
step times (`simulator.calibration.fit`), prints each with its 95% confidence interval (or why
it was fixed) and the fit's error on the runs used, and writes the folder
(`simulator.calibration.fitted`). Bad input, too few runs, or a fit that does not converge: one
line on stderr, exit status 2, nothing written. The folder is written whole or not at all
(staged beside it, then renamed into place): a read-only or full disk leaves nothing behind.
"""

from __future__ import annotations

import argparse
import math
import shlex
from datetime import datetime, timezone
from collections.abc import Sequence
from pathlib import Path

from parasim.simulator.calibration.fit import Calibration, FittedParameter, calibrate
from parasim.simulator.calibration.fitted import fitted_dir, load_profiles, write_fitted
from parasim.simulator.calibration.parameters import DEFAULT_NAMES
from parasim.simulator.calibration.runs import SPLIT_RULE, file_sha256, read_runs, split
from parasim.simulator.cost.profile import analytic_profile
from parasim.simulator.errors import SpecError
from parasim.simulator.files import check_new_folder


def add_calibrate_parser(commands: argparse._SubParsersAction) -> None:
    calibrate_ = commands.add_parser("calibrate", help="fit cost-model parameters to measured "
                                     "runs; write a fitted profile")
    calibrate_.add_argument("--runs", required=True, metavar="RUNS.csv",
                            help="measured runs: columns job, step_time_s (+ override columns "
                            "like parallel.tp), or a vTrain file")
    calibrate_.add_argument("--profile", metavar="BASE|MEASURED", action="append",
                            help="fitted profile to start from (default "
                            "profiles/analytic.yaml) and/or a measured profile (`parasim "
                            "profile`) whose op times the fit scales; give it twice for both")
    calibrate_.add_argument("--out", required=True, metavar="DIR",
                            help="output folder, e.g. profiles/fitted/NAME")
    calibrate_.add_argument("--params", metavar="A,B,...", default=",".join(DEFAULT_NAMES),
                            help="parameters to fit (default: all): " + ", ".join(DEFAULT_NAMES))
    calibrate_.add_argument("--calibration-half", action="store_true",
                            help="fit only the calibration half of the runs (" + SPLIT_RULE + ")")
    calibrate_.add_argument("--max-evaluations", type=int, default=200, metavar="N",
                            help="give up (and write nothing) after N model evaluations (200)")
    calibrate_.add_argument("--force", action="store_true",
                            help="write into an --out folder that is not empty")


def calibrate_command(args: argparse.Namespace, argv: list[str]) -> None:
    """`parasim calibrate`: SpecError or Infeasible (no convergence) for the CLI to report."""
    names = tuple(n.strip() for n in args.params.split(",") if n.strip())
    fit_profile(args.runs, out=args.out, params=names, profiles=args.profile or (),
                calibration_half=args.calibration_half, max_evaluations=args.max_evaluations,
                force=args.force, command="parasim " + " ".join(shlex.quote(a) for a in argv))


def fit_profile(runs_file: str | Path, *, out: str | Path, params: Sequence[str] = DEFAULT_NAMES,
                profiles: Sequence[str] = (), calibration_half: bool = False,
                max_evaluations: int = 200, force: bool = False,
                command: str = "parasim.calibrate()") -> Calibration:
    """Fit `params` to the runs of `runs_file` over the given base and measured profiles,
    print the fit and write the fitted profile folder `out`."""
    out = check_new_folder(out, force=force, field="--out")
    if max_evaluations < 1:
        raise SpecError("--max-evaluations", max_evaluations, "must be positive", "e.g. 200")
    runs = read_runs(runs_file)
    used = split(runs)[0] if calibration_half else runs
    source = f"{len(used)} runs of {Path(runs_file).name}" + (
        " (calibration half)" if calibration_half else "")
    fitted, measured = load_profiles(list(profiles))
    result = calibrate(used, fitted or analytic_profile(), tuple(params), source,
                       max_evaluations, measured)
    print("\n".join(calibration_lines(result)), flush=True)
    facts = {
        "command": command,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "base_profile": next((p for p in profiles if fitted_dir(p)), "profiles/analytic.yaml"),
        "measured_profile": measured.path if measured is not None else None,
        "runs_file": str(runs_file), "runs_sha256": file_sha256(Path(runs_file)),
        "runs_in_file": len(runs), "runs_used": len(used),
        "selection": SPLIT_RULE if calibration_half else "every run of the file",
        "lines": [r.line for r in used],
    }
    write_fitted(out, result, facts, force=force)
    print(f"wrote {out}/profile.yaml and residuals.csv", flush=True)
    return result


def calibration_lines(result: Calibration) -> list[str]:
    """Each parameter with its interval or why it is fixed; the error on the runs used."""
    lines = [f"  {'parameter':<38}{'value':<12}95% confidence interval (or why fixed)"]
    lines += [parameter_line(p) for p in result.parameters]
    band = result.profile.band
    lines.append(f"fit on the runs used: {result.error.line()}; {result.evaluations} model "
                 "evaluations")
    lines.append(f"prediction interval (5th-95th percentile of measured/predicted): "
                 f"x{math.exp(band.log_low):.3f} to x{math.exp(band.log_high):.3f}")
    return lines


def parameter_line(p: FittedParameter) -> str:
    if not p.fitted:
        return f"  {p.name:<38}{_number(p.value):<12}{p.status}"
    interval = f"[{_number(p.ci_low)}, {_number(p.ci_high)}]"
    extra = p.status.removeprefix("fitted").lstrip(", ")
    return f"  {p.name:<38}{_number(p.value):<12}{interval}" + (f"  ({extra})" if extra else "")


def _number(value: float) -> str:
    return f"{value:.4g}"
