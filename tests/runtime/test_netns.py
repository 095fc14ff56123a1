"""The emulated multi-node network (runtime/netns.py): built, rate-limited, always removed.

Needs root with CAP_NET_ADMIN and iproute2; skipped otherwise (also when the kernel refuses
to create namespaces, as in an unprivileged container). The rate check is iperf-like: a TCP
transfer between the namespaces of two emulated nodes must run at the `tc` limit (±30 %; TCP/IP
headers alone cost about 5 %), and one inside a node (loopback) clearly faster. The ranks of a
launched run must sit in their node's namespace and talk across nodes; the namespaces exist
during the run and none is left afterwards, also after a crash.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from parasim.runtime import netns
from parasim.runtime.netns import Emulation, emulated_network
from parasim.simulator.errors import SpecError

RATE_BITS_PER_S = 1e9
TRANSFER_BYTES = 32 << 20  # about 0.27 s at 1 Gbit/s
MINE = f"{netns.PREFIX}{os.getpid()}-"  # the namespaces of this test process

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None
                                or shutil.which("tc") is None,
                                reason="needs root and iproute2 (ip, tc)")


def mine() -> list[str]:
    return [name for name in netns.parasim_namespaces() if name.startswith(MINE)]


@pytest.fixture
def network():
    """A 2-node network at RATE_BITS_PER_S; skips where the kernel refuses namespaces."""
    try:
        with emulated_network(Emulation(nodes=2, inter_node_bits_per_s=RATE_BITS_PER_S)) as net:
            yield net
    except SpecError as err:
        if "not permitted" in str(err) or "Permission denied" in str(err):
            pytest.skip(f"the kernel refuses network namespaces here: {err}")
        raise
    assert mine() == []


def test_namespaces_exist_during_the_run_and_are_gone_after(network):
    assert set(network.names) <= set(netns.parasim_namespaces())
    assert network.hub.startswith(MINE) and all(n.startswith(MINE) for n in network.nodes)
    assert network.addresses == ("10.213.0.1", "10.213.0.2")


def test_inter_node_rate_is_the_tc_limit_and_intra_node_is_faster(network):
    inter = netns.transfer_rate_bits_per_s(network.nodes[0], network.nodes[1],
                                           network.addresses[1], TRANSFER_BYTES)
    back = netns.transfer_rate_bits_per_s(network.nodes[1], network.nodes[0],
                                          network.addresses[0], TRANSFER_BYTES)
    intra = netns.transfer_rate_bits_per_s(network.nodes[0], network.nodes[0],
                                           network.addresses[0], TRANSFER_BYTES)
    print(f"\ninter-node {inter / 1e9:.3f} Gbit/s (back {back / 1e9:.3f}), intra-node "
          f"{intra / 1e9:.3f} Gbit/s, tc limit {RATE_BITS_PER_S / 1e9:g} Gbit/s")
    for rate in (inter, back):
        assert 0.7 * RATE_BITS_PER_S <= rate <= 1.3 * RATE_BITS_PER_S
    assert intra > 3 * inter


def test_namespaces_are_removed_after_an_error_inside():
    with pytest.raises(ZeroDivisionError):
        with emulated_network(Emulation(nodes=3, inter_node_bits_per_s=1e9)) as net:
            assert len(mine()) == 4
            _ = 1 / 0
    assert mine() == [] and not any((netns.NETNS_DIR / n).exists() for n in net.names)


def test_cleanup_stale_removes_the_namespaces_of_dead_runs_only():
    dead_pid = _a_dead_pid()
    stale, live = f"{netns.PREFIX}{dead_pid}-0-n0", f"{MINE}99-n0"
    for name in (stale, live):
        subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        assert netns.cleanup_stale() == [stale]
        assert netns.parasim_namespaces().count(live) == 1 and stale not in \
            netns.parasim_namespaces()
    finally:
        netns.remove_namespaces((stale, live))


def _a_dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    process = subprocess.Popen(["true"])
    process.wait()
    assert not os.path.exists(f"/proc/{process.pid}")
    return process.pid


def test_a_latency_needs_netem_or_delays_the_link():
    emulation = Emulation(nodes=2, inter_node_bits_per_s=1e9, latency_s=0.005)
    try:
        with emulated_network(emulation) as net:
            rtt_s = _round_trip_s(net)
    except SpecError as err:  # this kernel has no sch_netem: a clear error, nothing left
        assert str(err).startswith("--inter-node-latency-us=5000.0: needs the kernel's netem")
        assert mine() == []
        return
    assert 2 * emulation.latency_s <= rtt_s < 2 * emulation.latency_s + 0.005


def _round_trip_s(net: netns.Network) -> float:
    """The fastest of 20 one-byte TCP ping-pongs from node 0 to node 1."""
    with netns.entered(net.nodes[1]):
        server = socket.create_server((net.addresses[1], 0))
    thread = threading.Thread(target=_echo, args=(server,), daemon=True)
    thread.start()
    with netns.entered(net.nodes[0]):
        client = socket.create_connection((net.addresses[1], server.getsockname()[1]), 10)
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    times_s = []
    with client, server:
        for _ in range(20):
            start_s = time.perf_counter()
            client.sendall(b"x")
            client.recv(1)
            times_s.append(time.perf_counter() - start_s)
    return min(times_s)


def _echo(server: socket.socket) -> None:
    connection, _ = server.accept()
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with connection:
        while data := connection.recv(1):
            connection.sendall(data)


# Ranks in the emulated network (torch) ----------------------------------------------------------


@pytest.mark.slow
def test_ranks_run_in_their_nodes_namespace_and_reach_each_other(network):
    pytest.importorskip("torch")  # `network`: namespaces can be built here (else: skipped)
    from parasim.runtime.launch import launch
    from tests.runtime import launch_workers as workers
    from tests.test_profiler import assert_no_children_left
    views = launch(workers.network_view, 4, {}, 120.0,
                   Emulation(nodes=2, inter_node_bits_per_s=RATE_BITS_PER_S))
    inodes = [view["netns_inode"] for view in views]
    assert inodes[0] == inodes[1] != inodes[2] == inodes[3]
    assert os.stat("/proc/self/ns/net").st_ino not in inodes  # not the host's network
    assert all(v["sum"] == 4.0 and v["ifname"] == "eth0" for v in views)
    runs = {name for name in views[0]["namespaces"] if name.startswith(MINE)} - \
        set(network.names)
    assert len(runs) == 3  # during the run: its hub and 2 nodes (besides the fixture's) ...
    assert set(mine()) == set(network.names)  # ... and after it, none of them
    assert_no_children_left()


@pytest.mark.slow
def test_gloo_between_nodes_runs_at_the_link_rate(network):
    pytest.importorskip("torch")  # `network`: namespaces can be built here (else: skipped)
    from parasim.runtime.launch import launch
    from tests.runtime import launch_workers as workers
    rates = launch(workers.send_recv_rate, 4, {"bytes": 16 << 20}, 120.0,
                   Emulation(nodes=2, inter_node_bits_per_s=RATE_BITS_PER_S))
    same_node, other_node = rates[1][1], (rates[2][2], rates[3][3])
    print(f"\ngloo send/recv: same node {same_node / 1e9:.2f} Gbit/s, other node "
          f"{other_node[0] / 1e9:.3f} and {other_node[1] / 1e9:.3f} Gbit/s")
    for rate in other_node:
        assert 0.7 * RATE_BITS_PER_S <= rate <= 1.3 * RATE_BITS_PER_S
    assert same_node > 3 * max(other_node)


@pytest.mark.slow
def test_a_crash_in_an_emulated_run_removes_everything():
    pytest.importorskip("torch")
    from parasim.runtime.errors import MeasurementError
    from parasim.runtime.launch import launch
    from tests.runtime import launch_workers as workers
    from tests.test_profiler import assert_no_children_left
    try:
        with pytest.raises(MeasurementError, match="rank 1 failed: ValueError"):
            launch(workers.raise_on_rank_1, 2, {}, 120.0,
                   Emulation(nodes=2, inter_node_bits_per_s=RATE_BITS_PER_S))
    except SpecError as err:
        pytest.skip(f"the kernel refuses network namespaces here: {err}")
    assert mine() == []
    assert_no_children_left()


@pytest.mark.slow
def test_ctrl_c_of_an_emulated_run_removes_everything(network, tmp_path):
    pytest.importorskip("torch")  # `network`: namespaces can be built here (else: skipped)
    from tests.runtime.test_launch import (INTERRUPTED, assert_gone, interrupt_cli, rank_pids,
                                           small_plan_document, start_cli, write_plan)
    cli = start_cli("hang_on_rank_1", write_plan(tmp_path, small_plan_document()), "--nproc", 2,
                    "--emulate-nodes", 2, "--inter-node-Gbps", 1, "--timeout", 120)
    theirs = f"{netns.PREFIX}{cli.pid}-"

    def running() -> bool:
        return len(rank_pids(cli.pid)) == 2 and any(
            name.startswith(theirs) for name in netns.parasim_namespaces())

    ranks, err = interrupt_cli(cli, signal.SIGINT, running)
    assert cli.returncode == 130, err
    assert err.strip().splitlines()[-1] == INTERRUPTED
    assert not [name for name in netns.parasim_namespaces() if name.startswith(theirs)]
    for pid in ranks:
        assert_gone(pid)
