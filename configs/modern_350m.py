"""GPT-2 350M with the modern recipe (RoPE, RMSNorm, QK-norm, ReLU^2, an untied head, a logit
softcap, Muon) on configs/gpt2_350m.py's shape, batch and data; gpt2_jax/configs/gpt2.py's
`modern` says what is taken from modded-nanogpt and where we differ. Its hyperparameters are the
124M record's, not tuned at this size: the config is measured for speed, not yet trained.

    python -m gpt2_jax.train --config configs/modern_350m.py
"""

from gpt2_jax.configs.gpt2 import modern


def get_config():
    return modern("350m")
