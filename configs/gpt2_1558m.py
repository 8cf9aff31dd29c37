"""GPT-2 1558M (d48) on FineWeb-Edu 100B, llm.c's scripts/run_gpt2_1558M.sh settings.

32,000 steps of 1,048,576 tokens (~33.5B tokens); on 8 GPUs, 16 x 1024 sequences per GPU per
micro-step. Shard parameters and optimizer state with --config.mesh.fsdp=8 (or -1) on big runs.

    python -m gpt2_jax.train --config configs/gpt2_1558m.py
"""

from gpt2_jax.configs.gpt2 import gpt2


def get_config():
    return gpt2("1558m")
