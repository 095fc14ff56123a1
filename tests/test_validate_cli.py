"""`parasim validate` without running anything: the suite, the local cluster, bad options.

Torch-free: the suite and its cluster are data and arithmetic; bad options end as one line and
exit status 2 before the runtime is imported. The end-to-end run is in
tests/runtime/test_validate.py (slow).
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from parasim.host_load import CpuSample, other_load_cores
from parasim.suite import load_suite, local_cluster, local_device, p2p_link
from parasim.validate_cli import _result, layout_words, suite_job
from parasim.runtime.measure import Measurement, RankMeasurement
from parasim.simulator.errors import SpecError
from parasim.simulator.layout import Layout
from parasim.simulator.predict import predict
from parasim.simulator.profile import load_profile, mismatches
from tests.profile_fixtures import GEMM_FLOP_PER_S, write_profile
from tests.test_cli_errors import assert_user_error, run_cli

GiB = 2**30


@pytest.fixture
def cpu_profile(tmp_path):
    """A profile of a fake `cpu`: GEMMs at 1 TFLOP/s, copies at 1e10 elements/s, p2p at 10 GB/s
    after 100 us."""
    folder = write_profile(tmp_path / "cpu", gpu="cpu", dtype="fp32")
    with (folder / "elementwise.csv").open("a", newline="") as f:
        csv.writer(f).writerows([["copy", e, e / 1e10, e / 1e10] for e in (2**16, 2**20)])
    with (folder / "collectives.csv").open("a", newline="") as f:
        csv.writer(f).writerows([["p2p", 2, b, 1e-4 + b / 1e10] for b in (2**10, 2**30)])
    return load_profile(folder)


def test_the_local_suite():
    suite = load_suite("local")
    names = [job.name for job in suite.jobs]
    assert len(names) == len(set(names)) >= 10
    assert {job.world_size for job in suite.jobs} == {2}
    emulated = {job.name: job for job in suite.jobs if job.nodes > 1}
    assert list(emulated) == ["dp2-2nodes", "pp2-2nodes"]
    # the data-parallel all-reduce from this process's launcher, the pipeline's sends from
    # each node's own (`parasim run --nnodes`): both cross the emulated link
    assert (emulated["dp2-2nodes"].launcher, emulated["pp2-2nodes"].launcher) == \
        ("local", "rendezvous")
    assert emulated["pp2-2nodes"].raw["parallel"]["pp"] == emulated["pp2-2nodes"].nodes
    parallel = [job.raw["parallel"] for job in suite.jobs]
    for needed in ({"tp": 2}, {"pp": 2, "schedule": "gpipe"}, {"pp": 2, "schedule": "1f1b"},
                   {"cp": 2}, {"dp": 2, "ep": 2}, {"dp": 2, "zero_stage": 1},
                   {"dp": 2, "zero_stage": 2}, {"dp": 2, "zero_stage": 3},
                   {"pp": 2, "schedule": "zero-bubble"}, {"cp": 2, "cp_style": "ulysses"}):
        assert any(needed.items() <= p.items() for p in parallel), needed
    assert {p.get("recompute") for p in parallel} >= {"full", "selective"}
    assert any(p.get("schedule") == "interleaved" and p.get("vpp") == 2 for p in parallel)
    assert any(p.get("sequence_parallel") for p in parallel)


def test_the_local_device_comes_from_the_profile(cpu_profile):
    device = local_device(cpu_profile, ranks=2)
    assert device["name"] == "cpu"
    assert device["peak_fp32_tflops"] == pytest.approx(GEMM_FLOP_PER_S / 1e12)
    assert device["memory_bandwidth_TBps"] == pytest.approx(2 * 4 * 1e10 / 1e12)  # r + w, fp32
    rate, latency = p2p_link(cpu_profile)
    assert rate == pytest.approx(2**30 / (1e-4 + 2**30 / 1e10))
    assert latency == pytest.approx(1e-4 + 2**10 / 1e10)


def test_the_calibration_suite_shares_no_job_with_the_local_suite():
    """Calibrated on one suite, judged on the other: no calibration job is a local job (its
    model or its training differ), and the same kinds of parallelism are seen at other sizes."""
    local, calibration = load_suite("local"), load_suite("local-calibration")
    tested = [(j.raw["model"], j.raw["training"]) for j in local.jobs]
    for job in calibration.jobs:
        assert (job.raw["model"], job.raw["training"]) not in tested, job.name
        assert job.world_size == 2 and job.nodes == 1
    axes = {axis for job in calibration.jobs for axis, degree in job.raw["parallel"].items()
            if axis in ("tp", "pp", "cp", "ep") and degree > 1}
    assert axes == {"tp", "pp", "cp", "ep"}
    assert len(calibration.jobs) >= 2 * 4  # two runs per parameter of the default local fit


@pytest.mark.parametrize("suite", ["local", "local-calibration"])
def test_every_suite_job_builds_on_the_local_cluster_without_a_mismatch(cpu_profile, suite):
    for job in load_suite(suite).jobs:
        raw, built = suite_job(cpu_profile, job)
        assert built.cluster.world_size == job.world_size == built.layout.world_size
        assert len(built.cluster.node_groups[0].gpu.name) and raw["cluster"]["num_nodes"] == \
            job.nodes
        gpus = {group.gpu.name for group in built.cluster.node_groups}
        assert mismatches(cpu_profile, gpus, built.training.precision) == []


def test_the_phases_are_the_busiest_ranks(cpu_profile):
    """A pipeline's first stage waits longest for the slower last stage; the report compares
    the last stage's phases, the rank the predicted breakdown describes."""
    job = next(j for j in load_suite("local").jobs if j.name == "pp2-1f1b")
    _, planned = suite_job(cpu_profile, job)
    first = RankMeasurement(step_times_s=(1.0, 1.0), peak_bytes=1.0, phase_s={
        "forward_s": 0.2, "backward_s": 0.4, "p2p_wait_s": 0.35, "optimizer_s": 0.01})
    last = RankMeasurement(step_times_s=(1.0, 1.1), peak_bytes=2.0, phase_s={
        "forward_s": 0.3, "backward_s": 0.6, "p2p_wait_s": 0.05, "optimizer_s": 0.02})
    measured = Measurement(plan_path="plan.json", plan_sha256="0", warmup_steps=1,
                           ranks=(first, last))
    row = _result(job, planned, predict(planned, measured=cpu_profile), measured)
    assert row.measured_phases_s == {"forward": 0.3, "backward": 0.6, "p2p_wait": 0.05,
                                     "optimizer": 0.02}


