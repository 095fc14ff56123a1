"""The oracle of the parallel tests: a single-process reference run on the same seed and data.

A scenario (model spec + layout) is trained for STEPS steps of AdamW on seeded random tokens,
once by `parallel_run` on every rank (through `tests.runtime.harness.run_ranks`) and once by
`reference_run` here in the test process with `torch.optim.AdamW` (an optimizer independent of
ours). Each rank reports the global mean loss of every step and its final local weights; the
expected local weights are the reference's final weights sliced by the same layout for that
rank (`expected_shards`: the sharding functions need no process group to slice).

The reference feeds each data-parallel rank's sequences as a separate micro-batch and averages
the micro-batch losses, which is the data-parallel objective; it equals the whole-batch mean
loss except where tokens interact across sequences in a batch (MoE capacity dropping, which is
per rank, as in Megatron-Core).

Tolerances (fp32): the parallel run sums the same products in a different order (split
matmuls summed over tp, gradients summed over dp, the online softmax of ring attention, the
reduction order of all-reduce), each a relative change of a few fp32 epsilons (1.2e-7) per
value; over a few layers and three AdamW steps these stay near 1e-6 relative. AdamW divides
by sqrt(v) + eps, so a gradient near zero can turn a 1e-7 absolute difference into an update
difference of up to lr·(difference / eps) in the worst case: hence an absolute floor. LOSS_TOL
and WEIGHT_TOL leave about two orders of magnitude between the errors measured (reported by
the tests' failure messages) and the bound, while a wrong sharding, a missing reduction or a
wrong scale moves losses by > 1e-3 and weights by about lr.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from parasim.runtime.model import Chunk, build_model
from parasim.runtime.parallel.apply import local_batch, parallelize
from parasim.runtime.parallel.data import DistributedAdamW, GradSync, average_loss
from parasim.runtime.parallel.expert import shard_experts
from parasim.runtime.parallel.groups import Axis, build_groups
from parasim.runtime.parallel.tensor import TensorParallel, apply_plan
from parasim.simulator.layout import Layout
from parasim.simulator.model import ModelSpec
from parasim.simulator.placement import axis_groups
from tests.runtime.harness import to_numpy

STEPS = 3
LR = 1e-3  # three steps move every weight by ~3e-3, 300x WEIGHT_TOL["atol"]
WEIGHT_DECAY = 0.01
EPS = 1e-6  # see the docstring: bounds the amplification of gradient rounding noise
SEED = 1234
LOSS_TOL = {"rtol": 1e-5, "atol": 1e-6}
WEIGHT_TOL = {"rtol": 1e-4, "atol": 1e-5}
GRADIENT_TOL = {"rtol": 1e-4, "atol": 1e-6}


def llama(**overrides: Any) -> ModelSpec:
    """Tiny Llama-family model: GQA (4 query, 2 kv heads), RoPE, RMSNorm, SwiGLU, untied."""
    fields = dict(name="tiny-llama", num_layers=2, hidden_size=32, num_attention_heads=4,
                  num_kv_heads=2, ffn_hidden_size=48, vocab_size=64)
    return ModelSpec(**{**fields, **overrides})


def gpt(**overrides: Any) -> ModelSpec:
    """Tiny GPT-family model: MHA, learned positions, LayerNorm, GeLU, biases, tied head."""
    fields = dict(name="tiny-gpt", num_layers=2, hidden_size=32, num_attention_heads=4,
                  ffn_hidden_size=64, vocab_size=64, activation="gelu", norm="layernorm",
                  position_embedding="learned", max_position_embeddings=64,
                  tied_embeddings=True, linear_bias=True)
    return ModelSpec(**{**fields, **overrides})


def moe(**overrides: Any) -> ModelSpec:
    """Tiny MoE: 4 experts, top-2, a shared expert, the first layer dense."""
    fields = dict(num_layers=2, num_experts=4, experts_per_token=2, moe_ffn_hidden_size=16,
                  num_shared_experts=1, first_dense_layers=1)
    return llama(**{"name": "tiny-moe", **fields, **overrides})


@dataclass(frozen=True, kw_only=True)
class Scenario:
    """One oracle comparison: a model, a layout, and the batch each data-parallel rank sees."""

    name: str
    spec: ModelSpec
    layout: Layout  # resolved: dp set
    seq_length: int = 16
    rows_per_rank: int = 2  # sequences per data-parallel rank per step
    microbatches: int = 1  # gradient accumulation (no_sync) steps per optimizer step
    bucket_bytes: int = 4096  # small, so that a tiny model has several buckets


def batches(scenario: Scenario) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Per step, per micro-batch: (tokens, labels) of dp·rows full sequences."""
    generator = torch.Generator().manual_seed(SEED)
    rows = scenario.layout.dp * scenario.rows_per_rank
    shape = (rows, scenario.seq_length + 1)
    steps = []
    for _ in range(STEPS):
        steps.append([])
        for _ in range(scenario.microbatches):
            text = torch.randint(0, scenario.spec.vocab_size, shape, generator=generator)
            steps[-1].append((text[:, :-1], text[:, 1:]))
    return steps


@dataclass(frozen=True, kw_only=True)
class Reference:
    """The single-process run: losses per step, first-step gradients, final model."""

    losses: list[float]
    first_gradients: dict[str, torch.Tensor]
    model: Chunk


