"""Layout: default layer split, strides, schedule checks."""

from __future__ import annotations

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
