# Environment for fast GPU training; sourced by the launch scripts (and by bench runs).
# XLA's latency-hiding scheduler overlaps collectives (gradient all-reduce, FSDP all-gathers)
# with compute: on two H100s at most 2.7% of the step is collective time with no compute beside it
# (BENCHMARKS.md). Measured and left at XLA's defaults (2026-11-25, one H100): Triton GEMM fusions
# off (-3.3% to -3.8%), command buffers widened to while loops (no change) or off (-1.4%).
# JAX may take 95% of GPU memory instead of its default 75%.
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}"
