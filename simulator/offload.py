"""Offloading to the host: what the GPUs copy over PCIe, how long it takes, what it hides behind.

Optimizer offload is ZeRO-Offload (Ren et al. 2021, "ZeRO-Offload: Democratizing
Billion-Scale Model Training", USENIX ATC; §3 the offload strategy, §4.1-4.2 its schedule on
one GPU and on ZeRO-2 partitions, §5.1 the CPU Adam), as Megatron-Core runs it
(`--optimizer-cpu-offload`, `--optimizer-offload-fraction 1.0`,
`--overlap-cpu-optimizer-d2h-h2d`, NVIDIA/Megatron-LM megatron/training/arguments.py): the
16-bit weights, the forward and the backward stay on the GPU; each GPU sends the gradients of
its ZeRO shard to its host, the host's CPUs update the fp32 master weights and Adam moments,
and the updated 16-bit weights come back. Activation offload is
Transformer Engine's CPU offload (Megatron-Core `--cpu-offloading-num-layers`): see
`memory.offloaded_activations` for what it keeps and `block_exposed_s` for the time.
"""

from __future__ import annotations

import numpy as np

from parasim.simulator.errors import SpecError
from parasim.simulator.hardware import ClusterSpec, DeviceSpec, NodeGroup
from parasim.simulator.layout import Layout
from parasim.simulator.placement import axis_groups


def pcie_bytes_per_s(device: DeviceSpec) -> float:
    """The GPU's host link, one direction; SpecError where the catalog does not know it."""
    if device.pcie_bytes_per_s is None:
        raise SpecError("cluster.gpu.pcie_GBps", None, f"missing: parallel.offload copies "
                        f"over the GPU's host link, and gpu {device.name} has none in the "
                        "catalog", "set cluster.gpu.pcie_GBps (e.g. 64 for PCIe Gen5 x16), or "
                        "parallel.offload: {optimizer: false, activations: false}")
    return device.pcie_bytes_per_s


def host_capacity_bytes(group: NodeGroup) -> float:
    """One node's host memory; SpecError where neither the preset nor the job sets it."""
    if group.host_memory_bytes is None:
        raise SpecError("cluster.host_memory_GiB", None, "missing: parallel.offload keeps "
                        "bytes in host memory, and the cluster preset does not say how much a "
                        "node has",
                        "set cluster.host_memory_GiB (e.g. 2048 for a DGX H100), or "
                        "parallel.offload: {optimizer: false, activations: false}")
    return group.host_memory_bytes


def optimizer_times_s(shard_params: float, weight_bytes: float, grad_bytes: float,
                      device: DeviceSpec, group: NodeGroup) -> tuple[float, float, float]:
    """(gradients to the host, CPU Adam, weights back) of one step, in seconds, for a GPU
    updating `shard_params` parameters (its ZeRO shard). ZeRO-Offload §3 moves the gradients
    down and the 16-bit parameters up once per step (2M + 2M bytes for M parameters in fp16);
    here the gradients go at their buffer's precision (`grad_bytes`). The CPU update runs at the
    node's CPU Adam rate (`hardware.CPU_ADAM_PARAMS_PER_S`, cited there) shared by the node's
    GPUs, each updating its own shard at once."""
    link = pcie_bytes_per_s(device)
    return (shard_params * grad_bytes / link,
            shard_params * group.gpus_per_node / group.cpu_adam_params_per_s,
            shard_params * weight_bytes / link)


def block_exposed_s(activation_bytes: float, compute_s: float, device: DeviceSpec) -> float:
    """What copying one block's stored activations over PCIe adds to a pass: the copy of block
    i runs while block i+1 computes (its forward; in the backward the fetch of block i while
    block i+1's gradients are computed), so only the part the block's own compute cannot
    cover shows, max(0, bytes / PCIe - compute) (Transformer Engine's double-buffered
    offload handler, transformer_engine/pytorch/cpu_offload.py)."""
    return max(0.0, activation_bytes / pcie_bytes_per_s(device) - compute_s)


def node_dp(cluster: ClusterSpec, layout: Layout) -> int:
    """Data-parallel ranks (dp·cp) of one group that share a node: ZeRO++'s hpZ partitions its
    secondary weight copy over them (Wang et al. 2023 §3.2; for pure data parallelism all the
    node's GPUs)."""
    group = axis_groups(layout, "dp_cp")[0]
    per_node = cluster.node_groups[0].gpus_per_node
    nodes = np.asarray(group) // per_node
    return int(np.sum(nodes == nodes[0]))
