"""FP8 matmuls for Hopper: e4m3 operands forward, e5m2 gradients backward.

Per-tensor *current* scaling: each operand is divided by a power of two close to
amax(|x|) / fp8_max just before the cast, so no scale state is carried between steps (nothing to
shard, checkpoint or resume; the train state is the bf16 one's). A power of two is exact in every
float type, so the scale survives the compute dtype unrounded.

The dots take the fp8 arrays themselves, which XLA compiles to cuBLASLt FP8 GEMMs writing the
compute dtype; the product is then multiplied by the two scales, exactly, since they are powers
of two. (Written instead as a dot of "dequantized" operands, the fp8 arrays converted back to the
compute dtype and scaled, XLA's GPU compiler kept the dots as bf16 GEMMs: no FP8 GEMM at all.) On CPU, XLA converts the float8 operands to a wide type, so the same code runs (slowly) in
tests.

Accumulation: Hopper's FP8 tensor cores keep a partial sum of limited precision unless cuBLASLt
promotes it to fp32 every few steps of the contraction. XLA skips the promotion ("fast
accumulation") for FP8 dots at DEFAULT precision and keeps it at HIGHEST. Like Transformer Engine
and flax's fp8_ops, the forward product uses DEFAULT and the two gradient products HIGHEST: the
weight gradient sums over every token of a micro-batch (tens of thousands).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

E4M3 = jnp.float8_e4m3fn  # forward operands: more mantissa
E5M2 = jnp.float8_e5m2  # gradients: more range
FAST = jax.lax.Precision.DEFAULT  # FP8 GEMM with fast (imprecise) accumulation: the forward
PRECISE = jax.lax.Precision.HIGHEST  # partial sums promoted to fp32: the gradients


def quantize(x: jax.Array, fp8_dtype) -> tuple[jax.Array, jax.Array]:
    """(x / scale as `fp8_dtype`, scale): scale is the smallest power of two that brings
    amax(|x|) within the format's largest value (1 for an all-zero x)."""
    fp8_max = float(jnp.finfo(fp8_dtype).max)
    amax = jnp.max(jnp.abs(x)).astype(jnp.float32)
    scale = jnp.where(amax > 0, jnp.exp2(jnp.ceil(jnp.log2(amax / fp8_max))), 1.0)
    q = jnp.clip(x.astype(jnp.float32) / scale, -fp8_max, fp8_max).astype(fp8_dtype)
    return q, scale


def _scaled_dot(a, b, contract: tuple[int, int], scale: jax.Array, precision,
                out_dtype) -> jax.Array:
    """(a . b) * scale in `out_dtype` for 2-D fp8 operands, contracting a's axis contract[0] with
    b's contract[1]; fp32 accumulators, promoted or not as `precision` says (above)."""
    y = jax.lax.dot_general(a, b, (((contract[0],), (contract[1],)), ((), ())),
                            precision=precision, preferred_element_type=out_dtype)
    return y * scale.astype(out_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def matmul(x_NxI: jax.Array, w_IxO: jax.Array, out_dtype) -> jax.Array:
    """x @ w with both operands in e4m3, in `out_dtype`; the backward multiplies e5m2 gradients
    by the saved e4m3 operands. Gradients come back in x's and w's own dtypes."""
    return _matmul_forward(x_NxI, w_IxO, out_dtype)[0]


def _matmul_forward(x_NxI, w_IxO, out_dtype):
    xq_NxI, x_scale = quantize(x_NxI, E4M3)
    wq_IxO, w_scale = quantize(w_IxO, E4M3)
    y_NxO = _scaled_dot(xq_NxI, wq_IxO, (1, 0), x_scale * w_scale, FAST, out_dtype)
    # The backward keeps the fp8 copies; two empty arrays carry x's and w's dtypes, which the
    # gradients must come back in (residuals hold arrays only).
    return y_NxO, (xq_NxI, x_scale, wq_IxO, w_scale, jnp.zeros((), x_NxI.dtype),
                   jnp.zeros((), w_IxO.dtype))


def _matmul_backward(out_dtype, residuals, g_NxO):
    xq_NxI, x_scale, wq_IxO, w_scale, x_like, w_like = residuals
    gq_NxO, g_scale = quantize(g_NxO, E5M2)
    dx_NxI = _scaled_dot(gq_NxO, wq_IxO, (1, 1), g_scale * w_scale, PRECISE, x_like.dtype)
    dw_IxO = _scaled_dot(xq_NxI, gq_NxO, (0, 0), x_scale * g_scale, PRECISE, w_like.dtype)
    return dx_NxI, dw_IxO


matmul.defvjp(_matmul_forward, _matmul_backward)
