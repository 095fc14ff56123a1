"""An emulated multi-node network: one Linux network namespace per node, rate-limited links.

DESIGN.md, "Validation, honestly": multi-node networks are emulated so that topology-aware
predictions are checked against real traffic. `emulated_network` builds a star: a hub
namespace holds a bridge (the switch), and each emulated node k is a namespace whose `eth0` is a
veth into that bridge. Both ends of every node's veth carry a token-bucket filter (`tc tbf`) at
the inter-node rate, so a node sends and receives at most that rate (its NIC's line rate, each
direction), and an optional one-way latency (`tc netem` on the node's egress). Ranks of one node
share its namespace: traffic between them, even to the node's own `eth0` address, stays on the
namespace's loopback (the kernel routes local addresses there) and is not limited.

Addresses: 10.213.0.<k+1>/24 for node k and .254 for the hub (the rendezvous store lives
there). The subnet exists only inside the namespaces made here, so it never touches an address
outside them, and concurrent runs (each with its own namespaces) cannot collide.

Everything is removed on leaving the context manager (also on an error or Ctrl-C), and by an
atexit hook should the interpreter exit first. Namespaces are named `parasim-<pid>-<run>-...`;
`cleanup_stale` removes those whose process is gone (never another live run's).

Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN for setns), `ip` and `tc` (iproute2), and a kernel
with veth, bridge and sch_tbf (sch_netem for a latency).
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import itertools
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from parasim.runtime.errors import MeasurementError
from parasim.simulator.errors import SpecError

NETNS_DIR = Path("/var/run/netns")  # where `ip netns add` pins the namespaces
PREFIX = "parasim-"
SUBNET = "10.213.0"  # /24, only inside namespaces made here
HUB_HOST = 254  # the hub's (bridge's) host number in SUBNET
INTERFACE = "eth0"  # each node's link to the hub
MAX_NODES = 64
MAX_RATE_BITS_PER_S = 400e9  # beyond any NIC emulated here (veth tops out far lower)
BURST_S = 0.001  # token bucket depth, in seconds at the line rate
MIN_BURST_BYTES = 32 * 1024  # at least a few full-size packets at low rates
QUEUE_S = 0.02  # how long a packet may wait in the bucket's queue before it is dropped
CLONE_NEWNET = 0x40000000  # <linux/sched.h>
COMMAND_TIMEOUT_S = 30.0
_runs = itertools.count()
_FIX = "run as root with CAP_NET_ADMIN and iproute2 (ip, tc), or leave out --emulate-nodes"


@dataclass(frozen=True, kw_only=True)
class Emulation:
    """What to emulate: `nodes` nodes, ranks split into contiguous blocks (rank r on node
    r // (world / nodes)), as the layout's rank order places the outermost axis across nodes."""

    nodes: int  # emulated nodes K, one namespace each
    inter_node_bits_per_s: float  # each node's link rate, each direction
    latency_s: float = 0.0  # one-way latency added between nodes (netem); 0: none

    def __post_init__(self) -> None:
        if not isinstance(self.nodes, int) or not 1 <= self.nodes <= MAX_NODES:
            raise SpecError("--emulate-nodes", self.nodes, "is not a usable number of nodes",
                            f"1 to {MAX_NODES}")
        if not 0 < self.inter_node_bits_per_s <= MAX_RATE_BITS_PER_S:
            raise SpecError("--inter-node-Gbps", round(self.inter_node_bits_per_s / 1e9, 6),
                            "must be a positive link rate", f"> 0 and <= "
                            f"{MAX_RATE_BITS_PER_S / 1e9:g}")
        if not 0 <= self.latency_s <= 1.0:
            raise SpecError("--inter-node-latency-us", round(self.latency_s * 1e6, 3),
                            "must be a latency between 0 and 1 s", "0 to 1000000")


@dataclass(frozen=True, kw_only=True)
class Network:
    """The namespaces of one emulated network, and where each node is reached."""

    hub: str  # namespace of the bridge and the rendezvous store
    nodes: tuple[str, ...]  # namespace of node k
    addresses: tuple[str, ...]  # node k's eth0 address
    hub_address: str
    interface: str = INTERFACE

    @property
    def names(self) -> tuple[str, ...]:
        return (*self.nodes, self.hub)


# Checks before anything starts ----------------------------------------------------------------


def check_can_emulate(emulation: Emulation, world_size: int) -> None:
    """SpecError unless the ranks split evenly and this process may build namespaces."""
    if world_size % emulation.nodes:
        raise SpecError("--emulate-nodes", emulation.nodes, f"does not divide the {world_size} "
                        "processes into equal nodes", _divisors_text(world_size))
    if not _is_root():
        raise SpecError("--emulate-nodes", emulation.nodes, "emulating nodes creates network "
                        "namespaces, which needs root", _FIX)
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            raise SpecError("--emulate-nodes", emulation.nodes, f"`{tool}` is not installed",
                            _FIX)


def _divisors_text(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)


def _is_root() -> bool:
    """Separate so that tests can play a user without root."""
    return os.geteuid() == 0


# Building and removing ------------------------------------------------------------------------


@contextmanager
def emulated_network(emulation: Emulation) -> Iterator[Network]:
    """The network of `emulation`, removed on leaving (also on an error, Ctrl-C or exit).

    Namespaces that a killed run (SIGKILL: no cleanup) left behind are removed first."""
    cleanup_stale()
    network = _plan_network(emulation.nodes)
    remove = functools.partial(remove_namespaces, network.names)  # this network's own hook
    atexit.register(remove)
    try:
        try:
            _build(network, emulation)
        except _Refused as err:
            raise SpecError("--emulate-nodes", emulation.nodes, "the kernel refused to build "
                            f"the emulated network: `{err.command}`: {err.reason}",
                            _FIX) from None
        yield network
    finally:
        remove()
        atexit.unregister(remove)


def _plan_network(nodes: int) -> Network:
    """Names unique to this process and run, addresses in SUBNET."""
    stem = f"{PREFIX}{os.getpid()}-{next(_runs)}"
    return Network(hub=f"{stem}-hub", nodes=tuple(f"{stem}-n{k}" for k in range(nodes)),
                   addresses=tuple(f"{SUBNET}.{k + 1}" for k in range(nodes)),
                   hub_address=f"{SUBNET}.{HUB_HOST}")


def _build(network: Network, emulation: Emulation) -> None:
    for name in network.names:
        _command("ip", "netns", "add", name)
        _command("ip", "-n", name, "link", "set", "lo", "up")
    _command("ip", "-n", network.hub, "link", "add", "br0", "type", "bridge")
    _command("ip", "-n", network.hub, "addr", "add", f"{network.hub_address}/24", "dev", "br0")
    _command("ip", "-n", network.hub, "link", "set", "br0", "up")
    for k, (name, address) in enumerate(zip(network.nodes, network.addresses)):
        _link_node(network, k, name, address)
        _limit(name, network.interface, emulation, with_latency=True)
        _limit(network.hub, f"v{k}", emulation, with_latency=False)


def _link_node(network: Network, k: int, name: str, address: str) -> None:
    """Node k's eth0, a veth whose other end v<k> is a port of the hub's bridge."""
    port = f"v{k}"
    _command("ip", "link", "add", network.interface, "netns", name, "type", "veth", "peer",
             "name", port, "netns", network.hub)
    _command("ip", "-n", network.hub, "link", "set", port, "master", "br0", "up")
    _command("ip", "-n", name, "addr", "add", f"{address}/24", "dev", network.interface)
    _command("ip", "-n", name, "link", "set", network.interface, "up")


def _limit(namespace: str, device: str, emulation: Emulation, with_latency: bool) -> None:
    """A token bucket at the line rate on `device`'s egress, under a netem delay if asked."""
    rate_bits_per_s = emulation.inter_node_bits_per_s
    burst_bytes = max(MIN_BURST_BYTES, int(rate_bits_per_s / 8 * BURST_S))
    tbf = ["tbf", "rate", f"{int(rate_bits_per_s)}bit", "burst", str(burst_bytes),
           "latency", f"{int(QUEUE_S * 1e6)}us"]
    qdisc = ["tc", "-n", namespace, "qdisc", "add", "dev", device]
    if not (with_latency and emulation.latency_s > 0):
        _command(*qdisc, "root", *tbf)
        return
    latency_us = emulation.latency_s * 1e6
    try:
        _command(*qdisc, "root", "handle", "1:", "netem", "delay", f"{int(round(latency_us))}us")
    except _Refused as err:
        if "unknown" not in err.reason.lower():
            raise
        raise SpecError("--inter-node-latency-us", round(latency_us, 3), "needs the kernel's "
                        "netem qdisc (sch_netem), which this kernel lacks",
                        "0 (no added latency)") from None
    _command(*qdisc, "parent", "1:1", "handle", "10:", *tbf)


class _Refused(Exception):
    """An ip/tc command failed; `reason` is its last line on stderr."""

    def __init__(self, command: str, reason: str):
        self.command, self.reason = command, reason
        super().__init__(f"{command}: {reason}")


def _command(*argv: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
                            check=False)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or [f"exit status {result.returncode}"]
        raise _Refused(" ".join(argv), lines[-1])


def remove_namespaces(names: tuple[str, ...]) -> None:
    """Delete the namespaces that exist (their links, bridge and qdiscs go with them)."""
    for name in names:
        if (NETNS_DIR / name).exists():
            subprocess.run(("ip", "netns", "del", name), capture_output=True, check=False,
                           timeout=COMMAND_TIMEOUT_S)


def cleanup_stale() -> list[str]:
    """Remove `parasim-<pid>-*` namespaces whose process has exited; returns their names.

    A live process's namespaces are left alone: another run may be using them."""
    stale = [name for name in parasim_namespaces() if not _owner_alive(name)]
    remove_namespaces(tuple(stale))
    return stale


def parasim_namespaces() -> list[str]:
    """Names of the namespaces pinned under NETNS_DIR by any parasim run."""
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(PREFIX))


