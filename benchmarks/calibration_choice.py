"""Which parameters to calibrate: leave-one-out error of each candidate set on the calibration runs.

A fit of more parameters always matches its own runs at least as well; whether it predicts a
run it has not seen is what leave-one-out tells (each run predicted by a fit of all the
others). This prints, for every set of the named parameters that holds the first one, the fit
on all the runs and its leave-one-out error, the least first. It reads the calibration runs
alone: the set is chosen before any test run is predicted (reports/local/analysis.md says
which was chosen for the local suite, and why).

    python3 benchmarks/calibration_choice.py --runs reports/local-calibration/runs.csv \
        --profile reports/local-calibration/profile \
        [--params measured.compute_scale,measured.memory_scale,overhead.collective_s,overhead.step_s]
"""

from __future__ import annotations

import argparse
import itertools
import statistics

from parasim.simulator.calibration.fit import calibrate
from parasim.simulator.calibration.fitted import load_profiles
from parasim.simulator.calibration.runs import read_runs
from parasim.simulator.cost.profile import analytic_profile
from parasim.simulator.errors import Infeasible
from parasim.simulator.predict import predict

LOCAL_PARAMETERS = ("measured.compute_scale", "measured.memory_scale", "overhead.collective_s",
                    "overhead.step_s")


def leave_one_out(runs, base, names, measured) -> list[float]:
    """|predicted / measured - 1| of each run, predicted by a fit of the others."""
    errors = []
    for i, run in enumerate(runs):
        fit = calibrate(runs[:i] + runs[i + 1:], base, names, "leave-one-out",
                        measured=measured)
        predicted = predict(run.job, profile=fit.profile, measured=measured).step_time_s
        errors.append(abs(predicted / run.measured_step_s - 1))
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", required=True, help="a parasim runs file (job, step_time_s)")
    parser.add_argument("--profile", action="append", default=[],
                        help="measured and/or fitted base profile, as `parasim calibrate`")
    parser.add_argument("--params", default=",".join(LOCAL_PARAMETERS),
                        help="the first is in every set; the others are tried in all subsets")
    args = parser.parse_args()
    fitted, measured = load_profiles(args.profile)
    base = fitted or analytic_profile()
    runs = read_runs(args.runs)
    first, *rest = args.params.split(",")
    rows = []
    for k in range(len(rest) + 1):
        for extra in itertools.combinations(rest, k):
            names = (first, *extra)
            try:
                whole = calibrate(runs, base, names, "all runs", measured=measured)
                loo = leave_one_out(runs, base, names, measured)
            except Infeasible as err:
                print(f"{' + '.join(names)}: {err}")
                continue
            values = ", ".join(f"{p.name} {p.value:.4g}" if p.fitted else f"{p.name} fixed"
                               for p in whole.parameters)
            rows.append((statistics.mean(loo), max(loo), whole.error.mean_ape_pct, values))
    print(f"{len(runs)} runs of {args.runs}; leave-one-out mean / worst APE, fit on all runs")
    for loo_mean, loo_worst, fit_pct, values in sorted(rows):
        print(f"  {loo_mean:6.2%} / {loo_worst:6.2%}   fit {fit_pct:5.2f}%   {values}")


if __name__ == "__main__":
    main()
