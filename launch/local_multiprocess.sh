#!/usr/bin/env bash
# Two CPU processes on this machine acting as two hosts (2 devices each): exercises the multi-host
# code paths (jax.distributed, per-process data, process-0 logging) without a cluster.
#   launch/local_multiprocess.sh [--config.KEY=VALUE ...]
set -euo pipefail
port=${PORT:-$(python -c 'import socket; s=socket.socket(); s.bind(("",0)); print(s.getsockname()[1])')}
export XLA_FLAGS="--xla_force_host_platform_device_count=2" JAX_PLATFORMS=cpu
pids=()
for id in 0 1; do
  python -m gpt2_jax.train --workdir "${WORKDIR:-runs/multiprocess}" \
    --coordinator_address "localhost:$port" --num_processes 2 --process_id "$id" \
    --config.train.micro_batch_size=2 --config.train.total_batch_size=1024 "$@" &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
