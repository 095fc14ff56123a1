"""Multi-node runs (`parasim run --nnodes N --node-rank R --rdzv-endpoint HOST:PORT`) and the
Slurm script (`--export slurm`).

Fast: the node options against the plan (runtime/nodes.py), every bad flag as one line with
exit status 2 before anything starts, and the sbatch script's text (valid bash, `bash -n`).
Slow: two nodes, each its own `parasim run` in its own network namespace (runtime/netns.py: a
bridge joins them, 10.213.0.1 and .2, only inside the namespaces made here), meeting at node
0's address through torch's launcher; the one measurement they write holds the losses of the
same plan run on one machine. Then the failures: a node that nobody joins, a rank that raises,
Ctrl-C.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from parasim.runtime import netns
from parasim.runtime.nodes import DEFAULT_PORT, NodeSpec, parse_endpoint, split_world
from parasim.simulator.errors import SpecError
from tests.test_cli_errors import REPO, job_with

torch = pytest.importorskip("torch")

from parasim.cli import main  # noqa: E402  (after the importorskip)
from parasim.planner.plan import plan_inputs  # noqa: E402
from tests.runtime.test_launch import (CLI_WITH_TRAINER, INTERRUPTED, assert_gone,  # noqa: E402
                                       default_sigint, interrupt_cli, rank_pids, wait_for)

TINY = {"model": {"name": "tiny", "num_layers": 4, "hidden_size": 64, "num_attention_heads": 4,
                  "num_kv_heads": 2, "ffn_hidden_size": 176, "vocab_size": 256},
        "cluster.num_nodes": 1, "cluster.gpus_per_node": 2,
        "training": {"seq_length": 32, "global_batch_size": 8, "precision": "fp32"}}
STEPS = ("--steps", "3", "--warmup", "1")
RUN_TIMEOUT_S = 240


def write_plan(folder: Path, parallel: dict, name: str = "plan.json", **changes) -> Path:
    """A plan file as `parasim plan --out` writes it, for the tiny model."""
    job = job_with({**TINY, "parallel": parallel, **changes})
    document = {"schema_version": 1, "created": "2025-01-01T00:00:00+00:00",
                "objective": "time", "job": job, "prediction": {"step_time_s": 1.0},
                "inputs": plan_inputs(job)}
    path = folder / name
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def run_in_process(capsys, *argv) -> tuple[int, list[str], str]:
    status = main(["run", *map(str, argv)])
    captured = capsys.readouterr()
    return status, captured.err.splitlines(), captured.out


# The node options (torch-free) ------------------------------------------------------------------


def test_ranks_per_node_default_to_the_plans_gpus_per_node_capped_to_the_world():
    assert split_world(16, 8, nnodes=2) == (2, 8)
    assert split_world(4, 8, nnodes=2) == (2, 2)  # capped: each node runs world / N
    assert split_world(16, 8) == (2, 8)  # --export without --nnodes: whole nodes
    assert split_world(12, 8) == (2, 6)  # 8 does not divide 12: the largest divisor below
    assert split_world(8, 8, nnodes=4, nproc_per_node=2) == (4, 2)


@pytest.mark.parametrize("kwargs, fragments", [
    ({"nnodes": 3}, ("--nnodes=3: does not divide the plan's 4 ranks", "valid: 1, 2, 4")),
    ({"nnodes": 2, "nproc_per_node": 4},
     ("--nproc-per-node=4: 2 nodes x 4 ranks is not the plan's tp·cp·dp·pp = 4",
      "--nproc-per-node 2")),
    ({"nnodes": 0}, ("--nnodes=0: must be at least 1",)),
    ({"nnodes": 2, "nproc_per_node": 0}, ("--nproc-per-node=0: must be at least 1",)),
    ({"nproc_per_node": 3}, ("--nproc-per-node=3: does not divide the plan's 4 ranks",)),
])
def test_a_world_the_nodes_do_not_make_is_one_line_naming_what_to_pass(kwargs, fragments):
    with pytest.raises(SpecError) as raised:
        split_world(4, 8, **kwargs)
    for fragment in fragments:
        assert fragment in str(raised.value)


def test_node_spec_orders_the_global_ranks_by_node_rank():
    node = NodeSpec.of(world_size=16, gpus_per_node=8, nnodes=2, node_rank=1,
                       endpoint="node001:29500")
    assert (node.first_rank, node.nproc_per_node, node.world_size) == (8, 8, 16)
    assert node.endpoint == "node001:29500"
    with pytest.raises(SpecError, match=r"--node-rank=2: is too large \(at most 1\)"):
        NodeSpec.of(world_size=16, gpus_per_node=8, nnodes=2, node_rank=2, endpoint="h:1")


@pytest.mark.parametrize("text, expected", [
    ("node001:29500", ("node001", 29500)), ("10.213.0.1:1", ("10.213.0.1", 1)),
    ("[fe80::1]:29500", ("fe80::1", 29500)), ("a-b.example.org:65535", ("a-b.example.org", 65535)),
])
def test_endpoints_are_host_colon_port(text, expected):
    assert parse_endpoint(text) == expected


@pytest.mark.parametrize("text, why", [
    ("node001", "is not HOST:PORT"), (":29500", "is not HOST:PORT"),
    ("node001:", "is not HOST:PORT"), ("node001:0", "port 0 is not a TCP port"),
    ("node001:70000", "port 70000 is not a TCP port"), ("no de:1", "is not HOST:PORT"),
    ("[zz::1]:1", "is not an IPv6 address"), ("fe80::1:29500", "is not HOST:PORT"),
    ("-bad:1", "is not a host name"),
])
def test_a_malformed_endpoint_is_one_line(text, why):
    with pytest.raises(SpecError, match=f"--rdzv-endpoint=.*{why}"):
        parse_endpoint(text)


# The command line: bad input is one line, exit 2, nothing started ------------------------------


@pytest.mark.parametrize("flags, fragments", [
    (["--nnodes", "2", "--node-rank", "2", "--rdzv-endpoint", "h:1"],
     ["--node-rank=2: is too large"]),
    (["--nnodes", "2", "--node-rank", "-1", "--rdzv-endpoint", "h:1"],
     ["--node-rank=-1: must be at least 0"]),
    (["--nnodes", "2", "--node-rank", "0", "--rdzv-endpoint", "h"], ["is not HOST:PORT"]),
    (["--nnodes", "2", "--node-rank", "0", "--rdzv-endpoint", "h:99999"],
     ["port 99999 is not a TCP port"]),
    (["--nnodes", "3", "--node-rank", "0", "--rdzv-endpoint", "h:1"],
     ["--nnodes=3: does not divide the plan's 2 ranks", "valid: 1, 2"]),
    (["--nnodes", "2", "--node-rank", "0", "--rdzv-endpoint", "h:1", "--nproc-per-node", "2"],
     ["2 nodes x 2 ranks is not the plan's tp·cp·dp·pp = 2", "--nproc-per-node 1"]),
    (["--nnodes", "2", "--rdzv-endpoint", "h:1"],
     ["--nnodes=2: a multi-node run needs --node-rank too"]),
    (["--nnodes", "2", "--node-rank", "0"],
     ["--nnodes=2: a multi-node run needs --rdzv-endpoint too"]),
    (["--node-rank", "0"], ["--node-rank=0: is for a multi-node run"]),
    (["--nproc-per-node", "2"], ["--nproc-per-node=2: is for a multi-node run"]),
    (["--nnodes", "2", "--node-rank", "0", "--rdzv-endpoint", "h:1", "--nproc", "2"],
     ["--nproc=2: is for a run on this machine alone, not with --nnodes"]),
    (["--nnodes", "2", "--node-rank", "0", "--rdzv-endpoint", "h:1", "--emulate-nodes", "2"],
     ["--emulate-nodes=2: is for a run on this machine alone"]),
    (["--nnodes", "1", "--node-rank", "0", "--rdzv-endpoint", "h:1", "--timeout", "0"],
     ["--timeout=0"]),
    (["--nnodes", "1", "--node-rank", "0", "--rdzv-endpoint", "h:1", "--steps", "0"],
     ["--steps=0"]),
    (["--export", "slurm", "--node-rank", "1"], ["--node-rank=1: is set by the script"]),
    (["--export", "slurm", "--nnodes", "3"], ["--nnodes=3: does not divide"]),
])
def test_bad_node_flags_are_one_line_and_start_nothing(tmp_path, capsys, monkeypatch, flags,
                                                       fragments):
    from parasim.runtime import multinode
    monkeypatch.setattr(multinode, "elastic_launch", _tripwire)
    plan = write_plan(tmp_path, {"dp": 2})
    status, err, _ = run_in_process(capsys, plan, *flags, "--out", tmp_path / "m.json")
    assert status == 2 and len(err) == 1, err
    for fragment in fragments:
        assert fragment in err[0], (fragment, err[0])
    assert not (tmp_path / "m.json").exists() and not (tmp_path / "run.sbatch").exists()


def _tripwire(*args, **kwargs):
    raise AssertionError("a node was launched")


def test_only_node_0_refuses_an_existing_out(tmp_path, capsys, monkeypatch):
    """The other nodes write nothing, so their --out is no reason to stop."""
    from parasim.runtime import multinode
    monkeypatch.setattr(multinode, "measure_on_node", lambda *a, **k: None)
    plan, out = write_plan(tmp_path, {"dp": 2}), tmp_path / "m.json"
    out.write_text("{}")
    flags = ["--nnodes", "2", "--rdzv-endpoint", "h:1", "--out", out]
    status, err, _ = run_in_process(capsys, plan, *flags, "--node-rank", "0")
    assert status == 2 and "--out=" in err[0] and "exists" in err[0]
    status, err, printed = run_in_process(capsys, plan, *flags, "--node-rank", "1")
    assert status == 0 and err == []
    assert printed.strip() == "node 1 of 2: ranks 1 to 1 done; node 0 writes the measurement"
    assert out.read_text() == "{}"


# --export slurm ----------------------------------------------------------------------------------


def test_the_sbatch_script_starts_one_parasim_per_node_at_the_head_node(tmp_path, capsys):
    plan = write_plan(tmp_path, {"dp": 4, "tp": 4}, **{"cluster.num_nodes": 2,
                                                        "cluster.gpus_per_node": 8})
    script = tmp_path / "run.sbatch"
    status, err, printed = run_in_process(capsys, plan, "--export", "slurm", "--out", script,
                                          "--steps", "5", "--timeout", "900")
    assert status == 0, err
    assert printed.strip() == f"wrote {script}: 2 nodes x 8 ranks; submit it with " \
        f"`sbatch {script}`"
    text = script.read_text()
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    for directive in ("--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=8",
                      "--time=0:20:00"):  # 900 s + 300 s of start-up, in whole minutes
        assert f"#SBATCH {directive}" in lines
    first_command = next(i for i, line in enumerate(lines) if line and not line.startswith("#"))
    assert all(not line.startswith("#SBATCH") for line in lines[first_command:])
    assert 'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)' in lines
    assert f'export PARASIM_ENDPOINT="$head_node:${{PARASIM_PORT:-{DEFAULT_PORT}}}"' in lines
    srun = lines[-1]
    assert srun.startswith("srun --nodes=2 --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c '")
    assert (f'exec "$PARASIM" run {plan} --nnodes "$SLURM_NNODES" --node-rank "$SLURM_NODEID" '
            '--rdzv-endpoint "$PARASIM_ENDPOINT" --nproc-per-node 8 --steps 5 --warmup 2 '
            '--timeout 900 --out "$PARASIM_OUT"') in srun
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0


def test_the_sbatch_script_runs_the_node_command_with_each_nodes_rank(tmp_path, capsys):
    """The script under stand-ins for scontrol and srun (two tasks, SLURM_NODEID 0 and 1) and
    for parasim (prints its arguments): each node gets its own rank and the head's address."""
    plan = write_plan(tmp_path, {"dp": 2}, name="my plan.json")
    script = tmp_path / "run.sbatch"
    assert run_in_process(capsys, plan, "--export", "slurm", "--out", script, "--nnodes", "2",
                          "--shrink")[0] == 0
    tools = tmp_path / "bin"
    tools.mkdir()
    # a long host list: a reader that stops at the first line would SIGPIPE scontrol
    _tool(tools / "scontrol", 'printf "gpu-a17\\ngpu-a18\\n"; seq 200000')
    _tool(tools / "srun", 'while [ "${1#-}" != "$1" ]; do shift; done\n'
          'for id in 0 1; do SLURM_NODEID=$id "$@"; done')
    _tool(tools / "fake-parasim", 'echo "$@"')
    env = {**os.environ, "PATH": f"{tools}:{os.environ['PATH']}", "SLURM_NNODES": "2",
           "SLURM_JOB_NODELIST": "gpu-a[17-18]", "PARASIM": str(tools / "fake-parasim")}
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    common = "--rdzv-endpoint gpu-a17:29500 --nproc-per-node 1 --steps 10 --warmup 2 " \
        "--timeout 600 --out MEASUREMENT.json --shrink"
    assert done.stdout.splitlines() == [
        f"run {plan} --nnodes 2 --node-rank {rank} {common}" for rank in (0, 1)]


