"""Exposed collective time from kernel intervals (the 2-GPU overlap figure in BENCHMARKS.md)."""

import pytest

from gpt2_jax import profiling

MS = 1_000_000  # ns


def test_exposed_time_is_collective_time_no_compute_kernel_covers():
    events = [("fusion_1", 0, 10 * MS), ("gemm", 10 * MS, 10 * MS),  # compute 0-20 ms
              ("ncclDevKernel_AllReduce_Sum_f32_RING_LL", 5 * MS, 10 * MS),  # hidden
              ("all-gather-start", 18 * MS, 6 * MS),  # 2 ms hidden, 4 ms exposed (20-24)
              ("fusion_2", 30 * MS, 10 * MS),  # compute 30-40
              ("ncclDevKernel_ReduceScatter", 26 * MS, 2 * MS)]  # 2 ms exposed
    overlap = profiling.overlap_of("/device:GPU:0", events)
    assert overlap.span_ms == pytest.approx(40)
    assert overlap.compute_ms == pytest.approx(30)
    assert overlap.collective_ms == pytest.approx(10 + 6 + 2)  # 5-15, 18-24, 26-28 ms
    assert overlap.exposed_ms == pytest.approx(6)
    assert overlap.exposed_share == pytest.approx(6 / 40)


def test_a_fully_hidden_collective_is_not_exposed():
    events = [("fusion", 0, 10 * MS), ("ncclDevKernel_AllGather", 2 * MS, 3 * MS),
              ("ncclDevKernel_AllGather", 4 * MS, 4 * MS)]
    overlap = profiling.overlap_of("/device:GPU:1", events)
    assert overlap.collective_ms == pytest.approx(6)  # 2-8 ms, the two merged
    assert overlap.exposed_ms == 0
