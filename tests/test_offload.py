"""CPU offload (`parallel.offload`): ZeRO-Offload's optimizer on the host (Ren et al. 2021) and
Transformer Engine / Megatron-Core activation offload: memory on the GPU and the host, the host
memory limit, PCIe and CPU Adam time, validation, export, and the planner's use of it."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

from parasim.report import format_estimate
from parasim.planner.export import export_layout
from parasim.planner.plan import layout_mapping
from parasim.planner.search import search
from parasim.simulator import catalog
from parasim.simulator.errors import Infeasible, SpecError
from parasim.simulator.hardware import CPU_ADAM_PARAMS_PER_S
from parasim.simulator.jobfile import job_from_mapping
from parasim.simulator.layout import Layout, Offload
from parasim.simulator.memory import offloaded_activations
from parasim.simulator.offload import block_exposed_s, optimizer_times_s
from parasim.simulator.predict import predict

GiB = 2**30


def _job(parallel: dict, cluster: dict | None = None, **training):
    raw = {"model": "llama3-8b",
           "cluster": cluster or {"base": "dgx-h100", "num_nodes": 2},
           "training": {"seq_length": 4096, "global_batch_size": 64, **training},
           "parallel": {"tp": 2, "pp": 1, "zero_stage": 1, "sequence_parallel": True,
                        **parallel}}
    return job_from_mapping(raw, base_dir=Path("."), source="test")


# Catalog and CPU Adam source ------------------------------------------------------------------


def test_catalog_links_and_host_memory_are_the_datasheets():
    """H100 SXM PCIe Gen5 x16 = 64 GB/s and A100 Gen4 = 32 GB/s one direction; DGX H100 and
    DGX B200 2 TB, DGX A100 640GB 2 TB of system memory."""
    assert catalog.gpu("h100-sxm").pcie_bytes_per_s == 64e9
    assert catalog.gpu("a100-80gb").pcie_bytes_per_s == 32e9
    assert catalog.entry("clusters", "dgx-h100", "c")["host_memory_GiB"] == 2048
    assert catalog.entry("clusters", "dgx-b200", "c")["host_memory_GiB"] == 2048
    assert catalog.entry("clusters", "dgx-a100", "c")["host_memory_GiB"] == 2048


def test_cpu_adam_rate_is_deepspeeds_measurement():
    """DeepSpeed PR #735: CPU Adam updates an 11.6B-parameter GPT-2 in 8.2 s."""
    assert CPU_ADAM_PARAMS_PER_S * 8.2 == pytest.approx(11.6e9)


# Times -----------------------------------------------------------------------------------------


def test_optimizer_traffic_is_zero_offloads_4m_per_step():
    """ZeRO-Offload §3: 2M bytes of fp16 gradients down and 2M of fp16 parameters up per
    step for M parameters; the CPU update of a node's 8 shards at the node's CPU Adam rate."""
    device, group = catalog.gpu("h100-sxm"), _job({}).cluster.node_groups[0]
    down, cpu, up = optimizer_times_s(1e9, 2, 2, device, group)
    assert (down + up) * 64e9 == pytest.approx(4e9)
    assert cpu == pytest.approx(8 * 1e9 / CPU_ADAM_PARAMS_PER_S)
    down32, _, _ = optimizer_times_s(1e9, 2, 4, device, group)  # fp32 gradient buffer
    assert down32 == pytest.approx(4e9 / 64e9)


def test_activation_copy_shows_only_past_the_blocks_compute():
    device = catalog.gpu("h100-sxm")
    assert block_exposed_s(6.4e9, 0.05, device) == pytest.approx(0.1 - 0.05)
    assert block_exposed_s(6.4e9, 0.2, device) == 0.0


def test_offloaded_step_adds_the_cpu_update_and_shows_the_copies():
    plain = predict(_job({}))
    moved = predict(_job({"offload": {"optimizer": True}}))
    shard = 8.03e9 / 2 / 8  # llama3-8b over tp 2, ZeRO-1 over dp 8 (about)
    assert moved.breakdown.optimizer_s == pytest.approx(8 * shard / CPU_ADAM_PARAMS_PER_S,
                                                        rel=0.05)
    assert moved.step_time_s > plain.step_time_s
    acts = predict(_job({"offload": {"activations": True}}))
    assert acts.breakdown.offload_s >= 0
    assert acts.step_time_s == pytest.approx(sum(acts.breakdown.as_dict().values()))