def _tool(path: Path, body: str) -> None:
    path.write_text(f"#!/bin/bash\n{body}\n")
    path.chmod(0o755)


def test_the_script_is_not_overwritten_without_force(tmp_path, capsys):
    plan, script = write_plan(tmp_path, {"dp": 2}), tmp_path / "run.sbatch"
    script.write_text("mine")
    status, err, _ = run_in_process(capsys, plan, "--export", "slurm", "--out", script)
    assert status == 2 and "exists; refusing to overwrite it" in err[0]
    assert script.read_text() == "mine"
    assert run_in_process(capsys, plan, "--export", "slurm", "--out", script, "--force")[0] == 0
    assert script.read_text().startswith("#!/bin/bash")


def test_export_writes_run_sbatch_by_default(tmp_path, capsys, monkeypatch):
    plan = write_plan(tmp_path, {"dp": 2})
    monkeypatch.chdir(tmp_path)
    assert run_in_process(capsys, plan, "--export", "slurm")[0] == 0
    assert (tmp_path / "run.sbatch").exists() and not (tmp_path / "MEASUREMENT.json").exists()


# Two nodes in two network namespaces (slow; root) -----------------------------------------------


def _can_emulate() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "needs iproute2 (ip, tc)"
    return None


@pytest.fixture
def two_namespaces():
    """Two namespaces joined by a bridge (node k at 10.213.0.<k+1>); skips where the kernel
    refuses them."""
    reason = _can_emulate()
    if reason:
        pytest.skip(reason)
    try:
        with netns.emulated_network(netns.Emulation(nodes=2, inter_node_bits_per_s=10e9)) \
                as network:
            yield network
    except SpecError as err:
        if "not permitted" in str(err) or "Permission denied" in str(err):
            pytest.skip(f"the kernel refuses network namespaces here: {err}")
        raise


