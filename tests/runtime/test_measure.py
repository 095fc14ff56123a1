"""runtime/measure.py: the step time is the slowest rank's, summarised by median and deciles.

Oracles: hand-computed maxima, medians and deciles of small series (statistics' inclusive
quantiles interpolate linearly between order statistics: p10 of 1..11 is 2).
"""

from __future__ import annotations

import hashlib
import json

import pytest

from parasim.runtime.errors import MeasurementError
from parasim.runtime.measure import (RankMeasurement, Spread, measurement, pooled,
                             write_measurement)
from parasim.simulator.errors import SpecError


def ranks() -> list[RankMeasurement]:
    return [RankMeasurement((1.0, 4.0, 2.0), 10.0, {"forward": 0.5}, losses=(5.0, 4.0, 3.0)),
            RankMeasurement((3.0, 1.0, 2.5), 30.0, {"forward": 0.7})]


def test_spread_of_a_series():
    spread = Spread.of(tuple(float(t) for t in range(1, 12)))
    assert (spread.median_s, spread.p10_s, spread.p90_s, spread.min_s, spread.max_s) == \
        (6.0, 2.0, 10.0, 1.0, 11.0)
    one = Spread.of((0.5,))
    assert one.median_s == one.p10_s == one.p90_s == 0.5


def test_the_step_time_is_the_slowest_rank_per_step(tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text("{}", encoding="utf-8")
    measured = measurement(ranks(), plan_path=plan, steps=3, warmup_steps=2)
    assert measured.step_times_s == (3.0, 4.0, 2.5)
    assert measured.step_time.median_s == 3.0 and measured.peak_bytes == 30.0
    data = measured.to_json()
    assert data["step_time_s"] == 3.0 and data["step_times_s"] == [3.0, 4.0, 2.5]
    assert data["plan_sha256"] == hashlib.sha256(b"{}").hexdigest()
    assert data["ranks"][1] == {"rank": 1, "step_times_s": [3.0, 1.0, 2.5], "losses": [],
                                "peak_bytes": 30.0, "memory_bytes": {},
                                "phase_s": {"forward": 0.7}}
    assert data["losses"] == [5.0, 4.0, 3.0]  # rank 1 holds no loss (not the last stage)
    assert (data["schema_version"], data["world_size"], data["steps"],
            data["warmup_steps"]) == (1, 2, 3, 2)
    out = tmp_path / "MEASUREMENT.json"
    write_measurement(out, measured)
    assert json.loads(out.read_text(encoding="utf-8"))["step_times_s"] == [3.0, 4.0, 2.5]


def test_the_loss_of_a_step_is_the_mean_over_the_ranks_that_hold_one(tmp_path):
    """Data-parallel replicas each see their share of the batch: the batch's loss is their
    mean (equal shares)."""
    plan = tmp_path / "plan.json"
    plan.write_text("{}", encoding="utf-8")
    two = [RankMeasurement((1.0, 1.0), 1.0, {}, losses=(6.0, 2.0)),
           RankMeasurement((1.0, 1.0), 1.0, {}, losses=(4.0, 3.0)),
           RankMeasurement((1.0, 1.0), 1.0, {})]
    assert measurement(two, plan_path=plan, steps=2, warmup_steps=0).losses == (5.0, 2.5)


@pytest.mark.parametrize("result, why", [
    ({"step_times_s": (1.0,)}, "rank 1 returned a dict, not a RankMeasurement"),
    (RankMeasurement((1.0, 2.0), 1.0, {}), "rank 1 measured 2 step times"),
    (RankMeasurement((1.0, 0.0, 2.0), 1.0, {}), "not 3 positive ones"),
])
def test_a_trainer_that_measured_something_else(tmp_path, result, why):
    plan = tmp_path / "plan.json"
    plan.write_text("{}", encoding="utf-8")
    with pytest.raises(MeasurementError, match=why):
        measurement([ranks()[0], result], plan_path=plan, steps=3, warmup_steps=0)


def test_pooled_runs_keep_each_runs_slowest_rank_per_step(tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text("{}")
    first = measurement(ranks(), plan_path=plan, steps=3, warmup_steps=1,
                        emulation={"nodes": 2, "measured_inter_node_Gbps": 0.9})
    second = measurement([RankMeasurement((5.0,), 20.0, {"forward": 0.9}),
                          RankMeasurement((6.0,), 10.0, {"forward": 1.1})],
                         plan_path=plan, steps=1, warmup_steps=1,
                         emulation={"nodes": 2, "measured_inter_node_Gbps": 1.1})
    both = pooled([first, second])
    assert both.step_times_s == (3.0, 4.0, 2.5, 6.0)  # per run: the slowest rank of each step
    assert [r.phase_s for r in both.ranks] == [{"forward": pytest.approx(0.7)},
                                               {"forward": pytest.approx(0.9)}]
    assert both.peak_bytes == 30.0
    assert both.emulation == {"nodes": 2, "measured_inter_node_Gbps": pytest.approx(1.0)}
    assert pooled([first]) is first


def test_an_out_path_that_cannot_be_written(tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text("{}", encoding="utf-8")
    measured = measurement(ranks(), plan_path=plan, steps=3, warmup_steps=0)
    with pytest.raises(SpecError, match="--out=.*cannot write"):
        write_measurement(tmp_path / "missing" / "MEASUREMENT.json", measured)
