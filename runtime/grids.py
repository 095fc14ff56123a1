"""What `parasim profile` measures: the shape grids of every table and how often each is timed.

Shapes are those of one rank after tensor-parallel sharding (profiles/README.md). The full GPU
grid covers the catalog's hidden sizes and their tp shards (n, k) at token counts of
micro-batch x sequence (m); the CPU grids stop where a 2-core machine takes too long. `quick`
grids cover the local validation suites (sizes 64..2048); the whole quick CPU profile takes
about four minutes on a 2-core VM (4.3 min measured, `time parasim profile --quick --out
/tmp/x`, 2026-12-04, with other work on the host), longer when suspect entries are measured
again on a busy host (`runtime.stability`). The grids are data; the benchmarks
(`runtime/*_bench.py`) read them.
"""

from __future__ import annotations

from dataclasses import dataclass

from parasim.runtime.timing import Timing

ELEMENTWISE_KERNELS = ("layernorm", "rmsnorm", "gelu", "swiglu", "rope", "softmax", "add",
                       "copy", "embedding", "cross_entropy")
COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "p2p")

# m: tokens of one micro-batch on one rank (b·s, b·s/cp, routed expert tokens).
GPU_TOKENS = (256, 512, 1024, 2048, 3072, 4096, 6144, 8192, 12288, 16384, 24576, 32768,
              65536)
# n, k: hidden sizes of the catalog, MLP widths and their tp shards (Llama 3 8B/70B/405B,
# Mixtral, GPT-3: 4096, 5120, 8192, 14336, 16384, 28672, 53248; fused SwiGLU fc1 57344).
GPU_WIDTHS = (128, 256, 512, 1024, 2048, 4096, 5120, 8192, 14336, 16384, 28672, 53248, 57344)
CPU_SIZES = (64, 128, 256, 512, 1024, 2048, 3072, 4096)
CPU_QUICK_SIZES = (64, 128, 256, 512, 1024, 2048)


def powers_of_two(low: int, high: int, step: int = 1) -> tuple[int, ...]:
    """2**low, 2**(low + step), ... up to 2**high inclusive."""
    return tuple(2**e for e in range(low, high + 1, step))


@dataclass(frozen=True, kw_only=True)
class Grids:
    """Every shape the profiler times; tests pass tiny ones."""

    gemm_m: tuple[int, ...]  # rows of the activation (tokens)
    gemm_n: tuple[int, ...]  # output features
    gemm_k: tuple[int, ...]  # input features (the reduction)
    attention_seq_lengths: tuple[int, ...]
    attention_head_dims: tuple[int, ...]
    attention_batch: int  # fixed batch of every attention row
    attention_heads: int  # fixed query (= key/value) heads of every attention row
    elementwise_elements: tuple[int, ...]  # elements processed (profiles/README.md)
    elementwise_kernels: tuple[str, ...] = ELEMENTWISE_KERNELS
    row_elements: int = 4096  # hidden size of norms, activations and adds; softmax row length
    vocab: int = 32768  # cross-entropy logits row; rows of the embedding table
    optimizer_params: tuple[int, ...]
    collective_group_sizes: tuple[int, ...]
    collective_bytes: tuple[int, ...]  # full buffer, as simulator/cost/comm.py counts it
    collectives: tuple[str, ...] = COLLECTIVES

    def __post_init__(self) -> None:
        sizes = (self.gemm_m + self.gemm_n + self.gemm_k + self.attention_seq_lengths
                 + self.attention_head_dims + self.elementwise_elements
                 + self.optimizer_params + self.collective_bytes)
        assert all(isinstance(v, int) and v > 0 for v in sizes), "grid sizes must be ints > 0"
        assert set(self.elementwise_kernels) <= set(ELEMENTWISE_KERNELS), self.elementwise_kernels
        assert set(self.collectives) <= set(COLLECTIVES), self.collectives
        assert all(n >= 2 for n in self.collective_group_sizes), self.collective_group_sizes


def gpu_grids() -> Grids:
    """The full CUDA grid (about 15 minutes of GEMMs on an H100 at bf16)."""
    return Grids(gemm_m=GPU_TOKENS, gemm_n=GPU_WIDTHS, gemm_k=GPU_WIDTHS,
                 attention_seq_lengths=powers_of_two(9, 15), attention_head_dims=(64, 128),
                 attention_batch=1, attention_heads=32,
                 elementwise_elements=powers_of_two(16, 30),
                 optimizer_params=powers_of_two(16, 30, 2),
                 collective_group_sizes=(2, 4, 8), collective_bytes=powers_of_two(10, 30))


def gpu_quick_grids() -> Grids:
    """A coarse CUDA grid: every other size, one group size."""
    return Grids(gemm_m=(512, 2048, 8192, 32768), gemm_n=(1024, 4096, 14336, 57344),
                 gemm_k=(1024, 4096, 14336, 57344), attention_seq_lengths=(1024, 4096, 16384),
                 attention_head_dims=(64, 128), attention_batch=1, attention_heads=32,
                 elementwise_elements=powers_of_two(16, 30, 2),
                 optimizer_params=powers_of_two(16, 28, 4),
                 collective_group_sizes=(2,), collective_bytes=powers_of_two(10, 30, 4))


def cpu_grids() -> Grids:
    """The full CPU grid (tens of minutes on a small machine)."""
    return Grids(gemm_m=CPU_SIZES, gemm_n=CPU_SIZES, gemm_k=CPU_SIZES,
                 attention_seq_lengths=powers_of_two(7, 12), attention_head_dims=(64, 128),
                 attention_batch=1, attention_heads=8,
                 elementwise_elements=powers_of_two(16, 27), vocab=32768,
                 optimizer_params=powers_of_two(16, 26, 2),
                 collective_group_sizes=(2, 4), collective_bytes=powers_of_two(10, 26))


def cpu_quick_grids() -> Grids:
    """About four minutes on a 2-core CPU, all tables included (module docstring)."""
    return Grids(gemm_m=CPU_QUICK_SIZES, gemm_n=CPU_QUICK_SIZES, gemm_k=CPU_QUICK_SIZES,
                 attention_seq_lengths=powers_of_two(7, 11), attention_head_dims=(64, 128),
                 attention_batch=1, attention_heads=8,
                 elementwise_elements=powers_of_two(16, 24), vocab=8192,
                 optimizer_params=powers_of_two(16, 24),
                 collective_group_sizes=(2,), collective_bytes=powers_of_two(10, 24))


def default_grids(device: str, quick: bool) -> Grids:
    if device == "cuda":
        return gpu_quick_grids() if quick else gpu_grids()
    return cpu_quick_grids() if quick else cpu_grids()


def default_timing(device: str, quick: bool) -> Timing:
    """Untimed warm-up runs and timed repeats per entry (the median is kept)."""
    if quick:
        return Timing(warmup=2, repeats=7)
    return Timing(warmup=2, repeats=7) if device == "cpu" else Timing(warmup=3, repeats=10)
