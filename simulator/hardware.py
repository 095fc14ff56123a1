"""DeviceSpec and ClusterSpec: what the GPUs can do and how they are joined.

A cluster is one or more node groups; each group has its own GPU type, NVLink and NICs (mixed
A100/H100 pools). Ranks are numbered over the groups in the order they are listed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from parasim.simulator.checks import require_choice, require_count, require_number, require_positive
from parasim.simulator.errors import SpecError
from parasim.simulator.facility import FacilitySpec, default_facility

Precision = Literal["bf16", "fp16", "fp8", "fp32", "fp4"]
PRECISIONS = ("bf16", "fp16", "fp8", "fp32", "fp4")
Topology = Literal["fat-tree", "rail-optimized", "rail-only"]
TOPOLOGIES = ("fat-tree", "rail-optimized", "rail-only")
MAX_GPUS = 2**20  # the largest cluster parasim models (1,048,576 GPUs): its graph takes about
#                   15 s and 1.4 GiB to build; a larger one would run for minutes
# CPU Adam: DeepSpeed's vectorised CPU Adam (the optimizer of ZeRO-Offload, Ren et al. 2021
# §5.1) "reduces the optimizer time from 56 seconds to 8.2 seconds [for] an 11.6B parameter GPT2
# model" (DeepSpeed PR #735, 2021-02-08, by an author of the paper): 11.6e9 / 8.2 s = 1.41e9
# parameters per second on one host's cores (the host is not named; the paper's testbed is a
# DGX-2). Every GPU of a node shares them.
CPU_ADAM_PARAMS_PER_S = 11.6e9 / 8.2
MAX_PLAN_GPUS = 2**17  # the largest cluster `parasim plan` searches (131,072 GPUs): each
#                        layout it scores in full builds and routes that graph


@dataclass(frozen=True, kw_only=True)
class DeviceSpec:
    """One accelerator's datasheet. Peaks are dense (no 2:4 sparsity)."""

    name: str  # catalog name, e.g. h100-sxm
    peak_bf16_flop_per_s: float  # dense bf16 tensor-core peak
    peak_fp16_flop_per_s: float  # dense fp16 tensor-core peak
    peak_fp8_flop_per_s: float  # dense fp8 peak; 0 where the device has no fp8 units
    peak_fp32_flop_per_s: float  # fp32 peak as used for fp32 training (TF32 on tensor cores)
    memory_bytes: float  # HBM capacity
    memory_bytes_per_s: float  # HBM bandwidth
    nvlink_bytes_per_s: float  # per GPU, one direction, to the other GPUs of its NVLink domain
    tdp_watts: float  # board power limit
    price_per_hour_usd: float  # typical on-demand price of one GPU-hour (see catalog date)
    idle_watts: float | None = None  # board power idle; None: a share of TDP (economics.yaml)
    peak_fp4_flop_per_s: float = 0.0  # dense NVFP4 peak; 0 where the device has no fp4 units
    pcie_bytes_per_s: float | None = None  # host link, one direction (offloading); None: unknown

    def __post_init__(self) -> None:
        for name in ("peak_bf16_flop_per_s", "peak_fp16_flop_per_s", "peak_fp32_flop_per_s",
                     "memory_bytes", "memory_bytes_per_s", "nvlink_bytes_per_s", "tdp_watts",
                     "price_per_hour_usd"):
            require_positive(f"gpu.{name}", getattr(self, name))
        if self.idle_watts is not None:
            require_number("gpu.idle_watts", self.idle_watts, 0, self.tdp_watts,
                           valid=f"the idle board power, from 0 to the TDP "
                           f"({self.tdp_watts:g} W)")
        require_number("gpu.peak_fp8_flop_per_s", self.peak_fp8_flop_per_s, 0,
                       valid="a number >= 0 (0 = no fp8)")
        require_number("gpu.peak_fp4_flop_per_s", self.peak_fp4_flop_per_s, 0,
                       valid="a number >= 0 (0 = no fp4)")
        if self.pcie_bytes_per_s is not None:
            require_positive("gpu.pcie_bytes_per_s", self.pcie_bytes_per_s)

    def peak_flop_per_s(self, precision: Precision) -> float:
        """Dense peak for the GEMM precision of a training run."""
        peak = {
            "bf16": self.peak_bf16_flop_per_s,
            "fp16": self.peak_fp16_flop_per_s,
            "fp8": self.peak_fp8_flop_per_s,
            "fp32": self.peak_fp32_flop_per_s,
            "fp4": self.peak_fp4_flop_per_s,
        }[precision]
        if peak <= 0:
            raise SpecError("training.precision", precision,
                            f"gpu {self.name} has no {precision} tensor cores",
                            _precisions_valid(self, precision))
        return peak