def reference_run(scenario: Scenario) -> Reference:
    """Single process, torch.optim.AdamW; each dp rank's rows a separate micro-batch."""
    model = build_model(scenario.spec, seed=SEED)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY, eps=EPS)
    pieces = scenario.layout.dp * scenario.microbatches
    losses, gradients = [], {}
    for step in batches(scenario):
        total = 0.0
        for tokens, labels in step:
            for part, part_labels in zip(tokens.chunk(scenario.layout.dp),
                                         labels.chunk(scenario.layout.dp)):
                positions = torch.arange(tokens.shape[1])[None].expand_as(part)
                loss = model.loss(model(part, positions), part_labels) / pieces
                loss.backward()
                total += loss.item()
        gradients = gradients or {n: p.grad.clone() for n, p in model.named_parameters()}
        optimizer.step()
        optimizer.zero_grad()
        losses.append(total)
    return Reference(losses=losses, first_gradients=gradients, model=model)


def parallel_run(rank: int, scenario: Scenario) -> dict[str, Any]:
    """On each rank: build, parallelize, train. The global loss of every step, the reduced
    gradients of the first step (with the mask of the elements this rank's shard holds) and
    the final local weights."""
    groups = build_groups(scenario.layout)
    model = build_model(scenario.spec, seed=SEED)
    parallel = parallelize(model, scenario.layout, groups, bucket_bytes=scenario.bucket_bytes)
    optimizer = DistributedAdamW([parallel.grads], lr=LR, weight_decay=WEIGHT_DECAY, eps=EPS)
    losses, gradients = [], {}
    for step in batches(scenario):
        total = torch.zeros(())
        for index, (tokens, labels) in enumerate(step):
            local_tokens, local_labels, positions = local_batch(tokens, labels, groups)
            last = index + 1 == len(step)
            with nullcontext() if last else parallel.grads.no_sync():
                loss = model.loss(model(local_tokens, positions), local_labels) / len(step)
                loss.backward()
            total += average_loss(loss, groups)
        parallel.grads.finish()
        gradients = gradients or reduced_gradients(model, parallel.grads)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(total.item())
    with parallel.grads.full_weights():  # ZeRO-3 keeps shards only
        weights = to_numpy(dict(model.named_parameters()))
    return {"losses": losses, "gradients": gradients, "weights": weights,
            "launched_in_backward": parallel.grads.launched_in_backward}


def reduced_gradients(model: Chunk, grads: GradSync) -> dict[str, tuple[Any, Any]]:
    """name -> (reduced gradient, mask of the elements in this rank's shard) after finish()."""
    out = grads.shard_gradients()
    return {name: tuple(t.clone().numpy() for t in out[id(p)])
            for name, p in model.named_parameters()}


def _fake_axis(layout: Layout, name: str, rank: int) -> Axis:
    """The axis as `build_groups` would make it on `rank`, without a process group."""
    row = next(r for r in axis_groups(layout, name).tolist() if rank in r)
    return Axis(name=name, size=len(row), rank=row.index(rank), ranks=tuple(row), group=None)


def expected_shards(model: Chunk, layout: Layout, rank: int) -> dict[str, np.ndarray]:
    """The reference's final weights as `rank` holds them under `layout`."""
    spec = model.spec
    tp = TensorParallel(axis=_fake_axis(layout, "tp", rank),
                        sequence_parallel=layout.sequence_parallel, head_dim=spec.qk_head_dim,
                        kv_heads=spec.kv_heads, vocab_size=spec.vocab_size)
    apply_plan(model, tp)
    shard_experts(model, _fake_axis(layout, "ep", rank))
    return to_numpy(dict(model.named_parameters()))


def check_scenario(scenario: Scenario, results: list[dict[str, Any]]) -> None:
    """Every rank's losses, first-step gradients and final weights against the reference."""
    reference = reference_run(scenario)
    for rank, result in enumerate(results):
        where = f"{scenario.name} rank {rank}"
        torch.testing.assert_close(torch.tensor(result["losses"]), torch.tensor(reference.losses),
                                   **LOSS_TOL, msg=lambda m: f"{where} losses: {m}")
        gradients = _sliced(scenario, reference.first_gradients, rank)
        for name, (value, mask) in result["gradients"].items():
            torch.testing.assert_close(
                torch.from_numpy(value)[torch.from_numpy(mask)],
                torch.from_numpy(gradients[name])[torch.from_numpy(mask)],
                **GRADIENT_TOL, msg=lambda m, n=name: f"{where} gradient of {n}: {m}")
        weights = _sliced(scenario, dict(reference.model.named_parameters()), rank)
        assert weights.keys() == result["weights"].keys(), where
        for name, value in weights.items():
            torch.testing.assert_close(
                torch.from_numpy(result["weights"][name]), torch.from_numpy(value),
                **WEIGHT_TOL, msg=lambda m, n=name: f"{where} weight {n}: {m}")


@torch.no_grad()
def _sliced(scenario: Scenario, values: dict[str, torch.Tensor], rank: int) -> dict[str, Any]:
    """`values` (one per parameter of the full model) as `rank` holds them."""
    model = build_model(scenario.spec, seed=SEED)
    for name, param in model.named_parameters():
        param.copy_(values[name])
    return expected_shards(model, scenario.layout, rank)


def run_scenarios(rank: int, scenarios: list[Scenario]) -> dict[str, dict[str, Any]]:
    """`parallel_run` of every scenario on this rank (one set of processes for a module)."""
    return {scenario.name: parallel_run(rank, scenario) for scenario in scenarios}


def results_of(outputs: list[dict[str, dict[str, Any]]], name: str) -> list[dict[str, Any]]:
    """Every rank's result of scenario `name`, in rank order."""
    return [output[name] for output in outputs]
