"""simulator.calibration.linearized and .by_source: the linearised fit recovers known
constants from noiseless runs, leave-one-source-out never lets a source see itself, and the
constant-MFU baseline and the 80% band are what their docstrings say."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from parasim.simulator.calibration import by_source, linearized
from parasim.simulator.calibration.parameters import parameters
from parasim.simulator.cost.profile import analytic_profile
from parasim.simulator.flops import model_flop_per_step
from parasim.simulator.jobfile import job_from_mapping
from parasim.simulator.predict import predict

NAMES = ("gemm.max_efficiency", "overhead.step_s")


def _job(layers: int, hidden: int, batch: int, base: str = "dgx-h100"):
    return job_from_mapping({
        "model": {"name": f"m{layers}x{hidden}", "num_layers": layers, "hidden_size": hidden,
                  "num_attention_heads": hidden // 128, "ffn_hidden_size": 4 * hidden,
                  "vocab_size": 32000},
        "cluster": {"base": base, "num_nodes": 1},
        "training": {"seq_length": 2048, "global_batch_size": batch},
        "parallel": {"tp": 8}}, base_dir=Path("."), source=f"{layers}x{hidden}x{batch}")


def _truth():
    base = analytic_profile()
    hopper = replace(base.for_gpu("h100-sxm"), gemm=replace(base.gemm, max_efficiency=0.55),
                     step_overhead_s=0.2)
    return base.with_generation("hopper", hopper)


def _runs(truth, source_of):
    jobs = [_job(l, h, b) for l in (4, 8) for h in (2048, 4096) for b in (8, 32)]
    runs = []
    for i, job in enumerate(jobs):
        t = predict(job, profile=truth).step_time_s
        runs.append(by_source.SourcedRun(
            source=source_of(i), generation="hopper", job=job, measured_step_s=t,
            model_flop_per_step=model_flop_per_step(job.model, job.training),
            peak_flop_per_s=8 * job.cluster.node_groups[0].gpu.peak_flop_per_s("bf16")))
    return runs


def test_the_linearised_refit_recovers_known_constants():
    truth = _truth()
    runs = _runs(truth, lambda i: f"s{i % 3}")
    fitted, lins = by_source.fit_generations(runs, analytic_profile(), parameters(NAMES))
    hopper = fitted.for_gpu("h100-sxm")
    assert hopper.gemm.max_efficiency == pytest.approx(0.55, rel=1e-3)
    assert hopper.step_overhead_s == pytest.approx(0.2, rel=1e-2)
    assert fitted.for_gpu("a100-80gb") == analytic_profile().for_gpu("a100-80gb")
    assert lins["hopper"].slope_s.shape == (len(runs), len(NAMES))


def test_leave_one_source_out_predicts_each_source_without_it():
    """Sources measured on slower GPUs than the others: held out, each is predicted by the
    fit on the others, so its error stays; the baseline MFU comes from the others too."""
    truth = _truth()
    runs = _runs(truth, lambda i: f"s{i % 2}")
    slow = [replace(r, measured_step_s=r.measured_step_s * (1.5 if r.source == "s1" else 1.0))
            for r in runs]
    base = analytic_profile()
    fitted, lins = by_source.fit_generations(slow, base, parameters(NAMES))
    held = by_source.leave_one_source_out(slow, slow, fitted, lins, base)
    s1 = [h for h in held if h.run.source == "s1"]
    assert all(h.predicted_s < 0.8 * h.run.measured_step_s for h in s1)  # fitted on s0 alone
    mfu = by_source.constant_mfu([r for r in slow if r.source == "s0"])
    for h in s1:
        assert h.baseline_s == pytest.approx(h.run.model_flop_per_step
                                             / (mfu * h.run.peak_flop_per_s))


def _two_sources():
    """s0 measured at the truth (GEMMs at 0.55 of peak), s1 on slower GPUs (0.40): the slower
    truth, the runs, and the all-source fit held out source by source."""
    base = analytic_profile()
    slower = base.with_generation("hopper", replace(
        base.for_gpu("h100-sxm"), gemm=replace(base.gemm, max_efficiency=0.40),
        step_overhead_s=0.2))
    runs = [r if r.source == "s0" else s for r, s in zip(
        _runs(_truth(), lambda i: f"s{i % 2}"), _runs(slower, lambda i: f"s{i % 2}"))]
    fitted, lins = by_source.fit_generations(runs, base, parameters(NAMES))
    return slower, runs, by_source.leave_one_source_out(runs, runs, fitted, lins, base)


def test_each_source_fitted_on_itself_is_exact_where_the_model_can_express_it():
    """Out of source each is missed, fitted on itself each is reproduced (in-sample), and
    the out-of-source figures are left as they were."""
    _, runs, held = _two_sources()
    own = by_source.fitted_on_itself(runs, held, analytic_profile(), parameters(NAMES))
    for h in own:
        assert h.own_s == pytest.approx(h.run.measured_step_s, rel=0.02)
        assert (h.predicted_s, h.low_s, h.high_s) == next(
            (o.predicted_s, o.low_s, o.high_s) for o in held if o.run is h.run)
    missed = max(abs(h.predicted_s / h.run.measured_step_s - 1) for h in own)
    assert missed > 0.1  # out of source: the other source's efficiency


def test_a_fold_lands_on_the_other_sources_constants():
    """s0 held out is predicted by the fit on s1 alone, which moves far from the all-source
    point (linearised again there): s1's constants, to 1%."""
    slower, _, held = _two_sources()
    for h in held:
        if h.run.source == "s0":
            expected = predict(h.run.job, profile=slower).step_time_s
            assert h.predicted_s == pytest.approx(expected, rel=0.01)


def test_the_band_is_the_10th_to_90th_percentile():
    logs = list(np.linspace(-1, 1, 101))
    band = by_source.interval_band(logs, "x")
    assert band.log_low == pytest.approx(-0.8) and band.log_high == pytest.approx(0.8)
    assert band.calibrated


def test_source_weights_give_every_source_the_same_weight():
    weights = linearized.source_weights(["a", "a", "a", "b"])
    assert list(weights) == [pytest.approx(1 / 3)] * 3 + [1.0]


def test_coordinates_make_efficiencies_inverse_and_decades_logarithmic():
    gemm, half, step = parameters(("gemm.max_efficiency", "gemm.half_efficiency_flop",
                                   "overhead.step_s"))
    assert linearized.coordinate(gemm, 0.5) == 2.0 and linearized.value_of(gemm, 2.0) == 0.5
    assert linearized.coordinate(half, 1e9) == pytest.approx(9.0)
    assert linearized.coordinate(step, 0.3) == 0.3
    assert math.isclose(linearized.value_of(half, 9.0), 1e9)
