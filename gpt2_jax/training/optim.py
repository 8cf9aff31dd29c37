"""The optimizers: AdamW as llm.c trains GPT-2 (warmup + cosine schedule, decay on 2-D weights,
global-norm clip), or Muon on the hidden matrices with Adam groups for the rest (the modern recipe,
optim.name=muon)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax.contrib import MuonDimensionNumbers, scale_by_muon

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
    if o.name == "muon":
        tx = muon_with_adam_groups(o, max_steps)
    else:
        tx = optax.adamw(lr_schedule(o, max_steps), b1=o.b1, b2=o.b2, eps=o.eps,
                         weight_decay=o.weight_decay, mask=decay_mask)
    if o.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(o.grad_clip), tx)
    return tx


# How Muon sees each block matrix, as (reduction axes, output axes) of the stacked kernel; the
# other axes are batch axes, orthogonalized independently: the layer axis, and c_attn's q/k/v
# axis (q, k and v are three matrices, as in modded-nanogpt).
MUON_DIMENSIONS = {
    ("attn", "c_attn"): MuonDimensionNumbers(reduction_axis=1, output_axis=(3, 4)),  # L,D,3,H,K
    ("attn", "c_proj"): MuonDimensionNumbers(reduction_axis=(1, 2), output_axis=3),  # L,H,K,D
    ("mlp", "c_fc"): MuonDimensionNumbers(reduction_axis=1, output_axis=2),  # L,D,F
    ("mlp", "c_proj"): MuonDimensionNumbers(reduction_axis=1, output_axis=2),  # L,F,D
}


def _keys(path) -> tuple[str, ...]:
    return tuple(getattr(entry, "key", str(entry)) for entry in path)


def param_group(path) -> str:
    """muon (the blocks' weight matrices), embed, head (an untied lm_head) or scalar."""
    keys = _keys(path)
    if keys[0] == "h" and keys[-1] == "kernel":
        return "muon"
    return {"wte": "embed", "wpe": "embed", "lm_head": "head"}.get(keys[0], "scalar")


def _map_muon_leaves(fn, updates):
    """fn(leaf, its MUON_DIMENSIONS) over the Muon group's updates; the other groups' leaves
    arrive as MaskedNode placeholders and stay so."""
    masked = lambda leaf: isinstance(leaf, optax.MaskedNode)  # noqa: E731
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: leaf if masked(leaf) else fn(leaf, MUON_DIMENSIONS[_keys(path)[-3:-1]]),
        updates, is_leaf=masked)


def _muon_dimensions(updates):
    return _map_muon_leaves(lambda _, dims: dims, updates)


def scale_by_width() -> optax.GradientTransformation:
    """Muon's width scaling: sqrt(max(1, fan_out / fan_in)) (github.com/KellerJordan/Muon), so
    a wide matrix's orthogonalized update keeps its per-entry size."""

    def scale(update, dims):
        fan_in = math.prod(update.shape[a] for a in np.atleast_1d(dims.reduction_axis))
        fan_out = math.prod(update.shape[a] for a in np.atleast_1d(dims.output_axis))
        return update * math.sqrt(max(1.0, fan_out / fan_in))

    return optax.stateless(lambda updates, params=None: _map_muon_leaves(scale, updates))


def muon_with_adam_groups(o, max_steps: int) -> optax.GradientTransformation:
    """Muon (Nesterov momentum, Newton-Schulz orthogonalized) on the blocks' matrices at
    optim.muon_lr; Adam without decay on embeddings, an untied head and scalars, each at its own
    lr. Every group follows optim's warmup + cosine shape. The matrices are sharded like their
    params: XLA runs Newton-Schulz on the shards with the collectives it needs, on any mesh."""
    shape = lr_schedule(o, max_steps)

    def at_peak(peak: float) -> optax.Schedule:
        return lambda step: shape(step) * (peak / o.lr)

    def adam(peak: float) -> optax.GradientTransformation:
        return optax.adam(at_peak(peak), b1=o.b1, b2=o.b2, eps=o.eps)

    muon = optax.chain(
        scale_by_muon(beta=o.muon_momentum, nesterov=True,
                      weight_dimension_numbers=_muon_dimensions),
        scale_by_width(), optax.scale_by_learning_rate(at_peak(o.muon_lr)))
    groups = {"muon": muon, "embed": adam(o.embed_lr), "head": adam(o.head_lr),
              "scalar": adam(o.scalar_lr)}
    return optax.partition(groups, lambda params: jax.tree_util.tree_map_with_path(
        lambda path, _: param_group(path), params))
