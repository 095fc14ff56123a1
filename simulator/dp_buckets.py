"""Bucketed data-parallel communication, and how much of it the compute beside it can hide.

Megatron-Core's DDP (NVIDIA/Megatron-LM, megatron/core/distributed/distributed_data_parallel.py
at 0011998) groups a model chunk's gradients into buckets of at most `bucket_size` parameters,
by default max(40,000,000, 1,000,000 · dp) ("larger DP sizes need larger buckets to ensure
collectives do not become latency-bound", `DistributedDataParallelConfig.bucket_size`). Only
the first pipeline rank's buckets are that small: "Turn off bucketing if we are on a pipeline
stage that is not the first (since data-parallel communication on these stages is not on the
critical path)": later ranks reduce their chunk in one bucket once its last backward is done,
during the pipeline's drain. Without overlap_grad_reduce there is one bucket too.

With overlap_grad_reduce, a bucket's reduction starts when the backward has produced its last
gradient and the bucket before it is done. With B equal buckets produced evenly over a
backward of T seconds and a reduction of R seconds in all (R/B each), the last one is ready at
T and the reductions run back to back from the first one's readiness T/B at the latest, so
the reduction ends max(R/B, R - T·(B - 1)/B) after the backward: at least the last bucket,
whatever the overlap. The parameter all-gather that Megatron-LM's distributed optimizer
overlaps with the next forward (`--overlap-param-gather`: bucket by bucket, the next one
started when the forward reaches the one before) is the same pipeline run the other way: the
first bucket is needed at once, and the forward waits max(G/B, G - F·(B - 1)/B) in all.

The part that does run beside compute still slows it (NCCL kernels take SMs and memory
bandwidth): `slowdown` of the hidden time. With many buckets this is
`AnalyticProfile.overlapped_s`, the overlap of every other communication
(`StepContext.overlap` takes either).
"""

from __future__ import annotations

import math

BUCKET_MIN_PARAMS = 40_000_000  # Megatron-Core's default bucket_size floor
BUCKET_PARAMS_PER_DP_RANK = 1_000_000  # ... and its growth with the data-parallel size


def bucket_params(dp: int) -> int:
    """Megatron-Core's default bucket size in parameters for `dp` data-parallel ranks."""
    assert dp >= 1, dp
    return max(BUCKET_MIN_PARAMS, BUCKET_PARAMS_PER_DP_RANK * dp)


def bucket_count(params: float, dp: int, bucketed: bool) -> int:
    """Buckets of `params` parameters (one unless `bucketed`: overlap on, first pipeline rank)."""
    if not bucketed or params <= 0:
        return 1
    return max(1, math.ceil(params / bucket_params(dp)))


def pipelined_exposed_s(window_s: float, comm_s: float, buckets: int, slowdown: float) -> float:
    """What `buckets` equal buckets of `comm_s` seconds in all add to a compute window of
    `window_s` that produces them (or needs them) evenly: the part past the window, plus
    `slowdown` of the part run beside it."""
    assert buckets >= 1 and window_s >= 0 and comm_s >= 0, (buckets, window_s, comm_s)
    if comm_s == 0:
        return 0.0
    exposed = max(comm_s / buckets, comm_s - window_s * (buckets - 1) / buckets)
    return exposed + slowdown * (comm_s - exposed)
