"""The LM head and its loss as one custom VJP, the way llm.c's fused classifier works.

The forward computes the logits, their log-sum-exp and target logit, and d(loss)/d(logits) =
softmax - onehot at once; the backward is then only the head's two GEMMs, with the upstream
gradient applied to their small outputs. Autodiff of the plain formula makes ~6 passes over the
(tokens x 50304) logits; this makes three with XLA's fusions (max, exp-sum, the gradient), and
with `kernel="pallas"` one Triton kernel per row that reads it for an online max and exp-sum and
then overwrites it in place with the gradient. Writing the backward by hand also keeps the head's
GEMMs bf16: at 350M, with micro-steps accumulating, XLA's autodiff had run them in fp32/tf32
(gone with the Pallas kernel; the XLA version of this VJP is not yet timed on a GPU).

On one H100 (BENCHMARKS.md, run q) the Pallas kernel takes 8.0 ms of a 124M step where XLA's
passes took 10.2, and the step is 1.8-2.3% faster at 124M, 11.5% at 350M, unchanged at 1558M,
with 5 GiB less memory at 124M. It has no SPMD partitioning rule, so `model.loss_kernel=auto`
uses it on one device only; the XLA version partitions like any other op. Off GPU the kernel runs
in Pallas' interpreter (tests compare both with the plain formula).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

BLOCK = 4096  # logits per row read at a time: 13 blocks cover GPT-2's 50304
NEG = -1e30  # a finite -inf, so that an empty running max minus itself is not nan


def _interpret() -> bool:
    return jax.default_backend() != "gpu"


def _kernel(logits_ref, targets_ref, dlogits_ref, lse_ref, target_logit_ref, *,
            real_vocab_size: int):
    _, vocab = logits_ref.shape
    row = pl.program_id(0) + jnp.arange(1)
    target = plgpu.load(targets_ref.at[row])
    n_blocks = pl.cdiv(vocab, BLOCK)

    def columns(i):
        col = i * BLOCK + jnp.arange(BLOCK)
        return col, col < real_vocab_size

    def statistics(i, carry):
        running_max, running_sum, target_logit = carry
        col, real = columns(i)
        x = plgpu.load(logits_ref.at[row[:, None], col[None, :]], mask=real[None, :],
                       other=-jnp.inf).astype(jnp.float32)
        new_max = jnp.maximum(running_max, jnp.max(x, axis=1))
        running_sum = (running_sum * jnp.exp(running_max - new_max)
                       + jnp.sum(jnp.exp(x - new_max[:, None]), axis=1))
        target_logit += jnp.sum(jnp.where(col[None, :] == target[:, None], x, 0.0), axis=1)
        return new_max, running_sum, target_logit

    start = (jnp.full((1,), NEG, jnp.float32), jnp.zeros((1,), jnp.float32),
             jnp.zeros((1,), jnp.float32))
    row_max, row_sum, target_logit = jax.lax.fori_loop(0, n_blocks, statistics, start)
    lse = row_max + jnp.log(row_sum)

    def gradient(i, carry):
        col, real = columns(i)
        in_row = col < vocab
        x = plgpu.load(logits_ref.at[row[:, None], col[None, :]], mask=real[None, :],
                       other=-jnp.inf).astype(jnp.float32)
        d = jnp.exp(x - lse[:, None]) - (col[None, :] == target[:, None]).astype(jnp.float32)
        plgpu.store(dlogits_ref.at[row[:, None], col[None, :]], d.astype(dlogits_ref.dtype),
                    mask=in_row[None, :])
        return carry

    jax.lax.fori_loop(0, n_blocks, gradient, 0)
    plgpu.store(lse_ref.at[row], lse)
    plgpu.store(target_logit_ref.at[row], target_logit)


def softmax_gradient(logits_NxV: jax.Array, targets_N: jax.Array, real_vocab_size: int):
    """(softmax - onehot over the first `real_vocab_size` columns, 0 beyond, in the logits' dtype
    and in their buffer; log-sum-exp per row; the target's logit per row), both fp32."""
    n_rows, _ = logits_NxV.shape
    return pl.pallas_call(
        functools.partial(_kernel, real_vocab_size=real_vocab_size),
        out_shape=(jax.ShapeDtypeStruct(logits_NxV.shape, logits_NxV.dtype),
                   jax.ShapeDtypeStruct((n_rows,), jnp.float32),
                   jax.ShapeDtypeStruct((n_rows,), jnp.float32)),
        grid=(n_rows,), input_output_aliases={0: 0}, interpret=_interpret(),
        name="fused_classifier",
        compiler_params=plgpu.CompilerParams(num_warps=8, num_stages=1),
    )(logits_NxV, targets_N.astype(jnp.int32))


def xla_softmax_gradient(logits_NxV: jax.Array, targets_N: jax.Array, real_vocab_size: int,
                         softcap: float = 0.0):
    """softmax_gradient's three results from XLA fusions, with an optional softcap (logits
    c * tanh(logits / c), whose derivative the gradient includes)."""
    z_NxV = logits_NxV.astype(jnp.float32)
    if softcap > 0:
        tanh_NxV = jnp.tanh(z_NxV / softcap)
        z_NxV = softcap * tanh_NxV
    real_V = jnp.arange(logits_NxV.shape[-1]) < real_vocab_size
    max_N = jnp.max(jnp.where(real_V, z_NxV, -jnp.inf), axis=-1)
    lse_N = max_N + jnp.log(jnp.sum(jnp.where(real_V, jnp.exp(z_NxV - max_N[:, None]), 0.0),
                                    axis=-1))
    target_logit_N = jnp.take_along_axis(z_NxV, targets_N[:, None], axis=-1)[:, 0]
    onehot_NxV = jnp.arange(logits_NxV.shape[-1]) == targets_N[:, None]
    d_NxV = jnp.where(real_V, jnp.exp(z_NxV - lse_N[:, None]), 0.0) - onehot_NxV
    if softcap > 0:
        d_NxV = d_NxV * (1.0 - tanh_NxV * tanh_NxV)
    return d_NxV.astype(logits_NxV.dtype), lse_N, target_logit_N


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def summed_loss(h_NxD: jax.Array, w_VxD: jax.Array, targets_N: jax.Array, real_vocab_size: int,
                logits_dtype, kernel: str = "xla", softcap: float = 0.0) -> jax.Array:
    """sum_n logsumexp(z[n, :real_vocab_size]) - z[n, target[n]] for the logits z = h . w^T
    (softcapped if `softcap` > 0), in fp32, the logits stored in `logits_dtype` from h's-dtype
    operands (w is cast to it; its gradient comes back in w's own dtype). `kernel`: "pallas"
    (no softcap) or "xla"."""
    return _forward(h_NxD, w_VxD, targets_N, real_vocab_size, logits_dtype, kernel, softcap)[0]


def _forward(h_NxD, w_VxD, targets_N, real_vocab_size, logits_dtype, kernel, softcap):
    w_cast_VxD = w_VxD.astype(h_NxD.dtype)
    logits_NxV = jnp.dot(h_NxD, w_cast_VxD.T, preferred_element_type=logits_dtype)
    if kernel == "pallas":
        if softcap > 0:
            raise ValueError("the Pallas loss kernel has no logit softcap")
        d_logits_NxV, lse_N, target_logit_N = softmax_gradient(logits_NxV, targets_N,
                                                               real_vocab_size)
    else:
        d_logits_NxV, lse_N, target_logit_N = xla_softmax_gradient(logits_NxV, targets_N,
                                                                   real_vocab_size, softcap)
    return (jnp.sum(lse_N - target_logit_N),
            (h_NxD, w_cast_VxD, d_logits_NxV, jnp.zeros((), w_VxD.dtype)))


def _backward(real_vocab_size, logits_dtype, kernel, softcap, residuals, g):
    h_NxD, w_VxD, d_logits_NxV, w_like = residuals
    d_logits_NxV = d_logits_NxV.astype(h_NxD.dtype)
    d_h_NxD = jnp.dot(d_logits_NxV, w_VxD, preferred_element_type=jnp.float32) * g
    d_w_VxD = jnp.dot(d_logits_NxV.T, h_NxD, preferred_element_type=jnp.float32) * g
    return d_h_NxD.astype(h_NxD.dtype), d_w_VxD.astype(w_like.dtype), None


summed_loss.defvjp(_forward, _backward)
