"""Expert load imbalance (simulator.moe_balance): Zipf router skew, EP pace, capacity drops."""

from __future__ import annotations

import pytest

from parasim.simulator.errors import SpecError
from parasim.simulator.moe_balance import ExpertLoad, expert_capacity, expert_load

# 64 experts top-8 on 8 EP ranks, 16384 tokens: 131072 slots, 2048 per expert on average.
E, K, EP, TOKENS = 64, 8, 8, 16384


def test_uniform_router_is_balanced_and_drops_nothing():
    """Skew 0 with many slots per expert: multinomial noise is ~1/sqrt(2048) per expert, less
    per rank (16384 slots), so the busiest rank is within a few percent of the fair share."""
    load = expert_load(E, K, EP, TOKENS, 0.0, None)
    assert load.pace_factor == pytest.approx(1.0, abs=0.03)
    assert load.pace_factor >= 1.0
    assert load.busiest_expert_factor == pytest.approx(1.0, abs=0.1)
    assert load.dropped_fraction == 0.0


def test_pace_grows_with_skew():
    skews = (0, 0.5, 1, 2)
    paces = [expert_load(E, K, EP, TOKENS, skew, None, seed=0).pace_factor for skew in skews]
    assert paces == sorted(paces) and len(set(paces)) == 4
    assert all(pace >= 1.0 for pace in paces)
    busiest = [expert_load(E, K, EP, TOKENS, skew, None).busiest_expert_factor for skew in skews]
    assert busiest == sorted(busiest)


def test_seed_determines_the_draw():
    a = expert_load(E, K, EP, TOKENS, 0.5, None, seed=3)
    expert_load.cache_clear()  # recompute rather than hit the cache
    assert expert_load(E, K, EP, TOKENS, 0.5, None, seed=3) == a
    b = expert_load(E, K, EP, TOKENS, 0.5, None, seed=4)
    assert b != a
    assert b.pace_factor == pytest.approx(a.pace_factor, rel=0.5)  # another draw, same regime


def test_capacity_one_drops_skewed_tokens_and_runs_at_capacity():
    """Capacity factor 1: each expert takes at most its fair share (2048 slots), so with skew 1
    the popular experts drop tokens, and drop-and-pad makes every expert compute exactly 2048
    slots: every rank runs at the balanced share, pace 1."""
    load = expert_load(E, K, EP, TOKENS, 1.0, 1.0)
    assert load.dropped_fraction > 0.0
    assert load.pace_factor == pytest.approx(1.0)
    assert load.busiest_expert_factor > 1.0  # measured before capping


def test_capacity_two_pays_for_padding():
    """Capacity factor 2 with a uniform router: no expert comes near 4096 slots, so nothing is
    dropped, but in drop-and-pad mode every expert's GEMM still runs on all 4096 slots (the
    routed ~2048 plus zero padding), so each rank computes twice the balanced share: a capacity
    factor above 1 buys fewer drops with padded compute, never speed."""
    assert expert_capacity(E, K, TOKENS, 2.0) == 4096
    load = expert_load(E, K, EP, TOKENS, 0.0, 2.0)
    assert load.dropped_fraction == pytest.approx(0.0, abs=1e-6)
    assert load.pace_factor == pytest.approx(2.0)


def test_one_expert_per_rank_paces_at_the_busiest_expert():
    for skew in (0.0, 0.5, 1.0):
        load = expert_load(E, K, E, TOKENS, skew, None)
        assert load.pace_factor == pytest.approx(load.busiest_expert_factor)


def test_contiguous_placement_on_one_rank_is_balanced():
    """ep=1: the one rank holds every expert and every slot, whatever the skew."""
    assert expert_load(E, K, 1, TOKENS, 2.0, None).pace_factor == pytest.approx(1.0)


@pytest.mark.parametrize("skew", [-1, 5, float("nan"), "high", True])
def test_router_skew_out_of_range_is_a_spec_error(skew):
    with pytest.raises(SpecError) as err:
        expert_load(E, K, EP, TOKENS, skew, None)
    assert err.value.field == "model.router_skew"
    assert "model.router_skew" in str(err.value)


def test_result_is_a_frozen_dataclass():
    load = expert_load(E, K, EP, TOKENS, 0.5, None)
    assert isinstance(load, ExpertLoad)
    with pytest.raises(AttributeError):
        load.pace_factor = 1.0  # type: ignore[misc]
