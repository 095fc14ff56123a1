"""Expert parallelism (runtime.parallel.expert) against the single-process oracle
(tests.runtime.oracle states the tolerances): all-to-all dispatch and combine, expert
gradients over the expert-data-parallel group, capacity dropping identical on both sides,
ZeRO-1 shards of expert weights over edp.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)  # tiny tensors; a 2nd thread only spins against other processes

from parasim.runtime.parallel.expert import expert_major_order  # noqa: E402
from parasim.simulator.layout import Layout  # noqa: E402
from tests.runtime.harness import run_ranks  # noqa: E402
from tests.runtime.oracle import (  # noqa: E402
    Scenario, check_scenario, moe, results_of, run_scenarios)

SCENARIOS = [
    Scenario(name="ep2-dp2-moe", spec=moe(), layout=Layout(dp=2, ep=2, overlap_grad_reduce=True)),
    Scenario(name="ep2-dp2-top1-capacity-zero1", layout=Layout(dp=2, ep=2, zero_stage=1),
             spec=moe(experts_per_token=1, capacity_factor=1.0, num_shared_experts=0,
                      activation="gelu", linear_bias=True)),
    Scenario(name="dp2-ep1-moe-zero1", spec=moe(num_experts=2), layout=Layout(dp=2, zero_stage=1)),
]


@pytest.fixture(scope="module")
def outputs():
    return run_ranks(run_scenarios, 2, SCENARIOS)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_expert_parallel_matches_single_process(outputs, scenario):
    check_scenario(scenario, results_of(outputs, scenario.name))


def test_expert_major_order_regroups_arrivals_by_expert():
    """Arrivals: source 0 sent 2 tokens for expert 0 and 1 for expert 1; source 1 sent 1 and
    2. Expert-major: e0 from s0 (rows 0, 1), e0 from s1 (row 3), e1 from s0 (row 2), e1 from s1
    (rows 4, 5)."""
    received = torch.tensor([[2, 1], [1, 2]])
    assert expert_major_order(received).tolist() == [0, 1, 3, 2, 4, 5]


@pytest.mark.slow
def test_cp2_dp2_ep4_matches_single_process():
    """4 processes: experts over the whole dp·cp = 4 ranks, sequences split over cp."""
    scenario = Scenario(name="cp2-dp2-ep4-zero1", spec=moe(),
                        layout=Layout(dp=2, cp=2, ep=4, zero_stage=1))
    check_scenario(scenario, results_of(run_ranks(run_scenarios, 4, [scenario]), scenario.name))