def _owner_alive(name: str) -> bool:
    pid = name[len(PREFIX):].split("-", 1)[0]
    return not pid.isdigit() or Path(f"/proc/{pid}").exists()


# Entering a namespace -------------------------------------------------------------------------


def enter(name: str) -> None:
    """Move the calling thread into namespace `name` for good (a rank, before it connects)."""
    fd = os.open(NETNS_DIR / name, os.O_RDONLY)
    try:
        _setns(fd)
    finally:
        os.close(fd)


@contextmanager
def entered(name: str) -> Iterator[None]:
    """The calling thread inside `name` for the block; sockets made there stay there."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        enter(name)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


def _setns(fd: int) -> None:
    """setns(2) (os.setns needs Python 3.12)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


# A rate check, iperf-like ---------------------------------------------------------------------


def transfer_rate_bits_per_s(sender: str, receiver: str, address: str, nbytes: int,
                             timeout_s: float = 60.0) -> float:
    """Send `nbytes` over TCP from namespace `sender` to `address` in namespace `receiver`;
    the receiver's rate from its first byte to its last (connection setup excluded)."""
    with entered(receiver):
        server = socket.create_server((address, 0))
    with server:
        server.settimeout(timeout_s)
        outcome: dict = {}
        thread = threading.Thread(target=_receive, args=(server, nbytes, outcome), daemon=True)
        thread.start()
        with entered(sender):
            client = socket.create_connection((address, server.getsockname()[1]), timeout_s)
        with client:
            _send(client, nbytes)
        thread.join(timeout_s)
    if "elapsed_s" not in outcome:
        raise MeasurementError(f"rate check {sender} -> {receiver}: "
                               f"{outcome.get('error', 'no answer within the timeout')}")
    return outcome["timed_bytes"] * 8 / outcome["elapsed_s"]


def _send(client: socket.socket, nbytes: int) -> None:
    chunk = memoryview(bytearray(1 << 20))
    left = nbytes
    while left > 0:
        client.sendall(chunk[:min(left, len(chunk))])
        left -= min(left, len(chunk))


def _receive(server: socket.socket, nbytes: int, outcome: dict) -> None:
    """Accept one connection, read `nbytes`; store the bytes after the first read and the time
    they took (the first read starts the clock)."""
    buffer = memoryview(bytearray(1 << 20))
    try:
        connection, _ = server.accept()
        with connection:
            first = received = connection.recv_into(buffer)
            start_s = time.perf_counter()
            while received < nbytes:
                got = connection.recv_into(buffer)
                if got == 0:
                    outcome["error"] = f"the sender closed after {received} of {nbytes} bytes"
                    return
                received += got
            outcome["elapsed_s"] = time.perf_counter() - start_s
            outcome["timed_bytes"] = received - first
    except OSError as err:
        outcome["error"] = f"{type(err).__name__}: {err}"
