"""Activation and parameter health, read at a low cadence: a drifting run shows it here (growing
residual-stream RMS, exploding logits, a layer's weights running away) before its loss spikes."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from gpt2_jax.parallel import sharding
from gpt2_jax.model import GPT


def _rms_per_layer(x_LxN: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.mean(jnp.square(x_LxN.reshape(x_LxN.shape[0], -1)), axis=1))


def make_health_fn(model: GPT) -> Callable:
    """(params, tokens[..., T+1]) -> per-layer residual RMS, per-layer RMS of each block weight,
    embedding RMS and the largest |logit| over the real vocabulary, on the batch's first 4
    sequences (jitted; the slicing happens inside, so a multi-host batch works as it is)."""

    @jax.jit
    def health(params, tokens_xT1):
        tokens_BxT1 = tokens_xT1.reshape(-1, tokens_xT1.shape[-1])[:4]
        with sharding.axis_rules():
            logits_BxTxV, variables = model.apply({"params": params}, tokens_BxT1[:, :-1],
                                                  mutable=["intermediates"])
        (residual_rms_L,) = variables["intermediates"]["h"]["residual_rms"]
        block_rms = {"/".join(k.key for k in path): _rms_per_layer(leaf)
                     for path, leaf in jax.tree_util.tree_leaves_with_path(params["h"])
                     if path[-1].key == "kernel"}
        return {"residual_rms": residual_rms_L,
                "max_abs_logit": jnp.max(jnp.abs(logits_BxTxV[..., :model.config.real_vocab_size])),
                "param_rms": {**block_rms,
                              "wte": jnp.sqrt(jnp.mean(jnp.square(params["wte"]["embedding"])))}}

    return health


def health_line(step: int, report: dict) -> str:
    """One console line summarizing a health report."""
    residual = [float(x) for x in report["residual_rms"]]
    worst = max(range(len(residual)), key=residual.__getitem__)
    return (f"step {step} | health: residual rms {min(residual):.2f}..{max(residual):.2f} "
            f"(max at layer {worst}) | max |logit| {float(report['max_abs_logit']):.1f} | "
            f"wte rms {float(report['param_rms']['wte']):.4f}")
