"""One autograd node per elementwise layer, as the fused kernels the cost model prices.

The simulator prices a transformer block as Megatron-LM runs it: RMSNorm, rotary embedding
and SwiGLU are each one fused kernel forward and one backward, saving only their inputs
(Korthikanti et al. 2022, Table 2 / §4; Megatron-Core's `fused_apply_rotary_pos_emb`,
`bias_swiglu_impl`, Apex/TE `FusedRMSNorm`). Written with torch ops, eager autograd instead
runs each as 5-15 small ops, each one an autograd node that saves its own operands: on a CPU
those calls are paid one after the other (`reports/local/analysis.md`: 13,500 of them per step,
about 10% of it), and they save tensors the fused kernel does not. Each function here is one
`torch.autograd.Function` with a hand-written backward that saves what the fused kernel saves:

- `rms_norm(x, weight, eps)`: y = x·rstd·w, rstd = 1/sqrt(mean(x²) + eps) (Zhang & Sennrich
  2019); saves x and rstd (one value per row), not the normalised x;
- `rope(x, cos, sin)`: rotate-half rotary embedding (Su et al. 2021) with tables from
  `rope_tables`; saves nothing but the shared tables;
- `swiglu(gate, up)`: silu(gate)·up (Shazeer 2020); saves gate and up, recomputes silu.

Each backward is pinned against autograd through the unfused formula
(`tests/runtime/test_fused.py`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd import Function

ROPE_BASE = 10000.0  # RoFormer's theta; the spec has no field for it


class _RMSNorm(Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        wide = x.to(torch.promote_types(x.dtype, torch.float32))  # fp16/bf16 sum in fp32
        rstd = torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, rstd, weight)
        return (x * rstd.to(x.dtype)) * weight

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, rstd, weight = ctx.saved_tensors
        normed = x * rstd.to(x.dtype)
        grad_weight = (grad * normed).flatten(0, -2).sum(0) if ctx.needs_input_grad[1] else None
        grad_normed = grad * weight
        # d/dx of x·rstd: rstd·(g - x̂·mean(g·x̂)), LayerNorm's backward without the mean term
        dot = (grad_normed * normed).mean(-1, keepdim=True)
        grad_x = (grad_normed - normed * dot) * rstd.to(x.dtype)
        return grad_x, grad_weight, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dimension as one autograd node."""
    return _RMSNorm.apply(x, weight, eps)


def rope_tables(positions: torch.Tensor, width: int,
                dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each (batch, 1, seq, width), of the rotate-half rotary embedding at
    `positions` (batch, seq): angle_i = position · base^(-i/half), i < half, repeated for the
    two halves; sin carries the rotation's sign (-sin on the first half)."""
    half, wide = width // 2, torch.promote_types(dtype, torch.float32)
    inverse = ROPE_BASE ** (-torch.arange(half, dtype=wide, device=positions.device) / half)
    angles = positions[..., None].to(wide) * inverse  # (batch, seq, half)
    cos, sin = angles.cos(), angles.sin()
    cos = torch.cat((cos, cos), dim=-1)[:, None].to(dtype)
    sin = torch.cat((-sin, sin), dim=-1)[:, None].to(dtype)
    return cos, sin


def _swap_halves(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((x[..., half:], x[..., :half]), dim=-1)


class _Rope(Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(cos, sin)
        return x * cos + _swap_halves(x) * sin

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        cos, sin = ctx.saved_tensors
        # y = x·cos + P(x)·sin with P the half swap (P = Pᵀ): dx = g·cos + P(g·sin)
        return grad * cos + _swap_halves(grad * sin), None, None


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (batch, heads, seq, d) rotated by the tables of `rope_tables` (one autograd node)."""
    return _Rope.apply(x, cos, sin)


class _SwiGLU(Function):
    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        gate, up = ctx.saved_tensors
        grad_up = grad * F.silu(gate)
        grad_gate = torch.ops.aten.silu_backward(grad * up, gate)
        return grad_gate, grad_up


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate)·up as one autograd node that saves only its inputs."""
    return _SwiGLU.apply(gate, up)
