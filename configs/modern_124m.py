"""GPT-2 124M with the modern recipe (RoPE, RMSNorm, QK-norm, ReLU^2, an untied head, a logit
softcap, Muon), after modded-nanogpt's record; gpt2_jax/configs/gpt2.py's `modern` says what
is taken from it and where we differ.

    python -m gpt2_jax.train --config configs/modern_124m.py
"""

from gpt2_jax.configs.gpt2 import modern


def get_config():
    return modern("124m")