def test_the_emulated_link_is_the_measured_rate(cpu_profile):
    """The model's effective rate (line rate x its efficiency) is the rate that was measured."""
    from parasim.simulator.cost.profile import analytic_profile

    cluster = local_cluster(cpu_profile, 1, nodes=2, inter_node_bits_per_s=0.95e9)
    effective = cluster["inter_node"]["bandwidth_Gbps"] * analytic_profile().inter_node_efficiency
    assert effective == pytest.approx(0.95)
    assert cluster["gpu"]["memory_GiB"] > 0


def test_layout_words():
    assert layout_words(Layout(tp=2, dp=1, sequence_parallel=True), 8) == \
        "tp 2, sequence-parallel, 8 micro-batches"
    assert layout_words(Layout(pp=2, vpp=2, dp=1, schedule="interleaved"), 8) == \
        "pp 2, vpp 2, interleaved, 8 micro-batches"
    assert layout_words(Layout(dp=2, zero_stage=1, recompute="full"), 4) == \
        "dp 2, recompute full, ZeRO-1, 4 micro-batches"


def test_other_load_is_host_busy_time_minus_ours():
    before = CpuSample(wall_s=10.0, host_busy_s=100.0, ours_s=5.0)
    after = CpuSample(wall_s=12.0, host_busy_s=104.5, ours_s=8.0)
    assert other_load_cores(before, after) == pytest.approx(0.75)  # (4.5 - 3) / 2 s
    assert other_load_cores(before, CpuSample(12.0, 102.0, 8.0)) == 0.0  # never negative
    assert other_load_cores(None, after) is None


def test_a_suite_file_with_a_bad_job(tmp_path):
    path = tmp_path / "suite.yaml"
    path.write_text("jobs:\n  - {name: a, model: m, parallel: {dp: 2}, nodes: 2}\n")
    with pytest.raises(SpecError, match="inter_node_Gbps"):
        load_suite(str(path))
    path.write_text("jobs:\n  - {name: a, model: m, parallel: {dp: 2}, gpus: 2}\n")
    with pytest.raises(SpecError, match="unknown suite job key"):
        load_suite(str(path))
    for launcher, nodes in (("rendezvous", ""), ("torchrun", ", nodes: 2, inter_node_Gbps: 1")):
        path.write_text(f"jobs:\n  - {{name: a, model: m, parallel: {{dp: 2}}{nodes}, "
                        f"launcher: {launcher}}}\n")
        with pytest.raises(SpecError, match=f"jobs\\[0\\].launcher={launcher!r}: is local or, "
                           "for emulated nodes, rendezvous"):
            load_suite(str(path))


def test_each_job_runs_through_its_launcher(tmp_path):
    """A rendezvous job goes to runtime.run_nodes, the others to runtime.run; both get the
    plan read back from its file and the options."""
    from types import SimpleNamespace

    from parasim.validate_cli import Prepared, ValidateOptions, _measure

    calls = []
    runtime = SimpleNamespace(
        run=SimpleNamespace(measure_plan=lambda plan, **kw: calls.append(("run", plan, kw)),
                            netns=SimpleNamespace(Emulation=lambda **kw: kw)),
        run_nodes=SimpleNamespace(
            measure_plan_on_nodes=lambda plan, **kw: calls.append(("nodes", plan, kw))))
    ctx = SimpleNamespace(options=ValidateOptions(steps=3, warmup=1, timeout_s=60),
                          runtime=runtime)
    ready = Prepared("the plan", {}, None, None, None)
    jobs = {job.name: job for job in load_suite("local").jobs}
    for name in ("dp2", "dp2-2nodes", "pp2-2nodes"):
        _measure(ctx, jobs[name], ready)
    link = {"nodes": 2, "inter_node_bits_per_s": 1e9}
    common = {"steps": 3, "warmup_steps": 1, "timeout_s": 60}
    assert calls == [("run", "the plan", {**common, "nproc": 2, "emulation": None}),
                     ("run", "the plan", {**common, "nproc": 2, "emulation": link}),
                     ("nodes", "the plan", {**common, "emulation": link})]


