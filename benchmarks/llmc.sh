#!/usr/bin/env bash
# llm.c beside gpt2_jax on the same GPUs and the same shards (the llm.c columns of BENCHMARKS.md).
# llm.c's sources stay outside this repo.
#
#   benchmarks/llmc.sh build LLMC_DIR CUDNN_FRONTEND_INCLUDE
#   benchmarks/llmc.sh run LLMC_DIR SIZE MICRO_BATCH TOKENS_PER_STEP STEPS TRAIN_GLOB VAL_GLOB [GPUS]
#   benchmarks/llmc.sh command LLMC_DIR SIZE ...   (as run: print the command of each rank instead)
#
# SIZE is d12 | d24 | d36 | d48 (124M ... 1558M, random init). The flags mirror our configs: no
# recompute (-r 0), ZeRO-1, weight decay 0.1, lr 6e-4, warmup 30, no eval, sampling or HellaSwag.
# Each GPU is one llm.c process; NCCL's id is exchanged through a fresh directory (-pi fs -pf DIR),
# since the build has no MPI (llm.c's default -pi mpi exits at once there, even on one GPU).
# Example, 124M at 65,536-token steps on one GPU (quote the globs: llm.c expands them itself):
#   export BENCH_RUN_ID=h100-$(date +%Y%m%d)-a   # shared with the bench rows of this sitting
#   benchmarks/llmc.sh run ~/llm.c d12 64 65536 300 'data/debian/debian_train_*.bin' 'data/debian/debian_val_*.bin' > llmc.log
#   python benchmarks/llmc_result.py llmc.log --tokens_per_step 65536 --gpu "1x NVIDIA H100 80GB HBM3" --record
# turns the log into our bench's figures and a results.jsonl row (tokens/s from the mean step time;
# llm.c's own tok/s column is an EMA). The log's first line is the command, which the row keeps.
# Build notes (CUDA 13): cuDNN and NCCL may come from the nvidia-* Python wheels; llm.c's Makefile
# finds cudnn-frontend only in ./cudnn-frontend/include or ~/cudnn-frontend/include, and NCCL only
# through dpkg. Before building, make the cudaMallocManaged OOM fallback in llmc/cuda_utils.cuh an
# error exit (managed memory past the GPU's can hang it).
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
  run|command)
    mode=$1 llmc=$2 size=$3 micro=$4 tokens=$5 steps=$6 train=$7 val=$8 gpus=${9:-1}
    train=$(realpath -m "$train") val=$(realpath -m "$val")  # llm.c runs in its own directory
    flags=(-i "$train" -j "$val" -e "$size" -b "$micro" -t 1024 -d "$tokens" -r 0 -z 1 -c 0.1
           -l 0.0006 -q 0.0 -u 30 -h 0 -s 0 -n 0 -v 100000 -x "$steps")
    # llm.c's usage text says -pm and -pp; its parser reads -pi and -pf.
    rendezvous=$([ "$mode" = run ] && mktemp -d || echo RENDEZVOUS_DIR)
    quoted() { local line; line=$(printf '%q ' "$@"); echo "${line% }"; }
    rank_command() {
      quoted ./train_gpt2cu "${flags[@]}" -pi fs -pf "$rendezvous" -pn "$gpus" -pr "$1" -pg "$gpus"
    }
    if [ "$mode" = command ]; then
      for rank in $(seq 0 $((gpus - 1))); do echo "cd $(quoted "$llmc") && $(rank_command "$rank")"; done
      exit 0
    fi
    for lib in cudnn nccl; do
      dir=$(wheel_dir $lib); [ -n "$dir" ] && export LD_LIBRARY_PATH="$dir/lib:${LD_LIBRARY_PATH:-}"
    done
    echo "# $(quoted "$0" "$@")"
    cd "$llmc"
    for rank in $(seq 1 $((gpus - 1))); do
      eval "$(rank_command "$rank")" > "$rendezvous/rank$rank.log" 2>&1 &
    done
    eval "$(rank_command 0)"  # rank 0 in the foreground: its log is the run's
    wait
    ;;
  *)
    sed -n '2,22p' "$0"; exit 2 ;;
esac
