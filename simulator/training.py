"""TrainingSpec: what one optimizer step processes, in which precision, for how long."""

from __future__ import annotations

from dataclasses import dataclass

from parasim.simulator.checks import require_bool, require_choice, require_count, require_number
from parasim.simulator.errors import SpecError
from parasim.simulator.hardware import PRECISIONS, Precision
from parasim.simulator.nvfp4 import STORED_BYTES_PER_VALUE

BYTES_PER_VALUE = {"bf16": 2, "fp16": 2, "fp8": 1, "fp32": 4}
MAX_GLOBAL_BATCH = 2**20  # sequences per step: the schedule simulates each micro-batch
MOMENT_PRECISIONS = ("fp32", "bf16")
MAX_TOKENS = 1e18  # tokens of a whole run (Llama 3: 1.56e13): keeps every total finite


@dataclass(frozen=True, kw_only=True)
class TrainingSpec:
    """One training run: mixed-precision Adam(W), the model's weights in `precision`."""

    seq_length: int  # tokens per sequence s
    global_batch_size: int  # sequences per optimizer step
    precision: Precision = "bf16"  # GEMM precision; fp8 / fp4 keep bf16 weights (Transformer
    #                                Engine; fp4 is NVIDIA's NVFP4 recipe, simulator/nvfp4.py)
    tokens: float | None = None  # tokens of the whole run, for its wall time
    flash_attention: bool = True  # fused attention: no s^2 score matrix is stored
    grad_precision: Precision | None = None  # gradient buffer; None = Megatron-LM's default
    checkpoint_interval_steps: int | None = None  # steps between checkpoints; None: Young's
    optimizer_moment_precision: str = "fp32"  # Adam's two moments: fp32, or bf16 (DeepSeek-V3
    # report §3.3.3; Megatron-LM --exp-avg-dtype / --exp-avg-sq-dtype bf16)
    fp8_moe_act_input: bool = False  # fp8 runs: the MoE experts' SwiGLU input cached in FP8
    # (DeepSeek-V3 report §3.3.3), not in the activations' precision

    def __post_init__(self) -> None:
        require_count("training.seq_length", self.seq_length)
        require_count("training.global_batch_size", self.global_batch_size,
                    maximum=MAX_GLOBAL_BATCH)
        require_choice("training.precision", self.precision, PRECISIONS)
        if self.tokens is not None:
            require_number("training.tokens", self.tokens, 0, MAX_TOKENS, above=True,
                           valid="a number > 0 and <= 1e18, e.g. 15e12")
        require_bool("training.flash_attention", self.flash_attention)
        if self.grad_precision is not None:
            require_choice("training.grad_precision", self.grad_precision, ("bf16", "fp16", "fp32"))
        if self.checkpoint_interval_steps is not None:
            require_count("training.checkpoint_interval_steps", self.checkpoint_interval_steps)
        require_choice("training.optimizer_moment_precision", self.optimizer_moment_precision,
                       MOMENT_PRECISIONS)
        require_bool("training.fp8_moe_act_input", self.fp8_moe_act_input)
        if self.fp8_moe_act_input and self.precision != "fp8":
            raise SpecError("training.fp8_moe_act_input", True, f"caches an FP8 cast, but "
                            f"precision is {self.precision}", "precision: fp8, or false")

    @property
    def weight_bytes_per_param(self) -> int:
        """Working copy of the weights: fp8 and fp4 training keep bf16 weights and cast per GEMM
        (the quantised copy is cached across micro-batches and not counted)."""
        return 4 if self.precision == "fp32" else 2

    @property
    def grad_bytes_per_param(self) -> int:
        """Gradient buffer. Megatron-LM accumulates bf16 runs' gradients in fp32
        (`--accumulate-allreduce-grads-in-fp32` is forced on for bf16) and keeps fp16 runs'
        in fp16 (Rajbhandari et al. 2020, §3.1: 2 bytes)."""
        if self.grad_precision is not None:
            return BYTES_PER_VALUE[self.grad_precision]
        return 2 if self.precision == "fp16" else 4  # fp4 and fp8 as bf16

    @property
    def optimizer_bytes_per_param(self) -> int:
        """Adam states K: fp32 master weights, momentum and variance (K = 12, Rajbhandari et al.
        2020, §3.1); an fp32 run needs no master copy (K = 8). BF16 moments take 2 bytes each
        (DeepSeek-V3 report, arXiv:2412.19437 §3.3.3, "Low-Precision Optimizer States": "the
        BF16 data format instead of FP32 to track the first and second moments in the AdamW
        optimizer ... The master weights ... are still retained in FP32"): K = 8, or 4."""
        master = 0 if self.precision == "fp32" else 4
        return master + 2 * BYTES_PER_VALUE[self.optimizer_moment_precision]

    @property
    def moe_act_input_bytes_per_value(self) -> int:
        """The MoE experts' SwiGLU input, kept for the backward: 1 byte when cached in FP8
        (DeepSeek-V3 report §3.3.3, "Low-Precision Activation": "we cache the inputs of the
        SwiGLU operator and recompute its output in the backward pass. These activations are
        also stored in FP8"), else the activations' precision."""
        return 1 if self.fp8_moe_act_input else self.activation_bytes_per_value

    @property
    def activation_bytes_per_value(self) -> int:
        """Stored activations are in the 16-bit working precision (fp32 for fp32 runs)."""
        return 4 if self.precision == "fp32" else 2

    @property
    def linear_input_bytes_per_value(self) -> float:
        """The saved input of a block's linear layer for its weight gradient: FP8 training
        keeps the FP8 cast it already made for the forward GEMM (Transformer Engine's FP8
        `Linear` saves its FP8 input; DeepSeek-V3 report, arXiv:2412.19437 §3.3.3: "it is a
        natural choice to cache activations in FP8 format for the backward pass of the Linear
        operator"), 1 byte; FP4 training keeps its NVFP4 cast, 4-bit values with one FP8 E4M3
        scale per 16 (`nvfp4.STORED_BYTES_PER_VALUE`, 0.5625 bytes; arXiv:2509.25149 §2); else
        the activations' precision. The blocks fp4 keeps in BF16 (`nvfp4.bf16_blocks`) store
        16 bits: `linear_input_bytes_for`."""
        return self.linear_input_bytes_for(self.precision)

    def linear_input_bytes_for(self, gemm_precision: Precision) -> float:
        """The saved linear-layer input of a block whose GEMMs run in `gemm_precision`."""
        return {"fp8": 1, "fp4": STORED_BYTES_PER_VALUE}.get(
            gemm_precision, self.activation_bytes_per_value)

    @property
    def checkpoint_bytes_per_param(self) -> int:
        """What a checkpoint saves per parameter: the working weights and the optimizer states
        (fp32 master copy, Adam moments); gradients are not saved (Megatron-LM's
        distributed checkpoint: model and optimizer state dicts)."""
        return self.weight_bytes_per_param + self.optimizer_bytes_per_param

    @property
    def tokens_per_step(self) -> int:
        return self.seq_length * self.global_batch_size
