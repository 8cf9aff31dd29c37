"""The LM head's loss as llm.c's fused classifier: one Pallas (Triton) kernel per row of logits.

XLA's version of the loss makes three passes over the (tokens x 50304) logits, two reductions in
the forward (max, then exp-sum) and one elementwise pass in the backward that reads the logits
again and writes d(logits). Here the forward's kernel reads each row once for an online max and
exp-sum, then again to overwrite it in place with softmax - onehot, and the backward only runs the
two GEMMs, with the upstream gradient applied to their small outputs. That also keeps them bf16
GEMMs: at 350M, with micro-steps accumulating, XLA had run the head's backward GEMMs in fp32/tf32.

Fewer passes over the logits also mean less memory. Its second pass walks each row backwards, so
that it starts on the blocks the first pass left in L2. It has no SPMD partitioning rule: on a mesh each device runs it on its own rows (sharding.per_device), which
needs whole rows of logits on each device, so not with tensor parallelism (it splits the
vocabulary). Off GPU it runs in Pallas' interpreter (tests compare it with the plain formula).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from gpt2_jax.ops import pallas
from gpt2_jax.parallel import sharding

BLOCK = 4096  # logits per row read at a time: 13 blocks cover GPT-2's 50304
NEG = -1e30  # a finite -inf, so that an empty running max minus itself is not nan


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
        # Backwards along the row: the blocks the first pass read last are still in L2.
        col, real = columns(n_blocks - 1 - i)
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
    and in their buffer; log-sum-exp per row; the target's logit per row), both fp32. On a mesh,
    each device over its own rows."""
    rows, row = ("batch", None), ("batch",)
    kernel = functools.partial(_softmax_gradient, real_vocab_size=real_vocab_size)
    return sharding.per_device(kernel, (rows, row), (rows, row, row))(logits_NxV, targets_N)


def _softmax_gradient(logits_NxV, targets_N, real_vocab_size):
    n_rows, _ = logits_NxV.shape
    return pl.pallas_call(
        functools.partial(_kernel, real_vocab_size=real_vocab_size),
        out_shape=(jax.ShapeDtypeStruct(logits_NxV.shape, logits_NxV.dtype),
                   jax.ShapeDtypeStruct((n_rows,), jnp.float32),
                   jax.ShapeDtypeStruct((n_rows,), jnp.float32)),
        grid=(n_rows,), input_output_aliases={0: 0}, interpret=pallas.interpret(),
        name="fused_classifier",
        compiler_params=plgpu.CompilerParams(num_warps=8, num_stages=1),
    )(logits_NxV, targets_N.astype(jnp.int32))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def summed_loss(h_NxD: jax.Array, w_VxD: jax.Array, targets_N: jax.Array,
                real_vocab_size: int, logits_dtype) -> jax.Array:
    """sum_n logsumexp(h[n] . w[:real_vocab_size]) - h[n] . w[target[n]], in fp32, with logits
    stored in `logits_dtype` from h's-dtype operands (w is cast to it; its gradient comes back
    in w's own dtype)."""
    return _forward(h_NxD, w_VxD, targets_N, real_vocab_size, logits_dtype)[0]


def _forward(h_NxD, w_VxD, targets_N, real_vocab_size, logits_dtype):
    w_cast_VxD = w_VxD.astype(h_NxD.dtype)
    logits_NxV = jnp.dot(h_NxD, w_cast_VxD.T, preferred_element_type=logits_dtype)
    d_logits_NxV, lse_N, target_logit_N = softmax_gradient(logits_NxV, targets_N,
                                                           real_vocab_size)
    return (jnp.sum(lse_N - target_logit_N),
            (h_NxD, w_cast_VxD, d_logits_NxV, jnp.zeros((), w_VxD.dtype)))


def _backward(real_vocab_size, logits_dtype, residuals, g):
    h_NxD, w_VxD, d_logits_NxV, w_like = residuals
    d_logits_NxV = d_logits_NxV.astype(h_NxD.dtype)
    d_h_NxD = jnp.dot(d_logits_NxV, w_VxD, preferred_element_type=jnp.float32) * g
    d_w_VxD = jnp.dot(d_logits_NxV.T, h_NxD, preferred_element_type=jnp.float32) * g
    return d_h_NxD.astype(h_NxD.dtype), d_w_VxD.astype(w_like.dtype), None


summed_loss.defvjp(_forward, _backward)
