"""parasim: cluster simulator and parallelism planner for large-model training.

The library loop (the `parasim` command is a thin layer over it):

    import parasim
    job = parasim.load_job("examples/llama3-70b-dgx-h100.yaml", ["parallel.tp=4"])
    prediction = parasim.estimate(job)            # StepPrediction: step_time_s, mfu, memory...
    plan = parasim.plan(job, objective="time")    # Plan: plan.job.layout, plan.prediction
    table = parasim.sweep(job, {"parallel.tp": [4, 8], "parallel.pp": [4, 8]})  # DataFrame
    measured = parasim.run(parasim.write_plan(plan, "plan.json"))  # needs PyTorch

Subpackages (each layer imports only those before it): `parasim.simulator` (specs and the cost
model, torch-free), `parasim.planner` (the search), `parasim.runtime` (PyTorch), and this app
layer (the command line, reports, validation suites). The names below load on first use, so
`import parasim.simulator` stays light.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__all__ = ["Infeasible", "Job", "ParasimError", "Plan", "SpecError", "StepPrediction",
           "calibrate", "estimate", "load_job", "plan", "run", "sweep", "validate",
           "write_plan"]

_HOME = {
    "calibrate": "parasim.api", "estimate": "parasim.api", "load_job": "parasim.api",
    "plan": "parasim.api", "run": "parasim.api", "sweep": "parasim.api",
    "validate": "parasim.api", "write_plan": "parasim.api",
    "Plan": "parasim.planner.plan", "Job": "parasim.simulator.job",
    "StepPrediction": "parasim.simulator.results", "SpecError": "parasim.simulator.errors",
    "Infeasible": "parasim.simulator.errors", "ParasimError": "parasim.simulator.errors",
}

if TYPE_CHECKING:
    from parasim.api import calibrate, estimate, load_job, plan, run, sweep, validate, write_plan
    from parasim.planner.plan import Plan
    from parasim.simulator.errors import Infeasible, ParasimError, SpecError
    from parasim.simulator.job import Job
    from parasim.simulator.results import StepPrediction


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'parasim' has no attribute {name!r}")
    value = getattr(import_module(_HOME[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