def _node_command(namespace: str, plan: Path, rank: int, endpoint: str, out: Path,
                  *extra: str, trainer: str | None = None) -> list[str]:
    """`parasim run` as node `rank`, inside `namespace` (`ip netns exec`)."""
    python = ["-c", CLI_WITH_TRAINER, trainer] if trainer else ["-m", "parasim"]
    return ["ip", "netns", "exec", namespace, sys.executable, *python, "run", str(plan),
            "--nnodes", "2", "--node-rank", str(rank), "--rdzv-endpoint", endpoint,
            "--out", str(out), *extra]


def _node_env(quiet: bool = False) -> dict[str, str]:
    """gloo on the namespace's own link (the host name resolves to no address there). `quiet`:
    torch's C++ warnings off, as `parasim run` sets them before it imports torch (a stand-in
    trainer imports torch first)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "GLOO_SOCKET_IFNAME": netns.INTERFACE}
    return {**env, "TORCH_CPP_LOG_LEVEL": "FATAL"} if quiet else env


def _start_nodes(network, plan: Path, out: Path, *extra: str, trainer: str | None = None
                 ) -> list[subprocess.Popen]:
    endpoint = f"{network.addresses[0]}:{DEFAULT_PORT}"
    return [subprocess.Popen(_node_command(network.nodes[k], plan, k, endpoint, out, *extra,
                                           trainer=trainer),
                             cwd=REPO, env=_node_env(quiet=trainer is not None),
                             stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for k in (1, 0)][::-1]


def _finish(nodes: list[subprocess.Popen], timeout_s: float) -> list[tuple[int, str, str]]:
    outcomes = []
    for node in nodes:
        try:
            out, err = node.communicate(timeout=timeout_s)
        finally:
            if node.poll() is None:
                node.kill()
                node.communicate()
        outcomes.append((node.returncode, out, err))
    return outcomes


@pytest.mark.slow
@pytest.mark.parametrize("parallel", [{"dp": 2}, {"pp": 2}])
def test_two_nodes_in_two_namespaces_measure_what_one_machine_measures(
        two_namespaces, tmp_path, parallel):
    plan = write_plan(tmp_path, parallel)
    alone = tmp_path / "alone.json"
    done = subprocess.run([sys.executable, "-m", "parasim", "run", str(plan), *STEPS,
                           "--out", str(alone)], cwd=REPO, env=_node_env(),
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    shared = tmp_path / "nodes"
    shared.mkdir()
    (node0, out0, err0), (node1, out1, err1) = _finish(
        _start_nodes(two_namespaces, plan, shared / "m.json", *STEPS), RUN_TIMEOUT_S)
    assert (node0, node1) == (0, 0), (err0, err1)
    assert err0 == err1 == ""
    assert out1.strip() == "node 1 of 2: ranks 1 to 1 done; node 0 writes the measurement"
    assert out0.strip().endswith(f"wrote {shared / 'm.json'} (2 nodes of 1)")
    assert [p.name for p in shared.iterdir()] == ["m.json"]
    two, one = (json.loads(p.read_text()) for p in (shared / "m.json", alone))
    assert two["world_size"] == one["world_size"] == 2
    assert len(two["losses"]) == 3 and all(loss > 0 for loss in two["losses"])
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-9, abs=0)
    for rank_two, rank_one in zip(two["ranks"], one["ranks"]):
        assert rank_two["losses"] == pytest.approx(rank_one["losses"], rel=1e-9, abs=0)


@pytest.mark.slow
def test_a_node_nobody_joins_fails_within_its_timeout(two_namespaces, tmp_path):
    plan = write_plan(tmp_path, {"dp": 2})
    endpoint = f"{two_namespaces.addresses[0]}:{DEFAULT_PORT}"  # node 0 never starts
    start_s = time.monotonic()
    done = subprocess.run(_node_command(two_namespaces.nodes[1], plan, 1, endpoint,
                                        tmp_path / "m.json", "--timeout", "5"),
                          cwd=REPO, env=_node_env(), capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"parasim: error: node 1 of 2: cannot join the other nodes at {endpoint} within 5 s "
        "(is node 0 running with the same endpoint, and is it reachable from here?)"]
    print(f"\nnode 1 alone gave up after {time.monotonic() - start_s:.1f} s (imports included)")
    assert not (tmp_path / "m.json").exists()


@pytest.mark.slow
def test_a_rank_that_raises_fails_both_nodes_in_one_line(two_namespaces, tmp_path):
    plan = write_plan(tmp_path, {"dp": 2})
    outcomes = _finish(_start_nodes(two_namespaces, plan, tmp_path / "m.json", "--timeout",
                                    "120", trainer="raise_on_rank_1"), RUN_TIMEOUT_S)
    for status, _, err in outcomes:
        assert status == 1 and len(err.splitlines()) == 1, err
    assert outcomes[1][2].startswith("parasim: error: node 1 of 2: rank 1 failed: ValueError")
    assert outcomes[0][2].startswith("parasim: error: node 0 of 2: rank 0 failed:")
    assert not (tmp_path / "m.json").exists()


@pytest.mark.slow
def test_ctrl_c_stops_this_nodes_ranks_and_exits_130(tmp_path):
    """One node on this host's loopback (no root needed): Ctrl-C while its rank hangs."""
    plan = write_plan(tmp_path, {"dp": 2})
    env = {**os.environ, "PYTHONPATH": str(REPO), "TORCH_CPP_LOG_LEVEL": "FATAL"}
    cli = subprocess.Popen([sys.executable, "-c", CLI_WITH_TRAINER, "hang_on_rank_1", "run",
                            str(plan), "--nnodes", "1", "--node-rank", "0", "--rdzv-endpoint",
                            f"127.0.0.1:{_free_port()}", "--timeout", "120",
                            "--out", str(tmp_path / "m.json")],
                           cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, preexec_fn=default_sigint)
    ranks, err = interrupt_cli(cli, signal.SIGINT, lambda: len(rank_pids(cli.pid)) == 2)
    assert cli.returncode == 130, err
    assert err.strip().splitlines() == [INTERRUPTED]
    for pid in ranks:
        assert_gone(pid, within_s=15.0)
    assert wait_for(lambda: not rank_pids(cli.pid), 5)
    assert not (tmp_path / "m.json").exists()


