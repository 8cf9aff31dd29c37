#!/usr/bin/env bash
# One node, all of its GPUs in one process (one mesh; mesh.data=-1 spreads the batch over them).
#   launch/single_node.sh --config configs/gpt2_124m.py [--config.KEY=VALUE ...] [--workdir DIR]
# Interrupted (Ctrl-C, SIGTERM), it checkpoints and exits; the same command resumes.
set -euo pipefail
source "$(dirname "$0")/gpu_env.sh"
exec python -m gpt2_jax.train "$@"