# Memory ----------------------------------------------------------------------------------------


def test_optimizer_offload_moves_the_states_and_a_gradient_copy_to_the_host():
    plain = predict(_job({})).stages[0]
    moved = predict(_job({"offload": {"optimizer": True}})).stages[0]
    assert moved.optimizer_bytes == 0
    assert moved.weights_bytes == plain.weights_bytes
    assert moved.gradients_bytes == plain.gradients_bytes
    per_gpu = plain.optimizer_bytes * (1 + 4 / 12)  # fp32 master + moments, fp32 gradients
    assert moved.node_host_bytes == pytest.approx(8 * per_gpu)
    assert plain.node_host_bytes == 0 and plain.host_capacity_bytes is None


def test_activation_offload_keeps_each_chunks_last_block_and_one_in_transit():
    gpu, host = offloaded_activations(10e9, 10, 1, 4)
    assert (gpu, host) == (pytest.approx(4e9 + 1e9), pytest.approx(36e9))
    gpu2, host2 = offloaded_activations(10e9, 10, 2, 4)  # two virtual stages keep two
    assert host2 == pytest.approx(32e9)


def test_activation_offload_frees_gpu_memory_into_the_host():
    plain = predict(_job({})).stages[0]
    moved = predict(_job({"offload": {"activations": True}})).stages[0]
    assert moved.activations_bytes < plain.activations_bytes / 4
    assert moved.node_host_bytes > 0


def test_host_memory_limit_refuses_the_layout_with_the_numbers():
    job = _job({"offload": {"optimizer": True, "activations": True}},
               cluster={"base": "dgx-h100", "num_nodes": 2, "host_memory_GiB": 16})
    p = predict(job)
    assert not p.fits and not p.stages[0].host_fits
    assert p.stages[0].peak_bytes <= p.stages[0].capacity_bytes  # the GPU alone would fit
    text = format_estimate(job, p)
    node = p.stages[0].node_host_bytes / GiB
    assert f"host memory {node:.1f} GiB of 16 GiB per node offloaded: DOES NOT FIT" in text
    assert "offload optimizer, activations" in text


def test_offload_needs_the_host_memory_and_the_link():
    with pytest.raises(SpecError, match="host_memory_GiB"):
        predict(_job({"offload": {"optimizer": True}},
                     cluster={"base": "hgx-h200", "num_nodes": 2}))
    job = _job({"offload": {"optimizer": True}})
    group = job.cluster.node_groups[0]
    unknown = replace(group, gpu=replace(group.gpu, pcie_bytes_per_s=None))
    with pytest.raises(SpecError, match="pcie_GBps"):
        predict(replace(job, cluster=replace(job.cluster, node_groups=(unknown,))))


# Validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize("parallel, field", [
    ({"offload": "yes"}, "parallel.offload"),
    ({"offload": {"optimizer": "yes"}}, "parallel.offload.optimizer"),
    ({"offload": {"optimizer": float("nan")}}, "parallel.offload.optimizer"),
    ({"offload": {"weights": True}}, "parallel.offload.weights"),
])
def test_bad_offload_fields(parallel, field):
    with pytest.raises(SpecError) as err:
        _job(parallel)
    assert err.value.field == field


@pytest.mark.parametrize("cluster, field", [
    ({"host_memory_GiB": float("nan")}, "cluster.host_memory_GiB"),
    ({"host_memory_GiB": -1}, "cluster.host_memory_GiB"),
    ({"host_memory_GiB": "lots"}, "cluster.host_memory_GiB"),
    ({"cpu_adam_params_per_s": 0}, "cluster.cpu_adam_params_per_s"),
    ({"gpu": {"base": "h100-sxm", "pcie_GBps": -64}}, "cluster.gpu.pcie_GBps"),
    ({"gpu": {"base": "h100-sxm", "pcie_GBps": float("inf")}}, "cluster.gpu.pcie_GBps"),
])
def test_bad_host_fields(cluster, field):
    with pytest.raises(SpecError) as err:
        _job({}, cluster={"base": "dgx-h100", "num_nodes": 2, **cluster})
    assert err.value.field == field