def _free_port() -> int:
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# The launcher's configuration --------------------------------------------------------------------


def test_each_node_is_a_fixed_size_torchrun_node_of_the_static_rendezvous(tmp_path):
    from parasim.runtime.multinode import launch_config
    node = NodeSpec.of(world_size=16, gpus_per_node=8, nnodes=2, node_rank=1,
                       endpoint="[fe80::1]:29400")
    config = launch_config(node, "parasim-x", 7.5, str(tmp_path))
    assert (config.min_nodes, config.max_nodes, config.nproc_per_node) == (2, 2, 8)
    assert (config.rdzv_backend, config.rdzv_endpoint) == ("static", "[fe80::1]:29400")
    assert config.rdzv_configs == {"rank": 1, "timeout": 8}  # whole seconds, rounded up
    assert config.max_restarts == 0 and config.run_id == "parasim-x"
    assert "SIGINT" not in config.signals_to_handle.split(",")


def test_nodes_that_run_other_options_have_other_fingerprints(tmp_path):
    from dataclasses import replace

    from parasim.planner.plan import read_plan
    from parasim.runtime.multinode import run_fingerprint
    from parasim.runtime.run import RunArgs
    plan = read_plan(write_plan(tmp_path, {"dp": 2}))
    args = RunArgs(job=plan.job, plan_path=str(plan.path), steps=3, warmup_steps=1)
    node = NodeSpec.of(world_size=2, gpus_per_node=2, nnodes=2, node_rank=0, endpoint="h:1")
    same = run_fingerprint(args, node)
    assert run_fingerprint(args, replace(node, node_rank=1, host="x")) == same
    assert run_fingerprint(replace(args, steps=4), node) != same
    assert run_fingerprint(replace(args, warmup_steps=2), node) != same
    other = write_plan(tmp_path, {"dp": 2}, name="other.json", **{"training.seq_length": 64})
    assert run_fingerprint(replace(args, plan_path=str(other)), node) != same


@pytest.mark.slow
def test_nodes_that_run_other_options_stop_at_once_naming_it(tmp_path):
    """Two nodes on this host's loopback (no root needed), one with another --steps."""
    plan, port = write_plan(tmp_path, {"dp": 2}), _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    nodes = [subprocess.Popen([sys.executable, "-m", "parasim", "run", str(plan), "--nnodes",
                               "2", "--node-rank", str(rank), "--rdzv-endpoint",
                               f"127.0.0.1:{port}", "--steps", str(3 + rank), "--timeout",
                               "120", "--out", str(tmp_path / "m.json")],
                              cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    start_s = time.monotonic()
    outcomes = _finish(nodes, RUN_TIMEOUT_S)
    for rank, (status, _, err) in enumerate(outcomes):
        assert status == 1, err
        assert err.splitlines() == [
            f"parasim: error: node {rank} of 2: rank {rank} failed: MeasurementError: rank "
            f"{1 - rank} runs another plan or other options than rank {rank} (the plan file, "
            "--steps, --warmup, --shrink and the node layout must be the same on every node)"]
    assert time.monotonic() - start_s < 100  # not the 120 s timeout
    assert not (tmp_path / "m.json").exists()
