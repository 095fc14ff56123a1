"""Which ranks of a multi-node run this node starts, and where the nodes meet (no torch here).

`parasim run PLAN --nnodes N --node-rank R --rdzv-endpoint HOST:PORT [--nproc-per-node M]` is
run once on every node, as `torchrun` is (torch.distributed.run: the same four options): node R
starts M ranks, the nodes meet at HOST:PORT (a store served by node 0: torchrun's static
rendezvous, which makes --node-rank the node's group rank; runtime/multinode.py) and the global
ranks R·M ... R·M + M - 1 are this node's. `NodeSpec.of` checks the options against
the plan before anything starts: every mistake is one SpecError naming the option to change.

M defaults to the plan's GPUs per node, capped to the ranks each node has to run (world / N):
the layout's rank order (`parallel.order`) fills a node's GPUs with the innermost groups first,
so the ranks 0 ... M-1 of node 0 are the plan's first node, as the simulator placed them.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from parasim.simulator.checks import divisors, require_int
from parasim.simulator.errors import SpecError

MAX_NODES = 65_536  # beyond any cluster a plan describes
MAX_PORT = 65_535
DEFAULT_PORT = 29_500  # torchrun's default rendezvous port (torch.distributed.run, --master-port)
_HOST = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.\-_]*[A-Za-z0-9])?$")  # a name or an IPv4 address
_ENDPOINT_VALID = "HOST:PORT, e.g. node001:29500, 10.0.0.1:29500 or [fe80::1]:29500"


@dataclass(frozen=True, kw_only=True)
class NodeSpec:
    """This node's part of a multi-node run."""

    nnodes: int  # nodes in the run, N
    node_rank: int  # this node, 0 ... N-1; node 0 serves the rendezvous store
    host: str  # where node 0 serves it (a name or an address of node 0)
    port: int  # its TCP port
    nproc_per_node: int  # ranks each node starts, M; world = N·M

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node

    @property
    def endpoint(self) -> str:
        """HOST:PORT as torch's rendezvous parses it (IPv6 addresses in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def first_rank(self) -> int:
        return self.node_rank * self.nproc_per_node

    @classmethod
    def of(cls, *, world_size: int, gpus_per_node: int, nnodes: int, node_rank: int,
           endpoint: str, nproc_per_node: int | None = None) -> NodeSpec:
        """The node's spec from the options, checked against the plan's world and nodes."""
        nnodes, nproc = split_world(world_size, gpus_per_node, nnodes, nproc_per_node)
        require_int("--node-rank", node_rank, 0, nnodes - 1)
        host, port = parse_endpoint(endpoint)
        return cls(nnodes=nnodes, node_rank=node_rank, host=host, port=port,
                   nproc_per_node=nproc)


def split_world(world_size: int, gpus_per_node: int, nnodes: int | None = None,
                nproc_per_node: int | None = None) -> tuple[int, int]:
    """(nodes N, ranks per node M) with N·M = the plan's world; a missing M is the plan's GPUs
    per node capped to world / N, a missing N is world / M. SpecError naming what to pass."""
    if nnodes is not None:
        require_int("--nnodes", nnodes, 1, MAX_NODES)
        if world_size % nnodes:
            raise SpecError("--nnodes", nnodes, f"does not divide the plan's {world_size} "
                            "ranks into equal nodes", ", ".join(map(str, divisors(world_size))))
    if nproc_per_node is None:
        nproc_per_node = min(gpus_per_node, world_size // (nnodes or 1))
        if nnodes is None and world_size % nproc_per_node:
            nproc_per_node = max(d for d in divisors(world_size) if d <= nproc_per_node)
    require_int("--nproc-per-node", nproc_per_node, 1, world_size)
    if nnodes is None:
        if world_size % nproc_per_node:
            raise SpecError("--nproc-per-node", nproc_per_node, "does not divide the plan's "
                            f"{world_size} ranks into equal nodes",
                            ", ".join(map(str, divisors(world_size))))
        nnodes = world_size // nproc_per_node
    if nnodes * nproc_per_node != world_size:
        raise SpecError("--nproc-per-node", nproc_per_node, f"{nnodes} nodes x "
                        f"{nproc_per_node} ranks is not the plan's tp·cp·dp·pp = {world_size} "
                        f"ranks", f"--nproc-per-node {world_size // nnodes} (or leave it out)")
    return nnodes, nproc_per_node


def parse_endpoint(text: object, field: str = "--rdzv-endpoint") -> tuple[str, int]:
    """(host, port) of `HOST:PORT` (`[IPv6]:PORT`); SpecError for anything else."""
    if not isinstance(text, str):
        raise SpecError(field, text, "must be HOST:PORT", _ENDPOINT_VALID)
    match = re.fullmatch(r"\[([^\]\s]+)\]:(\d+)|([^:\[\]\s]+):(\d+)", text.strip())
    if match is None:
        raise SpecError(field, text, "is not HOST:PORT (a port is required; brackets around "
                        "an IPv6 address)", _ENDPOINT_VALID)
    host, port = (match[1], match[2]) if match[1] else (match[3], match[4])
    if match[1]:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise SpecError(field, text, "is not an IPv6 address in brackets",
                            _ENDPOINT_VALID) from None
    elif _HOST.match(host) is None or len(host) > 253:
        raise SpecError(field, text, f"{host!r} is not a host name or an address",
                        _ENDPOINT_VALID)
    if not 1 <= int(port) <= MAX_PORT:
        raise SpecError(field, text, f"port {int(port)} is not a TCP port", f"1 to {MAX_PORT}")
    return host, int(port)
