"""Activation recomputation (runtime.parallel.recompute), in one process: full, selective and
per-block recompute give the loss and gradients of the plain model, and recompute what they
say (a block's forward, or only its core attention, runs again in the backward). The
distributed cases run recompute with collectives inside (tensor-parallel MoE with full
recompute in test_tensor_parallel, ring attention with selective recompute in
test_context_parallel).

Tolerance: exact. Recomputation reruns the same operations on the same inputs (no dropout),
so the gradients are bitwise those of the plain model.
"""

from __future__ import annotations

from collections import Counter

import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)  # tiny tensors; a 2nd thread only spins against other processes

from parasim.runtime.model import Block, CoreAttention, build_model  # noqa: E402
from parasim.runtime.parallel.recompute import Checkpointed, apply_recompute  # noqa: E402
from tests.runtime.oracle import llama, moe  # noqa: E402


def loss_and_grads(model, calls: Counter | None = None):
    if calls is not None:
        for name, module in model.named_modules():
            if isinstance(module, (Block, CoreAttention)):
                module.register_forward_pre_hook(lambda m, a, n=name: calls.update([n]))
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.spec.vocab_size, (2, 12), generator=generator)
    positions = torch.arange(12)[None].expand(2, 12)
    loss = model.loss(model(ids, positions), ids.roll(-1, dims=1))
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


def block_forwards(calls: Counter, layer: int) -> int:
    """How often block `layer`'s own forward ran (Block.forward; a checkpointed block's
    recomputation calls its inner _forward, counted through its core attention)."""
    return calls[f"blocks.{layer}"]


@pytest.mark.parametrize(("recompute", "full_layers", "rerun_core", "rerun_block"), [
    ("full", None, {0, 1, 2}, {0, 1, 2}),
    ("selective", None, {0, 1, 2}, set()),
    ("selective", {0}, {0, 1, 2}, {0}),
    ("none", {2}, {2}, {2}),
])
def test_recompute_gives_the_plain_gradients_and_reruns_what_it_says(
        recompute, full_layers, rerun_core, rerun_block):
    spec = moe(num_layers=3)
    plain_loss, plain_grads = loss_and_grads(build_model(spec, seed=0))
    model = build_model(spec, seed=0)
    full = apply_recompute(model, recompute, full_layers)
    assert full == frozenset(rerun_block)
    calls: Counter = Counter()
    loss, grads = loss_and_grads(model, calls)
    torch.testing.assert_close(loss, plain_loss, rtol=0, atol=0)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=0, atol=0, msg=name)
    for layer in range(3):
        core = calls[f"blocks.{layer}.attn.core.inner" if recompute == "selective"
                     and layer not in rerun_block else f"blocks.{layer}.attn.core"]
        assert core == (2 if layer in rerun_core else 1), (layer, dict(calls))
        assert block_forwards(calls, layer) == 1  # the outer call; reruns go to _forward


def test_selective_wraps_the_core_attention_once():
    model = build_model(llama(), seed=0)
    apply_recompute(model, "selective")
    apply_recompute(model, "selective")
    for block in model.blocks.values():
        assert isinstance(block.attn.core, Checkpointed)
        assert isinstance(block.attn.core.inner, CoreAttention)
