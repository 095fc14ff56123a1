"""`runtime.launch` and `parasim run`: ranks that work, fail, die or hang; bad input.

Failure cases: the run ends with a MeasurementError naming the rank and the exception line,
within the timeout, and no process is left behind: no child of this test process
(multiprocessing's list and /proc), and no grandchild either (a rank's own child is checked by
its pid). Bad input: exit status 2 and one line on stderr, decided before any process starts
(the launcher's spawning step and the network builder are replaced by tripwires).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from parasim.cli import main  # noqa: E402  (after the importorskip)
from parasim.planner.plan import plan_inputs  # noqa: E402
from parasim.runtime import launch as launch_module  # noqa: E402
from parasim.runtime import netns, processes  # noqa: E402
from parasim.runtime import run as run_module  # noqa: E402
from parasim.runtime.errors import MeasurementError  # noqa: E402
from parasim.runtime.launch import check_launch, launch, process_limit  # noqa: E402
from parasim.simulator.errors import SpecError  # noqa: E402
from tests.runtime import launch_workers as workers  # noqa: E402
from tests.test_cli_errors import REPO, assert_user_error, job_with, run_cli  # noqa: E402
from tests.test_profiler import assert_no_children_left  # noqa: E402

TIMEOUT_S = 60.0  # for runs that should succeed or fail fast
HANG_TIMEOUT_S = 6.0
INTERRUPTED = "parasim: interrupted; no measurement written, every rank stopped"
CLI_WITH_TRAINER = """
import sys
from parasim.runtime import run
run.TRAINER_MODULE, run.TRAINER_FUNCTION = "tests.runtime.launch_workers", sys.argv[1]
from parasim.cli import main
sys.exit(main(sys.argv[2:]))
"""
STOP_SLACK_S = processes.STOP_GRACE_S + processes.SETTLE_S + 3.0  # stopping, reaping, polling


TWO_RANKS = {"model.hidden_size": 256, "model.num_attention_heads": 4, "model.num_kv_heads": 2,
             "model.ffn_hidden_size": 512, "model.vocab_size": 1024, "cluster.num_nodes": 1,
             "cluster.gpus_per_node": 2, "parallel": {"tp": 2}}


def plan_document(**job_changes) -> dict:
    """A plan file's object, as `parasim plan --out` writes it, for a 2 x 8 GPU job (its
    inputs' hashes those of this job and of this parasim's catalogs, as `parasim run` checks)."""
    job = job_with(job_changes)
    return {"schema_version": 1, "created": "2025-01-01T00:00:00+00:00", "objective": "time",
            "job": job, "prediction": {"step_time_s": 1.0}, "inputs": plan_inputs(job)}


def small_plan_document() -> dict:
    """The same for a small model on 2 ranks (tp 2), which any host holds."""
    return plan_document(**TWO_RANKS)


def write_plan(tmp_path: Path, document, name: str = "plan.json") -> Path:
    path = tmp_path / name
    text = document if isinstance(document, str) else json.dumps(document)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def tripwires(monkeypatch) -> list[str]:
    """Fail loudly if a rank would be spawned or a network built; what was attempted."""
    attempts: list[str] = []

    def spawn(*args, **kwargs):
        attempts.append("spawn")
        raise AssertionError("a process was started")

    def build(*args, **kwargs):
        attempts.append("network")
        raise AssertionError("a network was built")

    monkeypatch.setattr(launch_module, "_run", spawn)
    monkeypatch.setattr(netns, "emulated_network", build)
    return attempts


def run_in_process(capsys, *argv) -> tuple[int, list[str]]:
    """`parasim run ARGV` in this process: exit status and stderr lines."""
    status = main(["run", *map(str, argv)])
    return status, capsys.readouterr().err.splitlines()


def assert_one_line(lines: list[str], *fragments: str) -> None:
    assert len(lines) == 1, lines
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def default_sigint() -> None:
    """In a child before it execs: Ctrl-C's default action, as a command typed in a terminal
    gets. A shell without job control starts background commands with SIGINT ignored, and a
    Python process keeps an inherited SIG_IGN: a test suite run as `bash .ci/run &` would
    otherwise interrupt a CLI that cannot be interrupted."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_cli(trainer: str, *argv) -> subprocess.Popen:
    """`parasim run ARGV` in a new process, with `trainer` from launch_workers as the trainer."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", CLI_WITH_TRAINER, trainer, "run",
                             *map(str, argv)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)


def rank_pids(parent: int) -> list[int]:
    """The spawned processes (ranks) whose parent is `parent`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # not a process, or exited meanwhile
        if ppid == str(parent) and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return found


