"""Bucketed data-parallel communication (`simulator.dp_buckets`) and its place in the step."""

from __future__ import annotations

from pathlib import Path

import pytest

from parasim.simulator.dp_buckets import bucket_count, bucket_params, pipelined_exposed_s
from parasim.simulator.jobfile import job_from_mapping
from parasim.simulator.predict import predict


def test_bucket_size_is_megatron_cores_default():
    """max(40M, 1M·dp) parameters (DistributedDataParallelConfig.bucket_size)."""
    assert bucket_params(1) == bucket_params(40) == 40_000_000
    assert bucket_params(128) == 128_000_000
    assert bucket_count(3.8e6, 2, bucketed=True) == 1
    assert bucket_count(1e9, 8, bucketed=True) == 25
    assert bucket_count(1e9, 8, bucketed=False) == 1


def test_the_last_bucket_is_always_exposed():
    """R/B after the backward however long it is; all of R with one bucket."""
    assert pipelined_exposed_s(10.0, 1.0, 4, slowdown=0.0) == pytest.approx(0.25)
    assert pipelined_exposed_s(10.0, 1.0, 1, slowdown=0.0) == pytest.approx(1.0)
    assert pipelined_exposed_s(0.0, 1.0, 4, slowdown=0.0) == pytest.approx(1.0)


def test_a_reduction_longer_than_the_backward_ends_after_it():
    """Buckets ready every T/B, served back to back from the first: R - T(B-1)/B past T.
    Simulated bucket by bucket for a check that does not share the closed form."""
    window, comm, buckets = 2.0, 3.0, 5
    done = 0.0
    for i in range(1, buckets + 1):
        done = max(done, window * i / buckets) + comm / buckets
    assert pipelined_exposed_s(window, comm, buckets, slowdown=0.0) == pytest.approx(done - window)
    assert done - window == pytest.approx(3.0 - 2.0 * 4 / 5)


def test_what_runs_beside_compute_slows_it():
    assert pipelined_exposed_s(10.0, 1.0, 4, slowdown=0.2) == pytest.approx(0.25 + 0.2 * 0.75)
    assert pipelined_exposed_s(10.0, 0.0, 4, slowdown=0.2) == 0.0


def test_many_buckets_are_the_plain_overlap():
    """The limit of fine buckets: max(compute, comm) + slowdown x min, less the compute."""
    for window, comm in ((10.0, 1.0), (1.0, 10.0), (3.0, 3.0)):
        plain = max(window, comm) + 0.15 * min(window, comm) - window
        assert pipelined_exposed_s(window, comm, 10**9, 0.15) == pytest.approx(plain, rel=1e-6)


def _dp_job(**parallel):
    raw = {"model": "llama3-8b", "cluster": {"base": "dgx-h100", "num_nodes": 2},
           "training": {"seq_length": 4096, "global_batch_size": 64},
           "parallel": {"tp": 1, "pp": 1, **parallel}}
    return predict(job_from_mapping(raw, base_dir=Path("."), source="t")).breakdown


def test_overlap_hides_all_but_the_last_bucket():
    """Llama 3 8B on 16 GPUs, dp 16: 8.0e9 parameters in 201 buckets of 40M. With the
    overlap one bucket's reduction stays exposed, and the rest slows the backward beside it
    (the profile's overlap slowdown, 0.15 uncalibrated); without it all of it is exposed."""
    hidden = _dp_job(overlap_grad_reduce=True).dp_comm_s
    exposed = _dp_job(overlap_grad_reduce=False).dp_comm_s
    assert exposed / 201 < hidden < exposed / 4


def test_zero1_regather_without_overlap_follows_the_optimizer_whole():
    """ZeRO-1's all-gather of the updated weights cannot hide behind the backward: without
    overlap_param_gather all of it is exposed, with it all but the first bucket."""
    off = _dp_job(zero_stage=1, overlap_param_gather=False).dp_comm_s
    on = _dp_job(zero_stage=1, overlap_param_gather=True).dp_comm_s
    reduce_only = _dp_job(zero_stage=1, overlap_param_gather=True, overlap_grad_reduce=True)
    assert on < off
    assert off - on > 0.5 * (off - reduce_only.dp_comm_s)
