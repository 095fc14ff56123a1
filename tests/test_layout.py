"""Layout: default layer split, strides, schedule checks."""

from __future__ import annotations

import pytest

from simulator.errors import SpecError
from simulator.layout import Layout, default_stage_layers


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


def test_strides_follow_the_order():
    layout = Layout(tp=8, cp=2, pp=4, dp=16)
    assert [layout.stride(a) for a in ("tp", "cp", "dp", "pp")] == [1, 8, 16, 256]
    swapped = Layout(tp=8, cp=2, pp=4, dp=16, order="tp-pp-dp-cp")
    assert [swapped.stride(a) for a in ("tp", "pp", "dp", "cp")] == [1, 8, 32, 512]


def test_expert_stride_folds_cp_into_dp():
    layout = Layout(tp=2, cp=2, dp=4, ep=4, pp=2)
    assert layout.expert_stride() == 2  # tp-ep-edp-pp with edp = dp·cp/ep = 2


def test_stage_ranks_for_pp_outermost_and_inner():
    outer = Layout(tp=2, pp=2, dp=2)
    assert list(outer.stage_ranks(1)) == [4, 5, 6, 7]
    inner = Layout(tp=2, pp=2, dp=2, order="tp-pp-cp-dp")
    assert list(inner.stage_ranks(1)) == [2, 3, 6, 7]


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
