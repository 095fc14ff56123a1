"""FacilitySpec: what surrounds a cluster and decides a run's days, dollars and energy —
electricity and cooling, prices, failures, checkpoint storage, restarts, spare nodes.

Defaults come from profiles/economics.yaml (each with its source); a job file overrides them
in its `cluster:` section (simulator/jobfile.py converts the file's units to the SI here).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from parasim import profiles
from parasim.simulator.checks import require_choice, require_count, require_non_negative, \
    require_number, require_positive
from parasim.simulator.energy import PowerModel
from parasim.simulator.yamlfile import load_data

Pricing = Literal["on-demand", "reserved"]
PRICINGS = ("on-demand", "reserved")
HOUR_S = 3600.0
KWH_J = 3.6e6


@dataclass(frozen=True, kw_only=True)
class FacilitySpec:
    """The data centre and operations around a cluster. Messages name the job-file fields."""

    pue: float  # facility energy / IT energy (cooling, power conversion), >= 1
    grid_kg_co2_per_j: float  # carbon intensity of the electricity
    pricing: Pricing = "on-demand"  # which price `cost_usd` uses
    reserved_discount: float = 0.35  # share off on-demand for reserved capacity
    reserved_price_per_gpu_hour_usd: float | None = None  # overrides the discount
    node_mtbf_s: float  # mean time between job-interrupting failures of one node
    gpu_mtbf_s: float | None = None  # optional extra per-GPU failure process
    checkpoint_write_bytes_per_s_per_node: float  # sharded checkpoint write (and read) rate
    restart_s: float  # relaunch after an interruption, before the checkpoint is read
    spare_nodes: int | None = None  # fixed pool's spares; None: failed nodes replaced at once
    repair_s: float  # repair of a failed node (used with spare_nodes)
    host_power_w_per_gpu: float  # host power per GPU slot (CPUs, memory, fans, NVSwitch)
    network_power_w_per_nic: float  # fabric power per NIC (switch share and optics)

    def __post_init__(self) -> None:
        for name, field in (("node_mtbf_s", "cluster.node_mtbf_hours"),
                            ("checkpoint_write_bytes_per_s_per_node",
                             "cluster.checkpoint_write_GBps_per_node"),
                            ("repair_s", "cluster.repair_hours")):
            require_positive(field, getattr(self, name))
        require_number("cluster.pue", self.pue, 1, 10, valid="facility over IT energy, from 1 "
                       "to 10, e.g. 1.1 (hyperscale) to 1.6 (industry average)")
        require_choice("cluster.pricing", self.pricing, PRICINGS)
        require_number("cluster.reserved_discount", self.reserved_discount, 0, 0.99,
                       valid="the share off on-demand, from 0 to 0.99")
        for name, field in (("reserved_price_per_gpu_hour_usd",
                             "cluster.reserved_price_per_gpu_hour"),
                            ("gpu_mtbf_s", "cluster.gpu_mtbf_hours")):
            if getattr(self, name) is not None:
                require_positive(field, getattr(self, name))
        require_non_negative("cluster.grid_gco2_per_kwh", self.grid_kg_co2_per_j)
        require_non_negative("cluster.restart_minutes", self.restart_s)
        require_non_negative("cluster.host_power_watts_per_gpu", self.host_power_w_per_gpu)
        require_non_negative("cluster.network_power_watts_per_nic", self.network_power_w_per_nic)
        if self.spare_nodes is not None:
            require_count("cluster.spare_nodes", self.spare_nodes, minimum=0)

    def reserved_price(self, on_demand_usd: float) -> float:
        """Reserved price of one GPU-hour: the job's, else on-demand less the discount."""
        if self.reserved_price_per_gpu_hour_usd is not None:
            return self.reserved_price_per_gpu_hour_usd
        return on_demand_usd * (1.0 - self.reserved_discount)


@lru_cache(maxsize=1)
def _economics() -> dict[str, Any]:
    with profiles.path("economics.yaml").open("r", encoding="utf-8") as f:
        return load_data(f)


@lru_cache(maxsize=1)
def default_facility() -> FacilitySpec:
    """The defaults of profiles/economics.yaml, in SI."""
    raw = _economics()
    facility, reliability, node = raw["facility"], raw["reliability"], raw["node_power"]
    return FacilitySpec(
        pue=facility["pue"],
        grid_kg_co2_per_j=facility["grid_gco2_per_kwh"] / 1000 / KWH_J,
        reserved_discount=facility["reserved_discount"],
        node_mtbf_s=reliability["node_mtbf_hours"] * HOUR_S,
        checkpoint_write_bytes_per_s_per_node=reliability["checkpoint_write_GBps_per_node"] * 1e9,
        restart_s=reliability["restart_minutes"] * 60.0,
        repair_s=reliability["repair_hours"] * HOUR_S,
        host_power_w_per_gpu=node["host_watts_per_gpu"],
        network_power_w_per_nic=node["network_watts_per_nic"],
    )


@lru_cache(maxsize=None)
def power_model(compute_saturation: float) -> PowerModel:
    """The GPU power constants of profiles/economics.yaml; `compute_saturation` is the
    attainable GEMM efficiency of the time model (profiles/analytic.yaml), so that power and
    time agree on what "running flat out" means."""
    raw = _economics()["gpu_power"]
    return PowerModel(compute_saturation=compute_saturation,
                      memory_dynamic_fraction=raw["memory_dynamic_fraction"],
                      waiting_dynamic_fraction=raw["waiting_dynamic_fraction"],
                      idle_fraction_of_tdp=raw["idle_fraction_of_tdp"])