def test_host_fields_override_the_preset():
    job = _job({}, cluster={"base": "dgx-h100", "num_nodes": 2, "host_memory_GiB": 1024,
                            "cpu_adam_params_per_s": 3e9,
                            "gpu": {"base": "h100-sxm", "pcie_GBps": 32}})
    group = job.cluster.node_groups[0]
    assert group.host_memory_bytes == 1024 * GiB and group.cpu_adam_params_per_s == 3e9
    assert group.gpu.pcie_bytes_per_s == 32e9


# Plan files and export -------------------------------------------------------------------------


def test_plan_file_mapping_carries_offload():
    layout = Layout(tp=2, dp=8, offload=Offload(optimizer=True))
    mapping = layout_mapping(layout)
    assert mapping["offload"] == {"optimizer": True, "activations": False}
    assert Layout(**mapping) == layout


# Megatron-LM commit d98e8a6, megatron/training/arguments.py: `--optimizer-cpu-offload`,
# `--optimizer-offload-fraction`, `--overlap-cpu-optimizer-d2h-h2d`,
# `--use-precision-aware-optimizer` (its add_argument calls) and `--cpu-offloading-num-layers`
# (the TransformerConfig field cpu_offloading_num_layers, not excluded from the flags).
MEGATRON_OFFLOAD_FLAGS = {"--optimizer-cpu-offload", "--optimizer-offload-fraction",
                          "--overlap-cpu-optimizer-d2h-h2d", "--use-precision-aware-optimizer",
                          "--cpu-offloading-num-layers"}


def test_megatron_export_of_offload():
    text = export_layout(_job({"offload": {"optimizer": True}}), "megatron")
    assert "--optimizer-cpu-offload" in text and "--optimizer-offload-fraction 1.0" in text
    assert "--use-precision-aware-optimizer" in text and "--overlap-cpu-optimizer-d2h-h2d" in text
    text = export_layout(_job({"offload": {"activations": True}}), "megatron")
    assert "--cpu-offloading-num-layers 31" in text  # llama3-8b: 32 layers, all but the last
    used = {word for word in text.split() if word.startswith("--")}
    assert used & MEGATRON_OFFLOAD_FLAGS == {"--cpu-offloading-num-layers"}


def test_megatron_refuses_activation_offload_with_pipelines_or_recompute():
    for parallel in ({"pp": 2}, {"recompute": "selective"}):
        with pytest.raises(SpecError, match="parallel.offload.activations=false"):
            export_layout(_job({"offload": {"activations": True}, **parallel}), "megatron")


def test_torchtitan_refuses_offload():
    with pytest.raises(SpecError) as err:
        export_layout(_job({"offload": {"optimizer": True}, "zero_stage": 3}), "torchtitan")
    assert "enable_cpu_offload" in err.value.why
    assert "\n" not in str(err.value)


# Planner ---------------------------------------------------------------------------------------


def test_planner_offloads_only_when_nothing_else_fits():
    """Llama 3 8B on one H100: its model states (8B x 18 bytes) exceed 80 GB under any layout,
    so the plan keeps the optimizer on the host; on two 8-GPU nodes it fits without, and no
    ranked layout offloads."""
    one = job_from_mapping({"model": "llama3-8b",
                            "cluster": {"base": "dgx-h100", "num_nodes": 1, "gpus_per_node": 1},
                            "training": {"seq_length": 4096, "global_batch_size": 4}},
                           base_dir=Path("."), source="one-gpu")
    result = search(one, {})
    assert result.chosen.layout.offload.optimizer
    assert result.chosen.prediction.fits
    roomy = _job({})
    ranked = search(roomy, {"tp": 2, "pp": 1}).ranked
    assert ranked and not any(s.layout.offload.any for s in ranked)


def test_planner_respects_a_fixed_offload():
    with pytest.raises(Infeasible):
        search(job_from_mapping({"model": "llama3-8b",
                                 "cluster": {"base": "dgx-h100", "num_nodes": 1,
                                             "gpus_per_node": 1},
                                 "training": {"seq_length": 4096, "global_batch_size": 4}},
                                base_dir=Path("."), source="x"),
               {"offload": {"optimizer": False, "activations": False}})
    assert math.isfinite(predict(_job({"offload": {"optimizer": True}})).step_time_s)
