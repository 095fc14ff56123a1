"""A multi-node run on emulated nodes, each node running its own launcher, as on a cluster.

`runtime.run.measure_plan` with an emulation starts every rank from this process
(`runtime.launch`); each rank enters its node's namespace and joins a store in the hub. That
sends the ranks' traffic over the emulated links but skips the launcher a cluster runs:
`parasim run PLAN --nnodes N --node-rank R --rdzv-endpoint HOST:PORT` on every node
(`runtime.multinode.measure_on_node`: torch's elastic agent, the static rendezvous that node
0 serves, the nodes' fingerprints compared). Here each emulated node k is one process inside
namespace k that runs exactly that with `--node-rank k` and node 0's address as the endpoint,
so the rendezvous, the agents and the process group's setup cross the emulated links too.
Node 0's Measurement comes back with the emulated network's facts (its measured link rate).

Failures are `runtime.launch`'s: SpecError before anything starts, MeasurementError naming
the node (with the node's own one-line reason) when one fails, dies or passes the deadline;
every node process, its agent and its ranks are gone when this returns or raises.
"""

from __future__ import annotations

import os
import pickle
import time
from dataclasses import dataclass, replace
from typing import Any

import torch.multiprocessing as mp

from parasim.planner.plan import Plan
from parasim.runtime import netns, processes
from parasim.runtime.launch import check_launch
from parasim.runtime.measure import Measurement
from parasim.runtime.multinode import SHUTDOWN_S, measure_on_node
from parasim.runtime.nodes import DEFAULT_PORT, NodeSpec
from parasim.runtime.run import emulation_facts, prepare_run
from parasim.simulator.job import Job

# The parent waits this much longer than the nodes' own --timeout: a node process starts
# (imports torch) before its deadline starts, and its agent stops its ranks after it.
START_S = 30.0


@dataclass(frozen=True, kw_only=True)
class NodeTask:
    """What one emulated node's process runs (pickled to it)."""

    plan: Plan
    job: Job | None  # the plan's job shrunk, or None: the plan's own
    node: NodeSpec  # --nnodes, --node-rank, --rdzv-endpoint, --nproc-per-node
    namespace: str  # the node's network namespace
    interface: str  # its link (GLOO_SOCKET_IFNAME: the namespace has no host name to resolve)
    steps: int
    warmup_steps: int
    timeout_s: float


def measure_plan_on_nodes(plan: Plan, *, steps: int, warmup_steps: int, timeout_s: float,
                          emulation: netns.Emulation, job: Job | None = None) -> Measurement:
    """Run the plan over `emulation`'s nodes, each its own `parasim run --nnodes` launcher;
    node 0's measurement, with the emulated network's facts."""
    world = (job or plan.job).layout.world_size
    check_launch(world, timeout_s, emulation)
    per_node = world // emulation.nodes
    prepare_run(plan, job=job, steps=steps, warmup_steps=warmup_steps, ranks_here=per_node)
    with netns.emulated_network(emulation) as network:
        facts = emulation_facts(network, emulation, world)
        endpoint = f"{network.addresses[0]}:{DEFAULT_PORT}"
        tasks = [NodeTask(plan=plan, job=job, namespace=network.nodes[k],
                          interface=network.interface, steps=steps, warmup_steps=warmup_steps,
                          timeout_s=timeout_s,
                          node=NodeSpec.of(world_size=world, gpus_per_node=per_node,
                                           nnodes=emulation.nodes, node_rank=k,
                                           endpoint=endpoint))
                 for k in range(emulation.nodes)]
        measured = _run_nodes(tasks, timeout_s + START_S + SHUTDOWN_S)[0]
    assert measured is not None, "node 0 returns the measurement"
    return replace(measured, emulation=facts)


def _run_nodes(tasks: list[NodeTask], timeout_s: float) -> list[Measurement | None]:
    """Every node's result by node rank (node 0's Measurement, None from the others)."""
    context = mp.get_context("spawn")
    results = context.Queue()
    # not daemons: each node's agent starts its ranks as its own children
    nodes = [context.Process(target=_node_main, args=(task, results),
                             name=f"parasim-node{task.node.node_rank}") for task in tasks]
    label = f"run of {len(nodes)} emulated nodes"
    outcomes: dict[int, Any] = {}
    deadline_s = time.monotonic() + timeout_s
    with processes.running(nodes, results):
        while len(outcomes) < len(nodes):
            message = processes.next_message(label, nodes, results, deadline_s, timeout_s,
                                             member="node")
            if message is None:
                continue
            if message[0] == "error":
                processes.raise_failure(label, nodes, results, first=message, member="node")
            outcomes[message[1]] = pickle.loads(message[2])
        processes.join(nodes, deadline_s)
    return [outcomes[k] for k in range(len(nodes))]


# In each node's process -----------------------------------------------------------------------


def _node_main(task: NodeTask, results: Any) -> None:
    processes.detach_from_parent()
    processes.report_outcome(task.node.node_rank, results, lambda: _node(task))


def _node(task: NodeTask) -> Measurement | None:
    """`parasim run --nnodes` of this node, inside its namespace (its agent and ranks too)."""
    netns.enter(task.namespace)
    os.environ["GLOO_SOCKET_IFNAME"] = task.interface
    return measure_on_node(task.plan, node=task.node, steps=task.steps,
                           warmup_steps=task.warmup_steps, timeout_s=task.timeout_s,
                           job=task.job)
