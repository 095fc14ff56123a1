"""NVIDIA's NVFP4 pretraining recipe: what `training.precision: fp4` runs in 4 bits, what it
stores in 4 bits, and what its quantisation costs.

Source: NVIDIA, "Pretraining Large Language Models with NVFP4", arXiv:2509.25149 (2025), §2
(the format) and §4 (the training recipe), as implemented in Transformer Engine's
`NVFP4BlockScaling` recipe and driven by Megatron-LM's `--fp4-format e2m1 --fp4-recipe nvfp4`:

- In 4 bits: the GEMMs of a block's linear layers, all three of them - Fprop (Y = X·W),
  Dgrad (dX = dY·W^T) and Wgrad (dW = X^T·dY) - with E2M1 elements and one FP8 E4M3 scale
  per 16 values (plus one FP32 scale per tensor). Weights are scaled in 16x16 2D blocks, so
  W and W^T quantise identically in the forward and the backward (§4.3); activations and
  gradients in 1x16 blocks along the GEMM's reduction dimension.
- Random Hadamard transforms (16x16) on the inputs of Wgrad only (§4.2); stochastic
  rounding on the gradients (§4.4); both are fused into the quantisation kernels and cost
  their memory traffic, not tensor-core time.
- In BF16: a few sensitive linear layers, about 16% of them, at the ends of the stack (the
  paper's "selective BF16 layers (~16%)", as its public summaries state it, e.g.
  MarkTechPost's and news.chathome.org's of arXiv:2509.25149), and everything that is not a
  block's linear layer: embeddings, the output head (LM head), the MoE router,
  normalisation, non-linearities and attention (softmax, the Q·K^T and scores·V batched
  GEMMs). Master weights and optimizer states stay in FP32 as in mixed-precision training,
  gradients are reduced in FP32 / BF16.

Which blocks hold that 16% is model-specific and not transcribed here; parasim's assumption,
stated in the README, is half at each end: round(0.08·L) first and round(0.08·L) last blocks,
at least one of each (Megatron-LM's `--first-last-layers-bf16 --num-layers-at-start-in-bf16
N --num-layers-at-end-in-bf16 M` expresses any split, and the export writes this one).
"""

from __future__ import annotations

BF16_SHARE = 0.16  # of the linear layers kept in BF16 (arXiv:2509.25149, as summarised)
ELEMENT_BYTES = 0.5  # E2M1: 4 bits
BLOCK_VALUES = 16  # values per FP8 E4M3 scale (1 byte), 1D blocks
STORED_BYTES_PER_VALUE = ELEMENT_BYTES + 1 / BLOCK_VALUES  # 0.5625: an NVFP4 activation
# Casting a 16-bit tensor to NVFP4 for a GEMM and its transpose partner: one read for the
# tensor's amax (the FP32 per-tensor scale must be known before any block is scaled, §2),
# one read to quantise, and two NVFP4 copies written (row-wise for this GEMM, column-wise -
# through the Hadamard transform for Wgrad's inputs - for the other).
CAST_BYTES_PER_VALUE = 2 * 2 + 2 * STORED_BYTES_PER_VALUE  # 5.125


def bf16_blocks(num_layers: int) -> tuple[int, int]:
    """(first, last) blocks of an L-block model kept in BF16: the recipe's 16% share, half at
    each end (parasim's assumption), at least one block at each end, never more than the
    model has."""
    assert num_layers >= 1, num_layers
    each = max(1, round(num_layers * BF16_SHARE / 2))
    first = min(each, num_layers)
    return first, min(each, num_layers - first)


def precision_spans(start: int, stop: int, num_layers: int) -> list[tuple[int, int, str]]:
    """Blocks start..stop-1 cut into runs of one GEMM precision: (lo, hi, "bf16" | "fp4")."""
    first, last = bf16_blocks(num_layers)
    cuts = sorted({start, stop, *(c for c in (first, num_layers - last) if start < c < stop)})
    return [(lo, hi, "bf16" if lo < first or lo >= num_layers - last else "fp4")
            for lo, hi in zip(cuts, cuts[1:])]
