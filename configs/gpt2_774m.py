"""GPT-2 774M (d36) on FineWeb 100B, llm.c's scripts/run_gpt2_774M.sh settings (~150B tokens).

    python -m gpt2_jax.train --config configs/gpt2_774m.py
"""

from gpt2_jax.configs.gpt2 import gpt2


def get_config():
    return gpt2("774m")
