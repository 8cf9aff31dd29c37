# Environment for fast GPU training; sourced by the launch scripts (and by bench runs).
# XLA's latency-hiding scheduler overlaps collectives (gradient all-reduce, FSDP all-gathers)
# with compute. Left at XLA's defaults because changing them was slower or no faster
# (docs/benchmarks/): Triton GEMM fusions, command buffers.
# JAX may take 95% of GPU memory instead of its default 75%.
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}"
