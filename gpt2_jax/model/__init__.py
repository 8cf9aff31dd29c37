"""The GPT: the flax module (gpt.py), its LM head and loss (loss.py), and what is read off its
params without running it (params.py)."""

from gpt2_jax.model.gpt import REMAT_CHOICES, GPT, GPTConfig
from gpt2_jax.model.loss import cross_entropy, lm_head_logits, next_token_loss
from gpt2_jax.model.params import (abstract_params, count_params, flops_per_token, init_params,
                                   param_logical_specs)

__all__ = ["GPT", "GPTConfig", "REMAT_CHOICES", "abstract_params", "count_params",
           "cross_entropy", "flops_per_token", "init_params", "lm_head_logits",
           "next_token_loss", "param_logical_specs"]
