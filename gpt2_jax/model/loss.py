"""The LM head and the next-token loss: logits accumulated in fp32, softmax cross-entropy with a
one-pass custom backward (or the Pallas kernel), optionally a chunk of tokens at a time."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from gpt2_jax.ops import loss_kernel


def lm_head_logits(h_NxD: jax.Array, wte_VxD: jax.Array, dtype=jnp.float32,
                   real_vocab_size: int | None = None, softcap: float = 0.0) -> jax.Array:
    """LM head: logits stored in `dtype`, accumulated in fp32 from compute-dtype operands.

    With `softcap` > 0 the logits are softcap * tanh(logits / softcap). With `real_vocab_size`
    the padded vocabulary entries are -inf, so they never win a sample and carry no probability
    (the loss masks them itself, inside its reductions).
    """
    logits_NxV = jnp.dot(h_NxD, wte_VxD.astype(h_NxD.dtype).T, preferred_element_type=dtype)
    if softcap > 0:
        logits_NxV = (softcap * jnp.tanh(logits_NxV.astype(jnp.float32) / softcap)
                      ).astype(dtype)
    if real_vocab_size is None:
        return logits_NxV
    return jnp.where(jnp.arange(wte_VxD.shape[0]) < real_vocab_size, logits_NxV, -jnp.inf)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def summed_softmax_cross_entropy(logits_NxV: jax.Array, targets_N: jax.Array,
                                 real_vocab_size: int) -> jax.Array:
    """sum_n (logsumexp of logits[n, :real_vocab_size]) - logits[n, target[n]], in fp32.

    A custom VJP, like llm.c's fused classifier: the forward reads the logits twice (max, then
    exp-sum) and the backward writes d(logits) = softmax - onehot in one pass, instead of the ~6
    passes over the (tokens x 50304) array that autodiff of the plain formula makes.
    """
    return _xent_forward(logits_NxV, targets_N, real_vocab_size)[0]


def _real_vocab(logits_NxV: jax.Array, real_vocab_size: int) -> jax.Array:
    return jnp.arange(logits_NxV.shape[-1]) < real_vocab_size


def _xent_forward(logits_NxV, targets_N, real_vocab_size):
    real_V = _real_vocab(logits_NxV, real_vocab_size)
    x_NxV = logits_NxV.astype(jnp.float32)
    max_N = jnp.max(jnp.where(real_V, x_NxV, -jnp.inf), axis=-1)
    sum_exp_N = jnp.sum(jnp.where(real_V, jnp.exp(x_NxV - max_N[:, None]), 0.0), axis=-1)
    lse_N = max_N + jnp.log(sum_exp_N)
    target_N = jnp.take_along_axis(x_NxV, targets_N[:, None], axis=-1)[:, 0]
    return jnp.sum(lse_N - target_N), (logits_NxV, targets_N, lse_N)


def _xent_backward(real_vocab_size, residuals, g):
    logits_NxV, targets_N, lse_N = residuals
    x_NxV = logits_NxV.astype(jnp.float32)
    probs_NxV = jnp.where(_real_vocab(logits_NxV, real_vocab_size),
                          jnp.exp(x_NxV - lse_N[:, None]), 0.0)
    onehot_NxV = jnp.arange(logits_NxV.shape[-1]) == targets_N[:, None]
    d_logits_NxV = (probs_NxV - onehot_NxV) * g
    return d_logits_NxV.astype(logits_NxV.dtype), None


summed_softmax_cross_entropy.defvjp(_xent_forward, _xent_backward)


def cross_entropy(h_NxD: jax.Array, wte_VxD: jax.Array, targets_N: jax.Array,
                  real_vocab_size: int, chunk_size: int = 0,
                  logits_dtype=jnp.float32, softcap: float = 0.0,
                  kernel: str = "xla") -> jax.Array:
    """Mean next-token cross-entropy over the real vocabulary, softmax computed in float32.

    The logits are stored in `logits_dtype` (bfloat16 halves their memory traffic, as in llm.c's
    fused classifier). With `chunk_size` > 0 they exist only `chunk_size` tokens at a time, in the
    forward and (through rematerialization) the backward pass: 64x1024 tokens of float32 logits
    would be 13 GB. `kernel="pallas"` computes the loss and d(logits) in one Pallas kernel
    (ops/loss_kernel.py; no softcap).
    """

    def summed_loss(h_CxD, targets_C):
        if kernel == "pallas":
            return loss_kernel.summed_loss(h_CxD, wte_VxD, targets_C, real_vocab_size,
                                                logits_dtype)
        logits_CxV = lm_head_logits(h_CxD, wte_VxD, logits_dtype, softcap=softcap)
        return summed_softmax_cross_entropy(logits_CxV, targets_C, real_vocab_size)

    n_tokens = h_NxD.shape[0]
    if chunk_size <= 0 or chunk_size >= n_tokens:
        return summed_loss(h_NxD, targets_N) / n_tokens
    if n_tokens % chunk_size:
        raise ValueError(f"loss chunk size {chunk_size} must divide the {n_tokens} tokens of a "
                         "micro-batch (train.loss_chunk_size)")
    h_MxCxD = h_NxD.reshape(n_tokens // chunk_size, chunk_size, -1)
    targets_MxC = targets_N.reshape(n_tokens // chunk_size, chunk_size)
    chunk_sums_M = jax.lax.map(lambda args: jax.checkpoint(summed_loss)(*args),
                               (h_MxCxD, targets_MxC))
    return jnp.sum(chunk_sums_M) / n_tokens


def next_token_loss(model, params: Any, tokens_BxT1: jax.Array,
                    chunk_size: int = 0) -> jax.Array:
    """Mean loss of predicting each row's tokens 1..T from tokens 0..T-1 ((batch, T + 1) rows,
    as the data pipeline makes them)."""
    return model.apply({"params": params}, tokens_BxT1[:, :-1], tokens_BxT1[:, 1:], chunk_size,
                       method="loss")
