"""Calibration (simulator/calibration): known parameters recovered from synthetic runs, bounds,
identifiability and convergence rules, the deterministic split, prediction intervals."""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import replace
from pathlib import Path

import pytest

from parasim.simulator.calibration.fit import calibrate
from parasim.simulator.calibration.parameters import PARAMETERS, apply, parameters
from parasim.simulator.calibration.runs import Run, read_runs, row_digest, split
from parasim.simulator.cost.profile import analytic_profile, profile_from_mapping, profile_mapping
from parasim.simulator.errors import Infeasible, SpecError
from parasim.simulator.jobfile import job_from_mapping
from parasim.simulator.predict import predict
from parasim.simulator.uncertainty import ResidualBand, band_of, step_band

VTRAIN_SINGLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "vtrain" / \
    "ground_truth_single.csv"
TRUTH = {"gemm.max_efficiency": 0.7, "memory.bandwidth_efficiency": 0.6,
         "overhead.op_s": 3e-5, "overhead.step_s": 0.02}


def _job(hidden: int, layers: int, mb: int, tp: int, pp: int, dp: int):
    gpus = tp * pp * dp
    return job_from_mapping({
        "model": {"name": "tiny", "num_layers": layers, "hidden_size": hidden,
                  "num_attention_heads": 8, "ffn_hidden_size": 4 * hidden, "vocab_size": 8192},
        "cluster": {"base": "dgx-a100", "num_nodes": 1, "gpus_per_node": gpus},
        "training": {"seq_length": 512, "global_batch_size": 8 * mb * dp, "precision": "fp16",
                     "flash_attention": False},
        "parallel": {"tp": tp, "pp": pp, "dp": dp, "micro_batch_size": mb, "recompute": "full"},
    }, base_dir=Path("."), source="synthetic")


def _truth():
    names = tuple(TRUTH)
    return apply(analytic_profile(), parameters(names),
                 [PARAMETERS[n].to_internal(v) for n, v in TRUTH.items()])


def _synthetic_runs(noise: float, seed: int = 7) -> tuple[Run, ...]:
    """Runs whose 'measured' time is the model's own with known parameters, times
    exp(N(0, noise)): small and large GEMMs, so that every parameter matters somewhere."""
    rng, truth, runs = random.Random(seed), _truth(), []
    shapes = [(h, layers, mb, tp, pp, dp) for h in (256, 1024, 4096) for layers in (2, 4)
              for mb in (1, 4) for tp, pp, dp in ((1, 1, 1), (2, 1, 1), (1, 2, 2))]
    for line, shape in enumerate(shapes, start=2):
        job = _job(*shape)
        measured = predict(job, profile=truth).step_time_s * math.exp(rng.gauss(0, noise))
        cells = [str(v) for v in shape]
        runs.append(Run(job, measured, dict(zip("hlmtpd", cells)), row_digest(cells), line))
    return tuple(runs)


@pytest.fixture(scope="module")
def fitted():
    return calibrate(_synthetic_runs(noise=0.02), analytic_profile(), tuple(TRUTH), "synthetic")


def test_calibration_recovers_known_parameters_within_their_intervals(fitted):
    """Each true value within its interval, widened from 95% to 99% (x t(0.995)/t(0.975),
    about 1.32: with four 95% intervals one misses one time in five by design)."""
    for p in fitted.parameters:
        assert p.fitted, p
        half = (p.ci_high - p.ci_low) / 2 * 1.32
        assert abs(p.value - TRUTH[p.name]) <= half, p
    assert fitted.error.mean_ape_pct < 3  # the noise is 2%
    assert fitted.profile.band.calibrated and fitted.profile.band.runs == 36


def test_noiseless_runs_give_the_parameters_back_exactly():
    result = calibrate(_synthetic_runs(noise=0.0), analytic_profile(), tuple(TRUTH), "exact")
    for p in result.parameters:
        assert p.value == pytest.approx(TRUTH[p.name], rel=1e-6), p


MEASURED_TRUTH = {"measured.compute_scale": 1.2, "measured.memory_scale": 2.5,
                  "overhead.collective_s": 2e-4, "overhead.step_s": 0.01}


def _measured_job(hidden: int, seq: int, mb: int, tp: int, pp: int, dp: int):
    """A job whose GEMMs, attention, norms, SwiGLU and 2-rank collectives lie in the test
    profile's grids (tests/profile_fixtures.py)."""
    return job_from_mapping({
        "model": {"name": "tiny", "num_layers": 4, "hidden_size": hidden,
                  "num_attention_heads": 8, "num_kv_heads": 8, "ffn_hidden_size": 2 * hidden,
                  "vocab_size": 4096, "activation": "swiglu", "norm": "rmsnorm"},
        "cluster": {"base": "dgx-h100", "num_nodes": 1, "gpus_per_node": tp * pp * dp},
        "training": {"seq_length": seq, "global_batch_size": 4 * mb * dp, "precision": "bf16"},
        "parallel": {"tp": tp, "pp": pp, "dp": dp, "micro_batch_size": mb},
    }, base_dir=Path("."), source="synthetic")


