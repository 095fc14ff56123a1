"""`parasim validate --suite vtrain`: calibrate on half of vTrain's runs, test on the rest.

    parasim validate --suite vtrain [--data-dir ../shared/data] [--out reports/vtrain] [--force]
    parasim validate --suite vtrain --render reports/vtrain

1. Reads the vTrain runs (`simulator.calibration.runs`, jobs from `simulator.datasets.vtrain`)
   and splits the single-node runs by the row-hash rule (`runs.SPLIT_RULE`); every multi-node
   run is a test run.
2. Fits every parameter of `simulator.calibration.parameters` to the calibration half, starting
   from profiles/analytic.yaml (`simulator.calibration.fit`); parameters no calibration run
   depends on stay at their analytic values.
3. Predicts every run with the fitted profile (and, for comparison, the uncalibrated one) and
   writes the report folder (`parasim.vtrain_report`) and the fitted profile in it.
Prints the calibration error and the test errors, single-node and multi-node.
Torch-free; a few minutes on two cores.
"""

from __future__ import annotations

import json
import math
import time
from datetime import datetime, timezone
from pathlib import Path

from parasim.calibrate_cli import calibration_lines
from parasim.data_dir import data_dir as find_data_dir
from parasim.vtrain_report import (
    FACTS,
    PROFILE_DIR,
    README,
    RESULTS,
    RowResult,
    render,
    summary_lines,
    write_results,
)
from parasim.simulator.calibration.fit import calibrate
from parasim.simulator.calibration.fitted import write_fitted
from parasim.simulator.calibration.parameters import DEFAULT_NAMES
from parasim.simulator.calibration.runs import SPLIT_RULE, Run, file_sha256, read_runs, split
from parasim.simulator.calibration.stats import ErrorSummary
from parasim.simulator.cost.profile import AnalyticProfile, analytic_profile
from parasim.simulator.datasets import vtrain
from parasim.simulator.errors import SpecError
from parasim.simulator.files import check_new_folder, make_folder, write_text_atomic
from parasim.simulator.predict import predict
from parasim.simulator.uncertainty import band_of



def validate_vtrain(*, data_dir: str | Path | None = None, out: str | Path | None = None,
                    force: bool = False, command: str = "parasim.validate('vtrain')"
                    ) -> list[RowResult]:
    """Calibrate on the vTrain single-node calibration half, test on the rest and on the
    multi-node runs; write the report folder (default reports/vtrain); its rows."""
    folder = find_data_dir(data_dir, "vtrain")
    target = _out_dir(out, force)
    single, multi = (read_runs(_data_file(folder, kind)) for kind in ("single", "multi"))
    return _run(folder, command, target, single, multi)


def _data_file(folder: Path, kind: str) -> Path:
    path = folder / vtrain.FILES[kind]
    if not path.is_file():
        raise SpecError("--data-dir", str(folder), f"has no {vtrain.FILES[kind]}",
                        "the folder holding vtrain/ (a copy of shared/data)")
    return path


def _out_dir(out: str | Path | None, force: bool) -> Path:
    """--out, or reports/vtrain: refused when it holds files, unless `force`."""
    return check_new_folder(out or "reports/vtrain", force=force, field="--out")


def _run(data: Path, command: str, out: Path, single: tuple[Run, ...],
         multi: tuple[Run, ...]) -> list[RowResult]:
    start = time.perf_counter()
    calibration, test = split(single)
    base = analytic_profile()
    print(f"vTrain: {len(single)} single-node runs ({len(calibration)} calibration, "
          f"{len(test)} test by the row-hash rule), {len(multi)} multi-node runs (test)",
          flush=True)
    uncalibrated = [predict(r.job, profile=base).step_time_s for r in calibration]
    print("\n".join(_uncalibrated_lines(uncalibrated, calibration)), flush=True)
    print("fitting ...", flush=True)
    result = calibrate(calibration, base, DEFAULT_NAMES,
                       f"{len(calibration)} vTrain single-node runs (calibration half)")
    print("\n".join(calibration_lines(result)), flush=True)
    rows = [_row(r, part, file, base, result.profile) for part, file, runs in (
        ("calibration", "single", calibration), ("test", "single", test), ("test", "multi", multi))
        for r in runs]
    make_folder(out, field="--out")
    (out / README).unlink(missing_ok=True)  # the marker goes back last (`render`)
    write_results(out / RESULTS, rows)
    write_fitted(out / PROFILE_DIR, result, _fit_facts(data, command, single, calibration),
                 force=True)
    facts = _facts(data, command, out, calibration, test, multi, result.profile, start)
    write_text_atomic(out / FACTS, json.dumps(facts, indent=2) + "\n", force=True,
                      field="--out")
    render(out, field="--out")
    print("\n".join(summary_lines(rows) + [f"wrote {out}/README.md"]), flush=True)
    return rows


def _uncalibrated_lines(predicted: list[float], runs: tuple[Run, ...]) -> list[str]:
    """The uncalibrated model's error on the calibration half and its residual band (the
    default interval in profiles/analytic.yaml `prediction_interval`)."""
    measured = [r.measured_step_s for r in runs]
    band = band_of([math.log(m / p) for p, m in zip(predicted, measured)], "", False)
    return [f"uncalibrated (profiles/analytic.yaml) on the calibration half: "
            f"{ErrorSummary.of(predicted, measured).line()}",
            f"  its residual band (analytic.yaml prediction_interval): log_low "
            f"{band.log_low:.4f}, log_high {band.log_high:.4f} over {band.runs} runs"]


def _row(run: Run, part: str, file: str, base: AnalyticProfile, fitted: AnalyticProfile
         ) -> RowResult:
    p = predict(run.job, profile=fitted)
    c = run.row
    return RowResult(
        part=part, file=file, line=run.line, gpus=int(c["# GPUs"]),
        tp=int(c["tensor parallelism"]), pp=int(c["pipeline parallelism"]),
        dp=int(c["data parallelism"]), micro_batch=int(c["micro batch"]),
        global_batch=int(c["global batch"]), hidden=int(c["hidden size"]),
        layers=int(c["# layers"]), measured_s=run.measured_step_s,
        uncalibrated_s=predict(run.job, profile=base).step_time_s, predicted_s=p.step_time_s,
        low_s=p.step_time_s_low, high_s=p.step_time_s_high)


def _fit_facts(data: Path, command: str, runs: tuple[Run, ...], used: tuple[Run, ...]) -> dict:
    path = data / vtrain.FILES["single"]
    return {"command": command, "created": _now(), "base_profile": "profiles/analytic.yaml",
            "runs_file": vtrain.FILES["single"], "runs_sha256": file_sha256(path),
            "runs_in_file": len(runs), "runs_used": len(used), "selection": SPLIT_RULE,
            "lines": [r.line for r in used]}


def _facts(data: Path, command: str, out: Path, calibration, test, multi,
           fitted: AnalyticProfile, start: float) -> dict:
    band = fitted.band
    return {
        "command": command, "created": _now(), "out": str(out),
        "data": str(data), "split_rule": SPLIT_RULE,
        "sha256": {kind: file_sha256(data / rel)
                   for kind, rel in vtrain.FILES.items()},
        "calibration_runs": len(calibration), "test_single_runs": len(test),
        "test_multi_runs": len(multi),
        "band": {"log_low": band.log_low, "log_high": band.log_high, "runs": band.runs},
        "assumptions": vtrain.ASSUMPTIONS, "elapsed_s": time.perf_counter() - start,
    }


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
