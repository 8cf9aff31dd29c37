#!/usr/bin/env bash
# bf16 vs fp32 training on one GPU: GPT-2 124M on the shipped Shakespeare shards, 20 steps of
# 65,536 tokens, the same batches in every run. Prints each run's losses and the largest relative
# difference from the fp32 run (goal: under 1%).
#   launch/numerics_check.sh [OUT_DIR]
set -euo pipefail
out=${1:-runs/numerics}
source "$(dirname "$0")/gpu_env.sh"
run() {
  python -m gpt2_jax.train --config configs/gpt2_124m.py --workdir "$out/$1" \
    --config.data.source=shakespeare --config.train.micro_batch_size=16 \
    --config.train.total_batch_size=65536 --config.train.max_steps=20 \
    --config.optim.warmup_steps=5 --config.train.eval_every=0 --config.train.hellaswag_every=0 \
    --config.train.sample_tokens=0 \
    --config.train.resume=False "${@:2}" | grep -E "^model|^done"
}
run fp32 --config.model.dtype=float32 --config.model.logits_dtype=float32
run bf16_fp32_logits --config.model.logits_dtype=float32
run bf16 --config.model.logits_dtype=bfloat16
python - "$out" <<'PY'
import json, sys
def losses(run):
    return [json.loads(l)["loss"] for l in open(f"{sys.argv[1]}/{run}/metrics.jsonl") if '"loss"' in l]
ref = losses("fp32")
print("fp32", " ".join(f"{x:.3f}" for x in ref))
for run in ("bf16_fp32_logits", "bf16"):
    got = losses(run)
    diff = max(abs(a - b) / b for a, b in zip(got, ref))
    print(run, " ".join(f"{x:.3f}" for x in got), f"| max rel diff {100 * diff:.2f}%")
PY
