"""Context parallelism (runtime.parallel.context): ring and Ulysses attention with the
load-balanced causal split against the single-process oracle (tests.runtime.oracle states the tolerances),
and its pieces in one process: the chunk assignment, the block attention and its backward
against autograd, and the ring's block schedule replayed for every rank and step, merged by
the online softmax, against SDPA on the whole sequence (cp = 2 and 4).

Tolerance of the one-process checks: fp32, rtol 1e-5 / atol 1e-6 (the same sums in another
order: blockwise log-sum-exp merges instead of one softmax).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)  # tiny tensors; a 2nd thread only spins against other processes

import torch.nn.functional as F  # noqa: E402

from parasim.runtime.parallel.context import (  # noqa: E402
    _expand, _merge, block_attention, block_attention_backward, local_positions,
    matmul_block_attention, matmul_block_attention_backward, ring_blocks,
    _kv_for_head_split, sequence_parts, split_sequence, whole_sequence)
from parasim.runtime.parallel.groups import Axis  # noqa: E402
from parasim.simulator.layout import Layout  # noqa: E402
from tests.runtime.harness import run_ranks  # noqa: E402
from tests.runtime.oracle import (  # noqa: E402
    Scenario, check_scenario, gpt, llama, results_of, run_scenarios)

CLOSE = {"rtol": 1e-5, "atol": 1e-6}
# Gradients sum more float32 terms; where the exact value is 0 (a causal row's only key), the two
# kernels' rounding differs by about 1e-6, so their absolute tolerance is ten times wider.
GRAD_CLOSE = {"rtol": 1e-5, "atol": 1e-5}
SCENARIOS = [
    Scenario(name="cp2-llama-gqa", spec=llama(),
             layout=Layout(dp=1, cp=2, overlap_grad_reduce=True)),
    Scenario(name="cp2-gpt-selective-recompute", spec=gpt(),
             layout=Layout(dp=1, cp=2, recompute="selective")),
    Scenario(name="cp2-ulysses-llama-gqa", spec=llama(),
             layout=Layout(dp=1, cp=2, cp_style="ulysses")),
    Scenario(name="cp2-ulysses-gpt-full-recompute", spec=gpt(),
             layout=Layout(dp=1, cp=2, cp_style="ulysses", recompute="full")),
]


# cp 4 (4 processes, slow pass): every block's gradient passes three ranks on its way home.
CP4 = Scenario(name="cp4-llama-gqa", spec=llama(), layout=Layout(dp=1, cp=4))


@pytest.fixture(scope="module")
def outputs():
    return run_ranks(run_scenarios, 2, SCENARIOS)


@pytest.mark.slow
def test_cp4_matches_single_process():
    check_scenario(CP4, results_of(run_ranks(run_scenarios, 4, [CP4]), CP4.name))


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_context_parallel_matches_single_process(outputs, scenario):
    check_scenario(scenario, results_of(outputs, scenario.name))


def axis(rank: int, size: int) -> Axis:
    return Axis(name="cp", size=size, rank=rank, ranks=tuple(range(size)), group=None)


def test_load_balanced_chunks():
    """cp = 2, 8 tokens in 4 chunks of 2: rank 0 holds chunks 0 and 3, rank 1 chunks 1 and 2."""
    assert local_positions(8, axis(0, 2)).tolist() == [[0, 1, 6, 7]]
    assert local_positions(8, axis(1, 2)).tolist() == [[2, 3, 4, 5]]
    x = torch.arange(8)[None]
    assert split_sequence(x, axis(1, 2)).tolist() == [[2, 3, 4, 5]]


def qkv(seq: int, heads: int = 4, kv_heads: int = 2, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    def make(h):
        return torch.randn(2, h, seq, 8, generator=generator)
    return make(heads), make(kv_heads), make(kv_heads)


def test_block_attention_and_its_backward_equal_autograd_of_sdpa():
    q, k, v = (t.requires_grad_() for t in qkv(12))
    out, lse = block_attention(q, k, v, causal=True)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    torch.testing.assert_close(out, expected, **CLOSE)
    grad = torch.randn_like(expected)
    expected.backward(grad)
    dq, dk, dv = block_attention_backward(grad, q.detach(), k.detach(), v.detach(),
                                          out.detach(), lse.detach(), causal=True)
    for mine, reference in ((dq, q.grad), (dk, k.grad), (dv, v.grad)):
        torch.testing.assert_close(mine, reference, **GRAD_CLOSE)


@pytest.mark.parametrize("causal", [True, False])
def test_matmul_fallback_equals_the_fused_cpu_block(causal):
    """The block other devices run (plain matmuls) and the CPU's fused kernel agree, output,
    log-sum-exp and gradients, on a block with fewer keys than queries when not causal."""
    q, k, v = qkv(12)
    keys = 12 if causal else 6
    k, v = _expand(k[:, :, :keys], 4), _expand(v[:, :, :keys], 4)
    fused = block_attention(q, k, v, causal)
    plain = matmul_block_attention(q, k, v, causal)
    for mine, reference in zip(plain, fused):
        torch.testing.assert_close(mine, reference, **CLOSE)
    grad = torch.randn(fused[0].shape, generator=torch.Generator().manual_seed(1))
    expected = block_attention_backward(grad, q, k, v, *fused, causal)
    for mine, reference in zip(matmul_block_attention_backward(grad, q, k, v, *fused, causal),
                               expected):
        torch.testing.assert_close(mine, reference, **GRAD_CLOSE)


@pytest.mark.parametrize("size", [2, 4])
def test_ulysses_reassembles_the_sequence_from_every_ranks_part(size):
    """What the all-to-all delivers (each rank's part of the sequence, stacked by rank) is put
    back in sequence order, and split into the parts again for the return trip."""
    x = torch.arange(2 * 3 * 8 * size).reshape(2, 3, 8 * size)[..., None]
    parts = torch.stack([split_sequence(x, axis(r, size), dim=2) for r in range(size)])
    assert torch.equal(whole_sequence(parts, dim=3), x)
    assert torch.equal(sequence_parts(x, size, dim=2), parts)


@pytest.mark.parametrize("kv_heads,size,sent", [(4, 2, 4), (2, 4, 4), (2, 2, 2), (3, 2, 12)])
def test_ulysses_replicates_grouped_keys_so_each_rank_gets_its_own(kv_heads, size, sent):
    """12 query heads: keys pass as they are when cp divides their heads, else repeated to cp
    heads (kv dividing cp) or to one per query head; after the split each rank's query heads
    still find their key head."""
    kv = torch.arange(kv_heads).float().reshape(1, kv_heads, 1, 1)
    out = _kv_for_head_split(kv, 12, size)
    assert out.shape[1] == sent
    per_rank_q, per_rank_k = 12 // size, sent // size
    for rank in range(size):
        for head in range(rank * per_rank_q, (rank + 1) * per_rank_q):
            local = (head - rank * per_rank_q) // (per_rank_q // per_rank_k)
            assert out[0, rank * per_rank_k + local, 0, 0] == head // (12 // kv_heads)


@pytest.mark.parametrize("size", [2, 4])
def test_ring_schedule_replayed_in_one_process_equals_full_attention(size):
    """Every rank's steps (which query rows meet which key rows, causal or not), merged by the
    online softmax, give that rank's rows of causal attention over the whole sequence."""
    seq = 4 * size
    q, k, v = qkv(seq, seed=size)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    for rank in range(size):
        mine = [split_sequence(t, axis(rank, size), dim=2) for t in (q, k, v)]
        out = torch.zeros_like(mine[0])
        lse = torch.full(out.shape[:-1], float("-inf"))
        for step in range(size):
            source = (rank - step) % size
            theirs = [split_sequence(t, axis(source, size), dim=2) for t in (k, v)]
            rows, cols, causal = ring_blocks(rank, source, mine[0].shape[2])
            block = block_attention(mine[0][:, :, rows], theirs[0][:, :, cols],
                                    theirs[1][:, :, cols], causal)
            _merge(out, lse, rows, *block)
        torch.testing.assert_close(out, split_sequence(expected, axis(rank, size), dim=2),
                                   **CLOSE)
