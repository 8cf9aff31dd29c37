"""GPT-2 124M (d12) on FineWeb 10B, llm.c's scripts/run_gpt2_124M.sh settings.

    python -m gpt2_jax.train --config configs/gpt2_124m.py
Data: `python -m gpt2_jax.data.prepare` writes data/fineweb10B/fineweb_{train,val}_*.bin.
"""

from gpt2_jax.configs.gpt2 import gpt2


def get_config():
    return gpt2("124m")  # 10B tokens: 19,073 steps of 524,288
