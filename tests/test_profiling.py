"""Exposed collective time from kernel intervals (the 2-GPU overlap figure in BENCHMARKS.md)."""

import pytest

from gpt2_jax.bench import profiling

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


@pytest.mark.parametrize("name, kind", [  # kernel names from H100 profiles of the 124M/1558M step
    ("nvjet_sm90_tst_320x128_64x3_1x2_h_bz_coopB_TNT", "GEMMs"),
    ("nvjet_sm90_qrsss_320x128_128x3_1x2_h_bz_coopB_TNT", "GEMMs"),  # an FP8 GEMM
    ("gemm_fusion_dot_526", "GEMMs"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26", "attention (cuDNN)"),
    ("void cudnn::fusion::convert_dq_to_16bits<true>(void const*, void*)", "attention (cuDNN)"),
    ("ncclDevKernel_AllGather_RING_LL", "collectives"),
    ("input_add_reduce_fusion_1", "reduce fusions"),
    ("loop_convert_multiply_fusion_43", "convert fusions"),
    ("wrapped_transpose_49", "transposes"),
    ("input_scatter_fusion", "scatters"),
    ("loop_slice_fusion_4", "other fusions"),
    ("Memset 0", "copies and memsets"),
])
def test_kernels_are_sorted_into_kinds_by_name(name, kind):
    assert profiling.kernel_kind(name) == kind
    assert profiling.is_collective(name) == (kind == "collectives")


def test_time_summary_totals_kernels_by_name_or_by_kind():
    kernels = {"/device:GPU:0": [("nvjet_a", 0, 6 * MS), ("loop_convert_fusion", 6 * MS, 2 * MS)],
               "/device:GPU:1": [("nvjet_a", 0, 6 * MS), ("nvjet_b", 6 * MS, 6 * MS)]}
    by_name = profiling.time_summary(kernels).splitlines()
    assert by_name[1].split() == ["12.00", "60.0%", "2", "nvjet_a"]
    by_kind = profiling.time_summary(kernels, by_kind=True).splitlines()
    assert by_kind[1].split() == ["18.00", "90.0%", "3", "GEMMs"]
    assert by_kind[2].split() == ["2.00", "10.0%", "1", "convert", "fusions"]