def _precisions_valid(device: DeviceSpec, precision: str) -> str:
    """The precisions `device` runs, and the catalog GPUs that have `precision`'s units."""
    from parasim.simulator import catalog  # the catalog builds DeviceSpecs: imported here

    own = ", ".join(p for p in PRECISIONS if p != precision and getattr(
        device, f"peak_{p}_flop_per_s") > 0)
    having = [name for name in catalog.names("gpus")
              if getattr(catalog.gpu(name), f"peak_{precision}_flop_per_s") > 0]
    return f"{own} on {device.name}; {precision} needs " + (
        ", ".join(having) if having else "a GPU with its tensor cores")


@dataclass(frozen=True, kw_only=True)
class LinkSpec:
    """A link kind: bandwidth one direction and the latency of one message (alpha)."""

    bytes_per_s: float  # one direction
    latency_s: float  # per message

    def __post_init__(self) -> None:
        require_positive("bytes_per_s", self.bytes_per_s)
        require_number("latency_s", self.latency_s, 0)


@dataclass(frozen=True, kw_only=True)
class NodeGroup:
    """Identical nodes: GPUs joined by NVLink/NVSwitch inside, NICs to the fabric outside."""

    gpu: DeviceSpec  # the GPU in every node of the group
    num_nodes: int  # nodes in this group
    gpus_per_node: int  # GPUs per node
    intra_node: LinkSpec  # per GPU, one direction (NVLink)
    inter_node: LinkSpec  # per NIC line rate, one direction
    nics_per_node: int  # NICs per node (one per GPU on rail-optimized fabrics)
    nvlink_domain_gpus: int | None = None  # GPUs joined by one NVLink switch fabric (a GB200
    #                                        NVL72 rack: 72 over 18 trays); None: the node
    host_memory_bytes: float | None = None  # CPU memory of one node (offloading); None: unknown
    cpu_adam_params_per_s: float = CPU_ADAM_PARAMS_PER_S  # one node's CPU Adam rate

    def __post_init__(self) -> None:
        if self.host_memory_bytes is not None:
            require_positive("cluster.host_memory_GiB", self.host_memory_bytes)
        require_positive("cluster.cpu_adam_params_per_s", self.cpu_adam_params_per_s)
        require_count("cluster.num_nodes", self.num_nodes)
        require_count("cluster.gpus_per_node", self.gpus_per_node)
        require_count("cluster.inter_node.nics_per_node", self.nics_per_node)
        if self.nvlink_domain_gpus is not None:
            self._check_domain()
        if self.num_gpus > MAX_GPUS:
            raise SpecError("cluster.num_nodes", self.num_nodes,
                            f"gives {self.num_nodes:,} x {self.gpus_per_node} = "
                            f"{self.num_gpus:,} GPUs, more than parasim models ({MAX_GPUS:,}; "
                            f"plan searches up to {MAX_PLAN_GPUS:,})",
                            f"num_nodes · gpus_per_node <= {MAX_GPUS:,} (plan: "
                            f"<= {MAX_PLAN_GPUS:,})")

    def _check_domain(self) -> None:
        """An NVLink domain is whole nodes, and the group is whole domains."""
        domain, g = self.nvlink_domain_gpus, self.gpus_per_node
        require_count("cluster.nvlink_domain_gpus", domain, maximum=MAX_GPUS)
        if domain % g:
            raise SpecError("cluster.nvlink_domain_gpus", domain, f"is not a whole number of "
                            f"{g}-GPU nodes", f"a multiple of gpus_per_node ({g}), e.g. "
                            f"{g * max(1, domain // g)}")
        if self.num_gpus % domain:
            nodes = domain // g
            raise SpecError("cluster.num_nodes", self.num_nodes, f"does not fill whole "
                            f"{domain}-GPU NVLink domains ({nodes} nodes each)",
                            f"a multiple of {nodes} nodes, e.g. "
                            f"{nodes * max(1, round(self.num_nodes / nodes))}")

    @property
    def num_gpus(self) -> int:
        return self.num_nodes * self.gpus_per_node

    @property
    def domain_gpus(self) -> int:
        """GPUs of one NVLink domain: `nvlink_domain_gpus`, or one node's."""
        return self.nvlink_domain_gpus or self.gpus_per_node