def wait_for(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline_s = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline_s:
            return False
        time.sleep(0.1)
    return True


def interrupt_cli(cli: subprocess.Popen, signum: int, ready: Callable[[], bool]
                  ) -> tuple[list[int], str]:
    """Wait until `ready()`, send `signum`; the ranks it had and its stderr."""
    try:
        assert wait_for(lambda: ready() or cli.poll() is not None, 90), "never got ready"
        assert cli.poll() is None, cli.communicate()
        ranks = rank_pids(cli.pid)
        cli.send_signal(signum)
        _, err = cli.communicate(timeout=30)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    return ranks, err


def assert_gone(pid: int, within_s: float = 5.0) -> None:
    """The process has exited (gone from /proc, or a zombie waiting for init to reap it)."""
    deadline_s = time.monotonic() + within_s
    while time.monotonic() < deadline_s:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return
        if state == "Z":
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} is still running")


# Ranks that work --------------------------------------------------------------------------------


def test_every_rank_returns_its_result_in_rank_order():
    results = launch(workers.allreduce_and_time, 2, {"steps": 3}, TIMEOUT_S)
    assert [r["rank"] for r in results] == [0, 1]
    assert all(len(r["times_s"]) == 3 and min(r["times_s"]) > 0 for r in results)
    assert results[1]["env"] == {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1",
                                 "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "0",
                                 "GLOO_SOCKET_IFNAME": None}
    assert results[0]["pid"] != results[1]["pid"] != os.getpid()
    assert_no_children_left()


# Ranks that fail ----------------------------------------------------------------------------


