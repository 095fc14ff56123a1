"""runtime.fused: each one-node function equals the unfused formula through autograd, forward
and backward, and saves only what the fused kernel saves."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

from parasim.runtime.fused import rms_norm, rope, rope_tables, swiglu  # noqa: E402

DOUBLE = {"dtype": torch.float64}


def inputs(*shapes, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=generator, **DOUBLE).requires_grad_() for s in shapes]


def unfused_rope(x, positions, base=10000.0):
    """RoFormer's rotate-half form, written out: pairs (i, i + d/2) rotate by position·θ_i."""
    half = x.shape[-1] // 2
    theta = base ** (-torch.arange(half, **DOUBLE) / half)
    angles = positions[..., None].to(torch.float64) * theta
    cos, sin = angles.cos()[:, None], angles.sin()[:, None]
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def test_functions_pass_gradcheck():
    x, w = inputs((2, 3, 8), (8,))
    assert torch.autograd.gradcheck(lambda a, b: rms_norm(a, b, 1e-5), (x, w))
    positions = torch.tensor([[0, 3, 5], [1, 2, 9]])
    (q,) = inputs((2, 2, 3, 8))
    cos, sin = rope_tables(positions, 8, torch.float64)
    assert torch.autograd.gradcheck(lambda a: rope(a, cos, sin), (q,))
    gate, up = inputs((4, 6), (4, 6))
    assert torch.autograd.gradcheck(swiglu, (gate, up))


@pytest.mark.parametrize("name", ["rms_norm", "rope", "swiglu"])
def test_equals_the_unfused_formula_forward_and_backward(name):
    if name == "rms_norm":
        x, w = inputs((2, 5, 16), (16,))
        fused, args = (lambda a, b: rms_norm(a, b, 1e-5)), (x, w)
        unfused = lambda a, b: F.rms_norm(a, (16,), b, 1e-5)  # noqa: E731
    elif name == "rope":
        positions = torch.tensor([[4, 0, 7, 2]])
        cos, sin = rope_tables(positions, 16, torch.float64)
        (x,) = inputs((1, 3, 4, 16))
        fused, args = (lambda a: rope(a, cos, sin)), (x,)
        unfused = lambda a: unfused_rope(a, positions)  # noqa: E731
    else:
        args = tuple(inputs((3, 10), (3, 10)))
        fused, unfused = swiglu, (lambda g, u: F.silu(g) * u)
    mine, reference = fused(*args), unfused(*args)
    torch.testing.assert_close(mine, reference)
    grad = torch.randn_like(mine)
    got = torch.autograd.grad(mine, args, grad)
    want = torch.autograd.grad(reference, args, grad)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def saved_elements(fn, *args) -> int:
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t,
                                                  lambda t: t):
        fn(*args)
    return sum(t.numel() for t in saved)


def test_saves_only_what_the_fused_kernel_saves():
    rows, width = 6, 32
    x, w = inputs((rows, width), (width,))
    assert saved_elements(lambda: rms_norm(x, w, 1e-5)) == rows * width + rows + width
    gate, up = inputs((rows, width), (rows, width))
    assert saved_elements(lambda: swiglu(gate, up)) == 2 * rows * width
    cos, sin = rope_tables(torch.arange(rows)[None], width, torch.float64)
    (q,) = inputs((1, 4, rows, width))
    assert saved_elements(lambda: rope(q, cos, sin)) == 2 * rows * width  # the tables only