@pytest.mark.parametrize("args, fragments", [
    (["--steps", "0"], ["--steps=0", "at least one step"]),
    (["--warmup", "-1"], ["--warmup=-1"]),
    (["--repeat", "0"], ["--repeat=0", "at least once"]),
    (["--timeout", "0"], ["--timeout=0"]),
    (["--suite", "no-such-suite"], ["--suite='no-such-suite'", "no such suite", "local"]),
    (["--profile", "no/such/profile"], ["--profile='no/such/profile'", "no such profile"]),
    (["--render", "no/such/report"], ["has no results.csv"]),
    (["--suite"], ["expected one argument"]),
])
def test_bad_options_are_one_line_and_exit_2(args, fragments):
    assert_user_error(run_cli("validate", *args), *fragments)


def test_a_fitted_profile_alone_is_refused(tmp_path):
    """A fitted profile scales a measured one: validate needs the measured profile too."""
    fitted = tmp_path / "fitted"
    fitted.mkdir()
    (fitted / "profile.yaml").write_text("gemm: {}\n")
    assert_user_error(run_cli("validate", "--profile", fitted, "--out", tmp_path / "out"),
                      "is a fitted profile", "measured profile it was fitted over")


def test_runs_csv_is_a_calibration_runs_file_of_the_measured_jobs(cpu_profile, tmp_path):
    """What validate writes for `parasim calibrate`: each measured job as it was predicted
    (jobs/NAME.json) and its measured step; a failed job is left out."""
    import json

    from parasim.validate_cli import JOBS, RUNS, _write_runs
    from parasim.simulator.calibration.runs import read_runs
    from parasim.simulator.validation import JobResult

    suite = {j.name: j for j in load_suite("local-calibration").jobs}
    (tmp_path / JOBS).mkdir()
    results = []
    for name, measured in (("tp2-narrow-mb2", 0.5), ("pp2-narrow-1f1b", 0.75)):
        raw, built = suite_job(cpu_profile, suite[name])
        (tmp_path / JOBS / f"{name}.json").write_text(json.dumps(raw))
        results.append(JobResult(name=name, layout="", predicted_step_s=0.4,
                                 predicted_peak_bytes=1.0, measured_step_s=measured))
    results.append(JobResult(name="cp2-wide-s1024", layout="", predicted_step_s=None,
                             predicted_peak_bytes=None, failure="it hung"))
    _write_runs(tmp_path, results)
    runs = read_runs(tmp_path / RUNS)
    assert [r.measured_step_s for r in runs] == [0.5, 0.75]
    for run, name in zip(runs, ("tp2-narrow-mb2", "pp2-narrow-1f1b")):
        _, built = suite_job(cpu_profile, suite[name])
        assert run.job.layout == built.layout and run.job.model == built.model
        assert predict(run.job, measured=cpu_profile).step_time_s == \
            predict(built, measured=cpu_profile).step_time_s


def test_an_out_folder_that_is_not_empty_is_refused(tmp_path):
    (tmp_path / "README.md").write_text("earlier report")
    assert_user_error(run_cli("validate", "--out", tmp_path), "not empty", "--force")
    assert (tmp_path / "README.md").read_text() == "earlier report"


def test_render_rebuilds_a_report_from_its_data(tmp_path):
    from tests.test_validation import FACTS, RESULTS
    from parasim.simulator.validation_report import write_report

    write_report(Path(tmp_path), RESULTS, FACTS)
    (tmp_path / "README.md").unlink()
    result = run_cli("validate", "--render", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Spearman 1.00" in result.stdout
    assert (tmp_path / "README.md").is_file()


def test_the_link_note_says_which_launcher_ran_the_nodes():
    from parasim.validate_cli import _link_note

    jobs = {job.name: job for job in load_suite("local").jobs}
    link = {"inter_node_Gbps": 1.0, "measured_inter_node_Gbps": 0.9587}
    assert _link_note(jobs["dp2-2nodes"], link) == (
        "dp2-2nodes: 2 emulated nodes, link 1 Gbit/s line rate, 0.959 Gbit/s measured; "
        "predicted with the measured rate")
    assert _link_note(jobs["pp2-2nodes"], link) == (
        "pp2-2nodes: 2 emulated nodes, each running its own launcher (`parasim run "
        "--nnodes`, torch's rendezvous), link 1 Gbit/s line rate, 0.959 Gbit/s measured; "
        "predicted with the measured rate")
