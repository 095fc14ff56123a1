"""Layout: default layer split, strides, schedule checks."""

from __future__ import annotations

from dataclasses import replace

import pytest

from parasim.simulator.errors import SpecError
from parasim.simulator.layout import Layout, default_stage_layers


def test_llama3_405b_split():
    """Llama 3 paper §3.3.2: 126 layers on 16 stages, first and last one layer lighter."""
    assert default_stage_layers(126, 16) == (7,) + (8,) * 14 + (7,)


@pytest.mark.parametrize("layers, stages, expected", [
    (32, 4, (8, 8, 8, 8)),
    (10, 4, (2, 3, 3, 2)),
    (9, 4, (2, 2, 3, 2)),
    (5, 5, (1, 1, 1, 1, 1)),
    (7, 1, (7,)),
])
def test_default_split_keeps_ends_lighter(layers, stages, expected):
    split = default_stage_layers(layers, stages)
    assert split == expected and sum(split) == layers


@pytest.mark.parametrize("kwargs, field", [
    ({"vpp": 2}, "parallel.vpp"),
    ({"schedule": "interleaved"}, "parallel.schedule"),
    ({"order": "tp-dp-pp"}, "parallel.order"),
    ({"zero_stage": 4}, "parallel.zero_stage"),
    ({"recompute": "some"}, "parallel.recompute"),
])
def test_bad_layouts_name_the_field(kwargs, field):
    with pytest.raises(SpecError, match=field.replace(".", r"\.")):
        Layout(**kwargs)


BASE = Layout(tp=2, pp=2, stages=[3, 5], zero_stage=1, recompute="selective")


@pytest.mark.parametrize("changes", [
    {"dp": 4},
    {"pp": 4, "vpp": 2, "schedule": "interleaved", "stages": None, "micro_batch_size": 2},
    {"stages": [4, 4], "full_recompute_layers": [1, 0], "offload": {"optimizer": True}},
    {"zero_stage": 3, "zero_pp": True, "recompute_modules": ["core_attn", "layernorm"]},
    {"tp": 2},  # the same value: nothing changes
])
def test_evolve_is_replace(changes):
    """Layout.evolve, the planner's cheap replace: the same layout, lists made tuples and a
    mapping an Offload as when the layout is built."""
    assert BASE.evolve(**changes) == replace(BASE, **changes)
    assert hash(BASE.evolve(**changes)) == hash(replace(BASE, **changes))


@pytest.mark.parametrize("changes", [
    {"pp": 0, "tp": 0},  # both wrong: the first field's error, whatever the keyword order
    {"micro_batch_size": 2.5, "cp_style": "star", "tp": True},
    {"vpp": 2},  # the checks between fields: vpp needs the interleaved schedule
    {"schedule": "dualpipe", "pp": 3},
    {"zero_pp": True},
    {"recompute": "none", "recompute_modules": ["core_attn"]},  # they are for selective
    {"recompute": "full", "full_recompute_layers": [1, 0]},
    {"full_recompute_layers": [1, 9, 9]},  # right for a layout (resolve_layout checks it)
    {"stages": [8, 0]},
])
def test_evolve_refuses_what_replace_refuses(changes):
    try:
        expected = replace(BASE, **changes)
    except SpecError as err:
        with pytest.raises(SpecError) as caught:
            BASE.evolve(**changes)
        assert str(caught.value) == str(err) and caught.value.field == err.field
    else:
        assert BASE.evolve(**changes) == expected


def test_evolve_refuses_an_unknown_field():
    with pytest.raises(TypeError, match="no field 'tensor_parallel'"):
        BASE.evolve(tensor_parallel=2)
