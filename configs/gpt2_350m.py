"""GPT-2 350M (d24) on FineWeb 100B, llm.c's scripts/run_gpt2_350M.sh settings (~31B tokens).

    python -m gpt2_jax.train --config configs/gpt2_350m.py
On a GPU with less than 80 GB, halve the micro batch: --config.train.micro_batch_size=32.
"""

from gpt2_jax.configs.gpt2 import gpt2


def get_config():
    return gpt2("350m")
