"""Job files: what a cluster leaves out comes from the catalog, a nested field overrides one
field of a preset, and every number goes through one check (issue 17)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from parasim.planner.space import MAX_COMBINATIONS, enumerate_space
from parasim.simulator import catalog
from parasim.simulator.checks import MAX_COUNT, divisors, require_count, require_number
from parasim.simulator.errors import SpecError
from parasim.simulator.jobfile import apply_override, job_from_mapping

MODEL = {"num_layers": 4, "hidden_size": 512, "num_attention_heads": 8, "num_kv_heads": 4,
         "ffn_hidden_size": 1536, "vocab_size": 32000}
TRAINING = {"seq_length": 1024, "global_batch_size": 64}


def build(cluster, parallel=None):
    raw = {"model": MODEL, "cluster": cluster, "training": TRAINING}
    if parallel is not None:
        raw["parallel"] = parallel
    return job_from_mapping(raw, base_dir=Path("."), source="test")


def group(cluster):
    return build(cluster).cluster.node_groups[0]


# Defaults from the catalog -----------------------------------------------------------------

def test_the_shortest_cluster_takes_its_node_from_the_gpu():
    short = group({"gpu": "h100-sxm", "num_nodes": 64, "gpus_per_node": 8})
    preset = group({"base": "dgx-h100", "num_nodes": 64})
    assert short.intra_node.bytes_per_s == catalog.gpu("h100-sxm").nvlink_bytes_per_s
    assert (short.intra_node, short.inter_node, short.nics_per_node, short.gpus_per_node) == \
        (preset.intra_node, preset.inter_node, preset.nics_per_node, preset.gpus_per_node)


def test_gpus_per_node_defaults_from_the_usual_node_too():
    assert group({"gpu": "mi250x", "num_nodes": 2}).gpus_per_node == 4  # frontier-mi250x


def test_a_gpu_mapping_on_a_base_takes_that_base_s_node_and_its_own_nvlink():
    g = group({"gpu": {"base": "h100-sxm", "nvlink_GBps": 100}, "num_nodes": 2})
    assert g.intra_node.bytes_per_s == 100e9
    assert g.inter_node.latency_s == pytest.approx(8e-6) and g.nics_per_node == 8


@pytest.mark.parametrize("gpu", catalog.names("gpus"))
def test_every_usual_node_is_a_preset(gpu):
    node = catalog.entries("gpus")[gpu].get("usual_node")
    assert node is None or node in catalog.entries("clusters")


def test_a_nested_field_overrides_one_field_of_the_preset():
    g = group({"base": "dgx-h100", "num_nodes": 4,
               "inter_node": {"bandwidth_Gbps": 200, "nics_per_node": 4}})
    assert g.inter_node.bytes_per_s == 200e9 / 8 and g.nics_per_node == 4
    assert g.inter_node.latency_s == pytest.approx(8e-6)  # the preset's
    assert g.intra_node.bytes_per_s == 450e9


def test_set_inside_a_preset_name_keeps_the_rest():
    raw = {"model": MODEL, "cluster": "dgx-h100", "training": TRAINING,
           "parallel": {"tp": 8, "dp": 2}}
    apply_override(raw, "cluster.inter_node.latency_us=5")
    g = job_from_mapping(raw, base_dir=Path("."), source="test").cluster.node_groups[0]
    assert g.inter_node.latency_s == pytest.approx(5e-6) and g.nics_per_node == 8


def test_a_gpu_without_a_usual_node_says_every_field_to_set():
    with pytest.raises(SpecError) as err:
        group({"gpu": "mi300x", "num_nodes": 2})
    message = str(err.value)
    for fragment in ("gpus_per_node", "intra_node.latency_us", "inter_node", "dgx-h100"):
        assert fragment in message
    assert "DESIGN" not in message


def test_a_list_where_a_preset_name_goes():
    with pytest.raises(SpecError, match=r"cluster\.base=\['dgx-h100'\]: must be a cluster name"):
        group({"base": ["dgx-h100"], "num_nodes": 2})


# Numbers -------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, why", [
    (math.nan, "must be a finite number"), (math.inf, "must be a finite number"),
    (-1, "must be positive"), (0, "must be positive"), ("4", "must be a number"),
    (True, "must be a number"), (None, "missing"), (10**400, "must be a finite number"),
])
def test_require_number_refuses(value, why):
    with pytest.raises(SpecError, match=why):
        require_number("x", value, 0, above=True)


def test_require_number_states_the_range():
    with pytest.raises(SpecError, match="valid: a number from 1 to 10$"):
        require_number("cluster.pue", 11, 1, 10)
    assert require_number("x", 3, 1, 10) == 3.0


def test_counts_are_bounded_and_huge_values_are_shown_short():
    with pytest.raises(SpecError, match=r"model\.hidden_size=1\.000e\+60: is too large"):
        require_count("model.hidden_size", 10**60)
    require_count("x", MAX_COUNT)


def test_divisors_are_fast_and_right():
    assert divisors(36) == [1, 2, 3, 4, 6, 9, 12, 18, 36]
    assert divisors(2**40)[-1] == 2**40


@pytest.mark.parametrize("key, value", [
    ("cluster.inter_node.latency_us", math.nan), ("cluster.pue", math.inf),
    ("cluster.price_per_gpu_hour", math.nan), ("cluster.node_mtbf_hours", math.inf),
    ("training.tokens", math.nan), ("cluster.oversubscription", math.nan),
])
def test_job_numbers_are_finite(key, value):
    raw = {"model": MODEL, "cluster": {"base": "dgx-h100", "num_nodes": 2},
           "training": TRAINING, "parallel": {"tp": 2}}
    apply_override(raw, f"{key}=.nan" if math.isnan(value) else f"{key}=.inf")
    with pytest.raises(SpecError, match=key.rsplit(".", 1)[-1]):
        job_from_mapping(raw, base_dir=Path("."), source="test")


# The planner's bounds --------------------------------------------------------------------------

def test_a_space_too_large_to_search_is_refused_at_once():
    many = 720720  # 240 divisors: as many tensor- and expert-parallel choices
    model = {**MODEL, "num_attention_heads": many, "hidden_size": many, "num_kv_heads": many,
             "ffn_hidden_size": many, "num_experts": many, "experts_per_token": 2,
             "moe_ffn_hidden_size": many}
    job = job_from_mapping({"model": model, "cluster": {"base": "dgx-h100", "num_nodes": 2},
                            "training": TRAINING}, base_dir=Path("."), source="test")
    with pytest.raises(SpecError, match=f"more than plan searches \\({MAX_COMBINATIONS:,}\\)"):
        enumerate_space(job, {})


def test_reject_reasons_keep_their_digits():
    job = build({"base": "dgx-h100", "num_nodes": 2})
    reasons = list(enumerate_space(job, {}).rejected)
    assert reasons and not any("N·N" in r or "NfNb" in r for r in reasons)
    assert any(char.isdigit() for r in reasons for char in r)
