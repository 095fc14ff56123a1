"""Emulated nodes that each run their own launcher (runtime/run_nodes.py: the suite's
`launcher: rendezvous` jobs).

Fast: what cannot run is a SpecError before any namespace or process exists. Slow (root): a
pipeline split over two emulated nodes, each node `parasim run --nnodes 2 --node-rank k`'s
launcher in its own namespace, measures the losses of the same plan run on one machine, with
the emulated link's facts; a node that fails names itself, and nothing is left behind.
"""

from __future__ import annotations

import os
import time

import pytest

from parasim.runtime import netns
from parasim.runtime.errors import MeasurementError
from parasim.simulator.errors import SpecError

torch = pytest.importorskip("torch")

from parasim.planner.plan import read_plan  # noqa: E402  (after the importorskip)
from parasim.runtime import run_nodes  # noqa: E402
from parasim.runtime.run import measure_plan  # noqa: E402
from tests.runtime.test_launch import rank_pids  # noqa: E402
from tests.runtime.test_multinode import RUN_TIMEOUT_S, _can_emulate, write_plan  # noqa: E402

LINK = netns.Emulation(nodes=2, inter_node_bits_per_s=1e9)


def _tripwire(*args, **kwargs):
    raise AssertionError("something was started")


@pytest.mark.parametrize("emulation, root, fragment", [
    (netns.Emulation(nodes=3, inter_node_bits_per_s=1e9), True,
     "--emulate-nodes=3: does not divide the 2 processes into equal nodes"),
    (LINK, False, "--emulate-nodes=2: emulating nodes creates network namespaces, which "
     "needs root"),
])
def test_what_cannot_run_is_refused_before_anything_starts(tmp_path, monkeypatch, emulation,
                                                           root, fragment):
    monkeypatch.setattr(netns, "_is_root", lambda: root)
    monkeypatch.setattr(netns, "emulated_network", _tripwire)
    monkeypatch.setattr(run_nodes, "_run_nodes", _tripwire)
    plan = read_plan(write_plan(tmp_path, {"pp": 2}))
    with pytest.raises(SpecError, match=fragment):
        run_nodes.measure_plan_on_nodes(plan, steps=2, warmup_steps=1, timeout_s=60,
                                        emulation=emulation)


@pytest.fixture
def can_emulate():
    reason = _can_emulate()
    if reason:
        pytest.skip(reason)


@pytest.mark.slow
def test_a_pipeline_over_two_nodes_each_with_its_launcher_measures_one_machines_losses(
        can_emulate, tmp_path):
    plan = read_plan(write_plan(tmp_path, {"pp": 2}))
    before = set(netns.parasim_namespaces())
    two = run_nodes.measure_plan_on_nodes(plan, steps=3, warmup_steps=1,
                                          timeout_s=RUN_TIMEOUT_S, emulation=LINK)
    one = measure_plan(plan, steps=3, warmup_steps=1, nproc=2, timeout_s=RUN_TIMEOUT_S)
    assert len(two.ranks) == 2 and len(two.step_times_s) == 3
    assert two.losses == pytest.approx(one.losses, rel=1e-9, abs=0) and len(two.losses) == 3
    assert two.peak_bytes == one.peak_bytes
    assert two.emulation["nodes"] == 2 and two.emulation["ranks_per_node"] == 1
    assert 0.5 < two.emulation["measured_inter_node_Gbps"] < 1.0  # below the line rate
    assert set(netns.parasim_namespaces()) == before
    assert not rank_pids(os.getpid())  # no node process left


@pytest.mark.slow
def test_a_node_that_fails_names_itself_and_leaves_nothing(can_emulate, tmp_path):
    """Too short a timeout for a run: every node stops within it, naming itself."""
    plan = read_plan(write_plan(tmp_path, {"pp": 2}))
    before = set(netns.parasim_namespaces())
    start_s = time.monotonic()
    with pytest.raises(MeasurementError) as raised:
        run_nodes.measure_plan_on_nodes(plan, steps=10_000, warmup_steps=1, timeout_s=5,
                                        emulation=LINK)
    message = str(raised.value)
    assert message.startswith("run of 2 emulated nodes: node ")
    assert "failed: MeasurementError: node " in message and " of 2: " in message
    assert "\n" not in message
    assert time.monotonic() - start_s < 5 + run_nodes.START_S + run_nodes.SHUTDOWN_S
    assert set(netns.parasim_namespaces()) == before
    assert not rank_pids(os.getpid())  # no node process left
