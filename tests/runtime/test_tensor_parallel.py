"""Tensor and sequence parallelism (runtime.parallel.tensor) against the single-process oracle
(tests.runtime.oracle: losses of 3 AdamW steps, first-step gradients, final weights; its
docstring states and justifies the tolerances).

Cases cover every style of the plan: column/row-parallel linears with biases, key/value heads
split (GQA) and replicated (MQA, tp > kv heads), q/k norms, learned and rotary positions, tied
and untied vocabulary-parallel embedding/head, routed and shared experts split by ffn, and
sequence parallelism with LayerNorm and RMSNorm. All 2-rank cases run in one set of processes;
tp 2 x dp 2 runs on 4.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)  # tiny tensors; a 2nd thread only spins against other processes

import torch.nn.functional as F  # noqa: E402

from parasim.runtime.parallel.groups import Axis, build_groups  # noqa: E402
from parasim.runtime.parallel.tensor import (  # noqa: E402
    TP_PLAN, TensorParallel, check_tensor_parallel, style_of, vocab_parallel_cross_entropy)
from parasim.simulator.errors import SpecError  # noqa: E402
from parasim.simulator.layout import Layout  # noqa: E402
from tests.runtime.harness import run_ranks  # noqa: E402
from tests.runtime.oracle import (  # noqa: E402
    Scenario, check_scenario, gpt, llama, moe, results_of, run_scenarios)

TP2 = Layout(dp=1, tp=2)
TP2_SP = Layout(dp=1, tp=2, sequence_parallel=True, overlap_grad_reduce=True)
SCENARIOS = [
    Scenario(name="tp2-llama", spec=llama(), layout=TP2),
    Scenario(name="tp2-sp-gpt", spec=gpt(), layout=TP2_SP),
    Scenario(name="tp2-sp-mqa-qknorm", layout=TP2_SP,
             spec=llama(num_kv_heads=1, qk_norm=True, qkv_bias=True)),
    Scenario(name="tp2-sp-moe-full-recompute", spec=moe(linear_bias=True, shared_expert_gate=True),
             layout=Layout(dp=1, tp=2, sequence_parallel=True, recompute="full")),
]
TP2_DP2 = Scenario(name="tp2-sp-dp2-zero1", spec=llama(),
                   layout=Layout(dp=2, tp=2, sequence_parallel=True, zero_stage=1,
                                 overlap_grad_reduce=True))


def cross_entropy_case(rank: int) -> tuple[float, float, list, list]:
    """Vocabulary-parallel cross-entropy of this rank's half of the logits, and the loss and
    gradient of F.cross_entropy on the full logits."""
    groups = build_groups(TP2)
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 16, generator=generator) * 3
    labels = torch.randint(0, 16, (3, 5), generator=generator)
    full = logits.clone().requires_grad_()
    expected = F.cross_entropy(full.flatten(0, 1), labels.flatten())
    expected.backward()
    mine = logits.chunk(2, dim=-1)[rank].clone().requires_grad_()
    loss = vocab_parallel_cross_entropy(mine, labels, axis=groups.tp, vocab_start=8 * rank)
    loss.backward()
    return (loss.item(), expected.item(), mine.grad.tolist(),
            full.grad.chunk(2, dim=-1)[rank].tolist())


def run_all(rank: int) -> dict:
    return {"scenarios": run_scenarios(rank, SCENARIOS), "cross_entropy": cross_entropy_case(rank)}


@pytest.fixture(scope="module")
def outputs():
    return run_ranks(run_all, 2)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_tensor_parallel_matches_single_process(outputs, scenario):
    check_scenario(scenario, results_of([o["scenarios"] for o in outputs], scenario.name))


def test_vocab_parallel_cross_entropy_matches_full_logits(outputs):
    for loss, expected, grad, expected_grad in (o["cross_entropy"] for o in outputs):
        assert loss == pytest.approx(expected, rel=1e-6)
        torch.testing.assert_close(torch.tensor(grad), torch.tensor(expected_grad),
                                   rtol=1e-5, atol=1e-7)


def test_tp2_dp2_matches_single_process():
    """4 processes: tensor groups {0,1}, {2,3}; data groups {0,2}, {1,3} (Megatron order)."""
    check_scenario(TP2_DP2, results_of(run_ranks(run_scenarios, 4, [TP2_DP2]), TP2_DP2.name))


def test_plan_covers_every_parameter_of_every_family():
    """Every parameter of every model family lies in a module the plan names (a new module
    missing from TP_PLAN would silently stay replicated)."""
    from parasim.runtime.model import build_model
    for spec in (gpt(), llama(qk_norm=True), moe(linear_bias=True, shared_expert_gate=True)):
        for name, _ in build_model(spec).named_parameters():
            owner = name.rsplit(".", 1)[0]
            assert style_of(owner, TP_PLAN) is not None, name


def test_vocabulary_not_divisible_by_tp_is_a_spec_error():
    axis = Axis(name="tp", size=3, rank=0, ranks=(0, 1, 2), group=None)
    tp = TensorParallel(axis=axis, sequence_parallel=False, head_dim=8, kv_heads=2,
                        vocab_size=64)
    with pytest.raises(SpecError) as error:
        check_tensor_parallel(tp)
    assert error.value.field == "parallel.tp"