def test_a_raising_rank_ends_the_run_naming_it_and_leaves_no_grandchild(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    start_s = time.monotonic()
    with pytest.raises(MeasurementError) as failure:
        launch(workers.grandchild_then_raise, 2, {"pid_file": str(pid_file)}, TIMEOUT_S)
    message = str(failure.value)
    assert message.startswith("run of 2 ranks: rank 1 failed: RuntimeError: rank 1 fails with "
                              "a grandchild running"), message  # the cause first
    assert "\n" not in message and "Traceback" in failure.value.detail
    assert time.monotonic() - start_s < TIMEOUT_S
    assert_gone(int(pid_file.read_text()))
    assert_no_children_left()


def test_a_rank_that_exits_ends_the_run_naming_its_status():
    start_s = time.monotonic()
    with pytest.raises(MeasurementError, match=r"^run of 2 ranks: rank 1 exited with code 3"):
        launch(workers.exit_on_rank_1, 2, {}, TIMEOUT_S)
    assert time.monotonic() - start_s < TIMEOUT_S
    assert_no_children_left()


def test_a_hanging_rank_ends_at_the_timeout():
    start_s = time.monotonic()
    with pytest.raises(MeasurementError, match="did not finish within 6 s; ranks still running"):
        launch(workers.hang_on_rank_1, 2, {}, HANG_TIMEOUT_S)
    elapsed_s = time.monotonic() - start_s
    assert HANG_TIMEOUT_S <= elapsed_s < HANG_TIMEOUT_S + STOP_SLACK_S
    assert_no_children_left()


def test_a_rank_that_exits_without_a_result_is_named():
    with pytest.raises(MeasurementError, match="rank 1 exited without a result"):
        launch(workers.exit_quietly, 2, {}, TIMEOUT_S)
    assert_no_children_left()


def test_a_result_that_does_not_pickle_is_an_error_not_a_hang():
    start_s = time.monotonic()
    with pytest.raises(MeasurementError, match=r"rank [01] failed: .*(pickle|Pickl)"):
        launch(workers.unpicklable_result, 2, {}, TIMEOUT_S)
    assert time.monotonic() - start_s < TIMEOUT_S / 2
    assert_no_children_left()


# Checks before anything starts ------------------------------------------------------------------


@pytest.mark.parametrize("nproc", [0, process_limit() + 1, 10_000])
def test_launch_refuses_a_process_count_before_starting(nproc, tripwires):
    with pytest.raises(SpecError, match=f"--nproc={nproc}: .*valid: 1 to {process_limit()}"):
        launch(workers.allreduce_and_time, nproc, {}, TIMEOUT_S)
    assert tripwires == []
    assert_no_children_left()


def test_process_limit_follows_the_cpus():
    assert process_limit() == min(launch_module.MAX_PROCESSES,
                                  launch_module.PROCESSES_PER_CPU * os.cpu_count())
    with pytest.raises(SpecError, match="--timeout=0.0: must be positive"):
        check_launch(1, 0.0)


# `parasim run`: bad input, one line, exit 2, nothing started -------------------------------------


def test_cli_malformed_plan(tmp_path, capsys, tripwires):
    plan = write_plan(tmp_path, '{"schema_version": 1, "job": ')
    status, err = run_in_process(capsys, plan)
    assert status == 2
    assert_one_line(err, "parasim: error: plan=", "is not JSON", "line 1 column",
                    "parasim plan JOB --out PLAN.json")
    assert tripwires == []
    assert_no_children_left()


def test_cli_malformed_plan_in_a_real_process(tmp_path):
    plan = write_plan(tmp_path, "[1, 2")
    assert_user_error(run_cli("run", plan), "is not JSON")


def test_cli_plan_of_another_schema_version(tmp_path, capsys, tripwires):
    plan = write_plan(tmp_path, {**plan_document(), "schema_version": 2})
    status, err = run_in_process(capsys, plan)
    assert status == 2
    assert_one_line(err, "schema_version=2", "another plan format", "(version 1)")
    assert tripwires == []


@pytest.mark.parametrize("document, fragments", [
    ({"schema_version": 1, "job": {}}, ("missing prediction, inputs",)),
    ({"prediction": {}, "inputs": {}, "job": {}}, ("missing schema_version",)),
    ([1, 2], ("is a JSON list, not an object",)),
])
def test_cli_plan_that_is_not_a_plan(tmp_path, capsys, tripwires, document, fragments):
    status, err = run_in_process(capsys, write_plan(tmp_path, document))
    assert status == 2
    assert_one_line(err, *fragments)
    assert tripwires == []


def test_cli_plan_without_a_layout_or_with_a_broken_job(tmp_path, capsys, tripwires):
    document = plan_document()
    del document["job"]["parallel"]
    status, err = run_in_process(capsys, write_plan(tmp_path, document))
    assert status == 2
    assert_one_line(err, "job.parallel=None", "holds no layout")
    status, err = run_in_process(capsys, write_plan(tmp_path, plan_document(**{
        "parallel.tp": 3})))
    assert status == 2
    assert_one_line(err, "parallel.tp=3")
    assert tripwires == []


def test_cli_plan_with_more_ranks_than_this_machine_runs(tmp_path, capsys, tripwires):
    plan = write_plan(tmp_path, plan_document())  # 2 x 8 GPUs: 16 ranks
    if process_limit() >= 16:
        pytest.skip("this machine runs 16 processes")
    status, err = run_in_process(capsys, plan)
    assert status == 2
    assert_one_line(err, "--nproc=16", f"valid: 1 to {process_limit()}")
    status, err = run_in_process(capsys, plan, "--nproc", 5000)
    assert status == 2
    assert_one_line(err, "--nproc=5000")
    assert tripwires == []
    assert_no_children_left()


def test_cli_emulation_without_root(tmp_path, capsys, tripwires, monkeypatch):
    monkeypatch.setattr(netns, "_is_root", lambda: False)
    plan = write_plan(tmp_path, plan_document())
    status, err = run_in_process(capsys, plan, "--nproc", 2, "--emulate-nodes", 2,
                                 "--inter-node-Gbps", 1)
    assert status == 2
    assert_one_line(err, "--emulate-nodes=2", "needs root", "valid: run as root")
    assert tripwires == []
    assert_no_children_left()


@pytest.mark.parametrize("options, fragments", [
    (("--nproc", 3, "--emulate-nodes", 2, "--inter-node-Gbps", 1),
     ("--emulate-nodes=2", "does not divide the 3 processes", "valid: 1, 3")),
    (("--nproc", 2, "--emulate-nodes", 2), ("--emulate-nodes=2", "needs both")),
    (("--nproc", 2, "--emulate-nodes", 2, "--inter-node-Gbps", 0),
     ("--inter-node-Gbps=0", "positive")),
    (("--nproc", 2, "--emulate-nodes", 0, "--inter-node-Gbps", 1), ("--emulate-nodes=0",)),
    (("--nproc", 2, "--steps", 0), ("--steps=0",)),
    (("--nproc", 2, "--warmup", -1), ("--warmup=-1",)),
    (("--nproc", 2, "--timeout", 0), ("--timeout=0",)),
])
def test_cli_bad_options(tmp_path, capsys, tripwires, options, fragments):
    plan = write_plan(tmp_path, plan_document())
    status, err = run_in_process(capsys, plan, *options)
    assert status == 2
    assert_one_line(err, *fragments)
    assert tripwires == []


@pytest.mark.parametrize("tamper, fragment", [
    (lambda d: d["job"]["training"].update(global_batch_size=128),
     "its job was edited after planning (job_sha256 does not match the job it holds)"),
    (lambda d: d["job"]["parallel"].update(tp=1), "its job was edited after planning"),
    (lambda d: d["inputs"].update(job_sha256="0" * 64), "its job was edited after planning"),
    (lambda d: d["inputs"].update({"gpus.yaml_sha256": "0" * 64}),
     "gpus.yaml changed since it was planned (gpus.yaml_sha256 differs)"),
    (lambda d: d["inputs"].pop("analytic.yaml_sha256"), "analytic.yaml changed since"),
])
def test_cli_plan_that_changed_since_planning(tmp_path, capsys, tripwires, tamper, fragment):
    """Issue 17: a plan whose job was edited, or whose hashes were changed, ran without a
    word. It is refused, saying what changed; --force runs it (here the next check, of the
    emulation options, speaks), after a warning."""
    document = small_plan_document()
    tamper(document)
    plan = write_plan(tmp_path, document)
    status, err = run_in_process(capsys, plan, "--nproc", 2)
    assert status == 2
    assert_one_line(err, f"parasim: error: plan='{plan}': ", fragment,
                    "valid: plan the job again", "or --force to run it as it is")
    status, err = run_in_process(capsys, plan, "--nproc", 2, "--force", "--emulate-nodes", 2)
    assert status == 2 and len(err) == 2, err
    assert err[0].startswith(f"parasim: warning: {plan}: ") and "(--force)" in err[0]
    assert "--emulate-nodes=2" in err[1] and "needs both" in err[1]
    assert tripwires == []


def test_cli_measurement_that_exists_is_kept(tmp_path, capsys, tripwires):
    out = tmp_path / "MEASUREMENT.json"
    out.write_text("mine", encoding="utf-8")
    status, err = run_in_process(capsys, write_plan(tmp_path, small_plan_document()), "--nproc",
                                 2, "--out", out)
    assert status == 2
    assert_one_line(err, f"--out='{out}'", "exists; refusing to overwrite it", "--force")
    assert out.read_text(encoding="utf-8") == "mine" and tripwires == []


def test_cli_without_the_trainer(tmp_path, capsys, tripwires, monkeypatch):
    monkeypatch.setattr(run_module, "TRAINER_MODULE", "parasim.runtime.no_such_trainer")
    status, err = run_in_process(capsys, write_plan(tmp_path, small_plan_document()), "--nproc", 2)
    assert status == 2
    assert_one_line(err, "parasim run needs the runtime trainer (runtime/train.py), "
                    "which this installation lacks")
    assert tripwires == []


# `parasim run` end to end, with a stand-in trainer ---------------------------------------------


@pytest.fixture
def stand_in_trainer(monkeypatch):
    """These tests check the launcher, not training: their stand-in trainer only all-reduces
    and sleeps (`tests/runtime/launch_workers.py`)."""
    monkeypatch.setattr(run_module, "TRAINER_MODULE", "tests.runtime.launch_workers")
    monkeypatch.setattr(run_module, "TRAINER_FUNCTION", "fake_train_worker")


def test_cli_run_writes_the_measurement(tmp_path, capsys, stand_in_trainer):
    plan = write_plan(tmp_path, small_plan_document())
    out = tmp_path / "MEASUREMENT.json"
    status = main(["run", str(plan), "--nproc", "2", "--steps", "4", "--warmup", "1",
                   "--out", str(out)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert captured.out.startswith("measured 4 steps on 2 ranks: step time ")
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["schema_version"] == 1 and data["world_size"] == 2 and data["steps"] == 4
    assert data["plan_sha256"] == hashlib.sha256(plan.read_bytes()).hexdigest()
    assert data["warmup_steps"] == 1 and data["emulation"] is None
    per_step = [max(steps) for steps in zip(*(r["step_times_s"] for r in data["ranks"]))]
    assert data["step_times_s"] == per_step
    assert data["step_time_s"] == statistics.median(per_step)
    assert data["step_time_spread_s"]["p10"] <= data["step_time_s"] <= \
        data["step_time_spread_s"]["p90"]
    assert data["peak_bytes"] == 2e6 and data["ranks"][0]["peak_bytes"] == 1e6
    assert set(data["ranks"][1]["phase_s"]) == {"step"}
    assert_no_children_left()


def test_cli_run_of_a_failing_trainer(tmp_path, capsys, monkeypatch, stand_in_trainer):
    monkeypatch.setattr(run_module, "TRAINER_FUNCTION", "raise_on_rank_1")
    out = tmp_path / "MEASUREMENT.json"
    status, err = run_in_process(capsys, write_plan(tmp_path, small_plan_document()), "--nproc", 2,
                                 "--out", out)
    assert status == 1
    assert err[0].startswith("parasim: error: run of 2 ranks: rank 1 failed: ValueError: "
                             "rank 1 fails on purpose")
    assert len(err) == 1 and not out.exists()
    assert_no_children_left()


def test_cli_sigterm_stops_every_rank(tmp_path):
    out = tmp_path / "MEASUREMENT.json"
    cli = start_cli("hang_on_rank_1", write_plan(tmp_path, small_plan_document()), "--nproc", 2,
                    "--timeout", 120, "--out", out)
    ranks, err = interrupt_cli(cli, signal.SIGTERM, lambda: len(rank_pids(cli.pid)) == 2)
    assert cli.returncode == 130, err
    assert err.strip().splitlines()[-1] == INTERRUPTED
    assert len(ranks) == 2 and not out.exists()
    for pid in ranks:
        assert_gone(pid)