@pytest.fixture(scope="module")
def measured_db(tmp_path_factory):
    from parasim.simulator.profile import load_profile
    from tests.profile_fixtures import write_profile
    return load_profile(write_profile(tmp_path_factory.mktemp("measured") / "p"))


def _measured_runs(db, noise: float, seed: int = 11) -> tuple[Run, ...]:
    """Runs made by the model over a measured profile with known scales and overheads."""
    truth = apply(analytic_profile(), parameters(tuple(MEASURED_TRUTH)),
                  [PARAMETERS[n].to_internal(v) for n, v in MEASURED_TRUTH.items()])
    rng, runs = random.Random(seed), []
    shapes = [(h, seq, mb, tp, pp, dp) for h in (256, 1024) for seq in (512, 1024)
              for mb in (1, 4) for tp, pp, dp in ((1, 1, 1), (2, 1, 1), (1, 2, 1), (1, 1, 2))]
    for line, shape in enumerate(shapes, start=2):
        job = _measured_job(*shape)
        step = predict(job, profile=truth, measured=db).step_time_s
        cells = [str(v) for v in shape]
        runs.append(Run(job, step * math.exp(rng.gauss(0, noise)), dict(zip("hsmtpd", cells)),
                        row_digest(cells), line))
    return tuple(runs)


def test_calibration_over_a_measured_profile_recovers_its_scales(measured_db):
    """Over a measured profile the fit scales the measured op times and adds the fixed
    costs; the roofline's constants price nothing here and are left as they were."""
    names = tuple(MEASURED_TRUTH) + ("gemm.max_efficiency",)
    exact = calibrate(_measured_runs(measured_db, 0.0), analytic_profile(), names, "exact",
                      measured=measured_db)
    for p in exact.parameters[:-1]:
        assert p.value == pytest.approx(MEASURED_TRUTH[p.name], rel=1e-4), p
    assert exact.parameters[-1].status.startswith("fixed: no run depends on it")
    noisy = calibrate(_measured_runs(measured_db, 0.02), analytic_profile(),
                      tuple(MEASURED_TRUTH), "noisy", measured=measured_db)
    for p in noisy.parameters:  # 99% intervals, as above
        assert abs(p.value - MEASURED_TRUTH[p.name]) <= (p.ci_high - p.ci_low) / 2 * 1.32, p


def test_a_measured_scale_multiplies_the_measured_op_times(measured_db):
    """Each scale multiplies its kind's measured ops: their effects add up, doubling both at
    most doubles the compute (analytic ops stay), and without a measured profile they do
    nothing."""
    job = _measured_job(1024, 1024, 4, 1, 1, 1)
    base = analytic_profile()

    def compute_s(compute_scale: float, memory_scale: float, db=measured_db) -> float:
        profile = replace(base, measured_compute_scale=compute_scale,
                          measured_memory_scale=memory_scale)
        return predict(job, profile=profile, measured=db).breakdown.compute_s

    plain, gemms, elementwise, both = (compute_s(1, 1), compute_s(2, 1), compute_s(1, 2),
                                       compute_s(2, 2))
    assert plain < gemms and plain < elementwise
    assert both == pytest.approx(gemms + elementwise - plain)
    assert 1.5 * plain < both <= 2 * plain
    assert compute_s(2, 2, db=None) == compute_s(1, 1, db=None)


def test_fitted_values_and_intervals_respect_the_bounds(fitted):
    for p in fitted.parameters:
        bounds = PARAMETERS[p.name]
        assert bounds.lower <= p.ci_low <= p.value <= p.ci_high <= bounds.upper


def test_a_parameter_pinned_at_a_bound_stays_inside():
    """Runs made with no per-op floor: the fit may not go below 0."""
    runs = tuple(replace(r, measured_step_s=predict(r.job).step_time_s)
                 for r in _synthetic_runs(0.0)[:12])
    result = calibrate(runs, analytic_profile(), ("overhead.op_s", "overhead.step_s"), "zero")
    for p in result.parameters:
        assert p.value >= 0 and (p.ci_low is None or p.ci_low >= 0)


