#!/usr/bin/env bash
# llm.c beside gpt2_jax on the same GPUs and the same shards (the "llm.c, same machine" figures in
# BENCHMARKS.md). llm.c's sources stay outside this repo.
#
#   benchmarks/llmc.sh build LLMC_DIR CUDNN_FRONTEND_INCLUDE
#   benchmarks/llmc.sh run LLMC_DIR SIZE MICRO_BATCH TOKENS_PER_STEP STEPS TRAIN_GLOB VAL_GLOB [GPUS]
#
# SIZE is d12 | d24 | d36 | d48 (124M ... 1558M, random init). The flags mirror our configs: no
# recompute (-r 0), ZeRO-1, weight decay 0.1, lr 6e-4, warmup 30, no eval, sampling or HellaSwag.
# Example, 124M at 65,536-token steps on one GPU (quote the globs: llm.c expands them itself):
#   benchmarks/llmc.sh run ~/llm.c d12 64 65536 300 'data/debian/debian_train_*.bin' 'data/debian/debian_val_*.bin' > llmc.log
# then `python benchmarks/llmc_result.py llmc.log ...` turns the log into our bench's figures and a
# results.jsonl row (tokens/s from the mean step time; llm.c's own tok/s column is an EMA).
# Build notes (CUDA 13, 2026-11): cuDNN and NCCL may come from the nvidia-* Python wheels; llm.c's
# Makefile finds cudnn-frontend only in ./cudnn-frontend/include or ~/cudnn-frontend/include, and
# NCCL only through dpkg. reference-facts: replace the cudaMallocManaged OOM fallback in
# llmc/cuda_utils.cuh with an error exit first (managed memory past the GPU's can hang it).
set -euo pipefail
wheel_dir() { python3 -c "import nvidia.$1 as m; print(list(m.__path__)[0])" 2>/dev/null || true; }

case "${1:-}" in
  build)
    llmc=$(cd "$2" && pwd); frontend=$(cd "$3" && pwd)
    cd "$llmc"
    mkdir -p cudnn-frontend && ln -sfn "$frontend" cudnn-frontend/include
    for lib in cudnn nccl; do
      dir=$(wheel_dir $lib)
      [ -n "$dir" ] || continue
      [ -e "$dir/lib/lib$lib.so" ] || ln -sf "$(ls "$dir"/lib/lib$lib.so.* | head -1)" "$dir/lib/lib$lib.so"
      export CPATH="$dir/include:${CPATH:-}" LIBRARY_PATH="$dir/lib:${LIBRARY_PATH:-}"
    done
    make train_gpt2cu USE_CUDNN=1 NO_USE_MPI=1 GPU_COMPUTE_CAPABILITY=90
    ;;
  run)
    llmc=$2 size=$3 micro=$4 tokens=$5 steps=$6 train=$7 val=$8 gpus=${9:-1}
    train=$(realpath -m "$train") val=$(realpath -m "$val")  # llm.c runs in its own directory
    for lib in cudnn nccl; do
      dir=$(wheel_dir $lib); [ -n "$dir" ] && export LD_LIBRARY_PATH="$dir/lib:${LD_LIBRARY_PATH:-}"
    done
    cd "$llmc"
    flags=(-i "$train" -j "$val" -e "$size" -b "$micro" -t 1024 -d "$tokens" -r 0 -z 1 -c 0.1
           -l 0.0006 -q 0.0 -u 30 -h 0 -s 0 -n 0 -v 100000 -x "$steps")
    if [ "$gpus" -eq 1 ]; then
      exec ./train_gpt2cu "${flags[@]}"
    fi
    # Several GPUs of one host without MPI: NCCL's id is exchanged through a shared directory
    # (-pi fs -pf DIR; llm.c's usage text says -pp and -pm, but its parser reads -pf and -pi).
    rendezvous=$(mktemp -d)
    for rank in $(seq 0 $((gpus - 1))); do
      ./train_gpt2cu "${flags[@]}" -pn "$gpus" -pr "$rank" -pi fs -pf "$rendezvous" -pg "$gpus" \
        > "$rendezvous/rank$rank.log" 2>&1 &
    done
    wait
    cat "$rendezvous/rank0.log"
    ;;
  *)
    sed -n '2,14p' "$0"; exit 2 ;;
esac