@dataclass(frozen=True, kw_only=True)
class ClusterSpec:
    """A cluster: node groups joined by one fabric."""

    name: str  # preset name or a label
    node_groups: tuple[NodeGroup, ...]  # ranks are numbered over the groups in this order
    topology: Topology = "fat-tree"  # how hosts are joined (simulator.topology)
    oversubscription: tuple[float, ...] = (1.0,)  # down:up bandwidth per tier: leaf, spine
    switch_radix: int = 64  # ports per fabric switch (NVIDIA Quantum-2 QM9700: 64 x 400 Gb/s)
    graph_file: str | None = None  # node-link JSON graph replacing the built fabric
    straggler_slowdown: float = 1.0  # one GPU this many times slower than its datasheet
    price_per_gpu_hour_usd: float | None = None  # override of the catalog price
    power_watts_per_gpu: float | None = None  # override of the catalog TDP
    facility: FacilitySpec = field(default_factory=default_facility)  # power, prices, failures
    planes: int = 1  # independent fabric planes: NIC i of a node on plane i mod planes

    def __post_init__(self) -> None:
        assert self.node_groups, "a cluster has at least one node group"
        if self.world_size > MAX_GPUS:
            raise SpecError("cluster.node_groups", f"{self.world_size:,} GPUs",
                            f"more GPUs than parasim models ({MAX_GPUS:,}; plan searches up "
                            f"to {MAX_PLAN_GPUS:,})", f"node groups of {MAX_GPUS:,} GPUs in "
                            f"all at most (plan: {MAX_PLAN_GPUS:,})")
        require_choice("cluster.topology", self.topology, TOPOLOGIES)
        if not self.oversubscription or len(self.oversubscription) > 2:
            raise SpecError("cluster.oversubscription", list(self.oversubscription),
                            "must be one or two ratios >= 1 (down:up bandwidth of leaf, spine)",
                            "e.g. 1, 4 or [4, 2]")
        for ratio in self.oversubscription:
            require_number("cluster.oversubscription", ratio, 1, 1000,
                           valid="one or two ratios from 1 to 1000 (down:up bandwidth of leaf, "
                           "spine), e.g. 1, 4 or [4, 2]")
        require_count("cluster.switch_radix", self.switch_radix, minimum=4, maximum=65536)
        require_number("cluster.straggler_slowdown", self.straggler_slowdown, 1, 100,
                       valid="a slowdown factor of one GPU from 1 (none) to 100")
        if self.price_per_gpu_hour_usd is not None:
            require_positive("cluster.price_per_gpu_hour", self.price_per_gpu_hour_usd)
        if self.power_watts_per_gpu is not None:
            require_positive("cluster.power_watts", self.power_watts_per_gpu)
        if self.planes != 1:
            self._check_planes()

    def _check_planes(self) -> None:
        """A multi-plane fabric splits every node's NICs evenly over the planes."""
        require_count("cluster.planes", self.planes, maximum=1024)
        if self.topology == "rail-only":
            raise SpecError("cluster.planes", self.planes, "rail-only already gives every NIC "
                            "its own fabric", "planes: 1 with rail-only, or fat-tree / "
                            "rail-optimized planes")
        for group in self.node_groups:
            nics = min(group.nics_per_node, group.gpus_per_node)  # bundled as the graph does
            if nics % self.planes:
                raise SpecError("cluster.planes", self.planes, f"does not divide the "
                                f"{nics} NICs of a {group.gpu.name} node evenly",
                                f"a divisor of {nics}")

    @property
    def max_domain_gpus(self) -> int:
        """The largest NVLink domain of the cluster's node groups."""
        return max(group.domain_gpus for group in self.node_groups)

    @property
    def world_size(self) -> int:
        return sum(group.num_gpus for group in self.node_groups)

    @property
    def num_nodes(self) -> int:
        return sum(group.num_nodes for group in self.node_groups)

    @property
    def is_homogeneous(self) -> bool:
        return len(self.node_groups) == 1

    def group_of_rank(self, rank: int) -> NodeGroup:
        """The node group that holds global rank `rank`."""
        assert 0 <= rank < self.world_size, rank
        for group in self.node_groups:
            if rank < group.num_gpus:
                return group
            rank -= group.num_gpus
        raise AssertionError("unreachable")