def test_a_parameter_no_run_depends_on_is_fixed_and_says_so():
    """The synthetic jobs have no fused attention (unfused, as vTrain's) and no second
    node."""
    result = calibrate(_synthetic_runs(0.02)[:12], analytic_profile(),
                       ("attention.max_efficiency", "communication.inter_node_efficiency",
                        "overhead.step_s"), "x")
    status = {p.name: p.status for p in result.parameters}
    assert status["attention.max_efficiency"].startswith("fixed: no run depends on it")
    assert status["communication.inter_node_efficiency"].startswith("fixed: no run depends")
    assert status["overhead.step_s"].startswith("fitted")


def test_a_fit_that_does_not_converge_says_so():
    with pytest.raises(Infeasible, match="did not converge"):
        calibrate(_synthetic_runs(0.02), analytic_profile(), tuple(TRUTH), "x",
                  max_evaluations=1)


def test_too_few_runs_is_a_spec_error():
    with pytest.raises(SpecError, match="too few"):
        calibrate(_synthetic_runs(0.02)[:5], analytic_profile(), tuple(TRUTH), "x")


def test_unknown_parameter_is_a_spec_error():
    with pytest.raises(SpecError, match="no such parameter"):
        parameters(["gemm.speed"])


def test_a_changed_parameter_changes_the_prediction():
    """No stale cache: the block and network caches are keyed on the profile."""
    job = _job(256, 2, 1, 2, 1, 1)
    base = analytic_profile()
    first = predict(job, profile=base).step_time_s
    slower = replace(base, op_overhead_s=1e-4, collective_overhead_s=1e-4)
    assert predict(job, profile=slower).step_time_s > first
    assert predict(job, profile=base).step_time_s == first


def test_profile_mapping_round_trips():
    profile = _truth()
    assert profile_from_mapping(profile_mapping(profile)) == profile


# The split ------------------------------------------------------------------------------------


def test_split_rule_is_the_row_hash_parity():
    cells = ["2", "16", "8", "1024", "16", "24", "1024", "1", "1", "2", "372.160408"]
    digest = row_digest(cells)
    assert digest == hashlib.sha256(",".join(cells).encode()).digest()
    assert digest == row_digest(list(cells))  # a function of the contents only


def test_split_is_deterministic_and_independent_of_row_order(tmp_path):
    if not VTRAIN_SINGLE.is_file():
        pytest.skip("vTrain data not found")
    lines = VTRAIN_SINGLE.read_text().splitlines()
    header, rows = lines[0], lines[1:41]
    forward, backward = tmp_path / "a.csv", tmp_path / "b.csv"
    forward.write_text("\n".join([header, *rows]) + "\n")
    backward.write_text("\n".join([header, *reversed(rows)]) + "\n")
    a, b = read_runs(forward), read_runs(backward)
    halves = {tuple(r.row.values()): r.in_calibration_half for r in a}
    assert halves == {tuple(r.row.values()): r.in_calibration_half for r in b}
    assert [r.digest for r in split(a)[0]] == [r.digest for r in split(read_runs(forward))[0]]


def test_vtrain_split_sizes():
    if not VTRAIN_SINGLE.is_file():
        pytest.skip("vTrain data not found")
    calibration, test = split(read_runs(VTRAIN_SINGLE))
    assert (len(calibration), len(test)) == (706, 734)


# Prediction intervals -------------------------------------------------------------------------


def test_band_is_the_5th_and_95th_percentile():
    band = band_of([i / 100 for i in range(101)], "x", calibrated=True)
    assert (band.log_low, band.log_high) == (pytest.approx(0.05), pytest.approx(0.95))


def test_interval_contains_the_prediction_and_narrows_with_measured_share():
    band = ResidualBand(log_low=-0.2, log_high=0.1, runs=10, source="x", calibrated=True)
    low, high = step_band(band, analytic_share=1.0)
    assert (low, high) == (pytest.approx(math.exp(-0.2)), pytest.approx(math.exp(0.1)))
    half = step_band(band, analytic_share=0.0)
    assert low < half[0] <= 1 <= half[1] < high
    biased = ResidualBand(log_low=0.1, log_high=0.5, runs=10, source="x")
    assert step_band(biased, 1.0)[0] == 1.0  # widened to reach the prediction


def test_prediction_carries_the_profiles_interval():
    profile = replace(analytic_profile(), band=ResidualBand(log_low=-0.1, log_high=0.2, runs=5,
                                                            source="x", calibrated=True))
    p = predict(_job(256, 2, 1, 1, 1, 1), profile=profile)
    assert p.step_time_s_low == pytest.approx(p.step_time_s * math.exp(-0.1))
    assert p.step_time_s_high == pytest.approx(p.step_time_s * math.exp(0.2))
    data = p.to_json()
    assert data["step_time_s_low"] <= data["step_time_s"] <= data["step_time_s_high"]
