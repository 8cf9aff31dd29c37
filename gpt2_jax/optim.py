"""AdamW as llm.c trains GPT-2: warmup + cosine schedule, decay on 2-D weights, global-norm clip."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

# Parameters that get weight decay: matmul kernels, embeddings and an untied lm_head. Biases and
# norm gains do not. (Decided by name, not ndim: under nn.scan every parameter gains a leading
# "layers" axis.)
DECAYED_PARAM_NAMES = ("kernel", "embedding", "lm_head")


def lr_schedule(optim_config, max_steps: int) -> optax.Schedule:
    """llm.c's schedule: lr * (step + 1) / warmup, then cosine from lr to final_lr_frac * lr."""
    peak, warmup = optim_config.lr, optim_config.warmup_steps
    final = optim_config.final_lr_frac * peak

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = peak * (step + 1) / max(warmup, 1)
        progress = jnp.clip((step - warmup) / max(max_steps - warmup, 1), 0.0, 1.0)
        cosine = final + 0.5 * (peak - final) * (1 + jnp.cos(math.pi * progress))
        return jnp.where(step < warmup, warm, cosine)

    return schedule


def decay_mask(params):
    """True for the parameters that get weight decay."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) in DECAYED_PARAM_NAMES, params)


def make_optimizer(optim_config, max_steps: int) -> optax.GradientTransformation:
    o = optim_config
    adamw = optax.adamw(lr_schedule(o, max_steps), b1=o.b1, b2=o.b2, eps=o.eps,
                        weight_decay=o.weight_decay, mask=decay_mask)
    if o.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(o.grad_clip), adamw)
    return adamw
