"""The residual add + LayerNorm kernels (ops/norm_kernel.py, run by Pallas' interpreter on CPU) against
autodiff of the plain formula, and the width they take (test_pallas_kernels.py has the model
with either choice and the rules that say where the kernels run)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt2_jax.ops import norm_kernel
from gpt2_jax.config import model_config
from gpt2_jax.errors import ConfigError


def plain(x, h, h_bias, gain, bias):
    """The unfused formula in fp32: s = x + (h + h_bias) stored in x's dtype, LayerNorm of s."""
    s = (x.astype(jnp.float32) + (h.astype(jnp.float32) + h_bias)).astype(x.dtype)
    s32 = s.astype(jnp.float32)
    mean = jnp.mean(s32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(s32 - mean), axis=-1, keepdims=True)
    return s, ((s32 - mean) * jax.lax.rsqrt(var + 1e-5) * gain + bias).astype(x.dtype)


def operands(shape, dtype, seed=0):
    kx, kh, khb, kg, kb, ks, ky = jax.random.split(jax.random.key(seed), 7)
    width = shape[-1]
    x = (jax.random.normal(kx, shape) * 2 + 0.5).astype(dtype)
    h = jax.random.normal(kh, shape).astype(dtype)
    vectors = [jax.random.normal(k, (width,)) * scale + offset
               for k, scale, offset in ((khb, 0.3, 0.0), (kg, 0.2, 1.0), (kb, 0.1, 0.0))]
    cotangents = (jax.random.normal(ks, shape).astype(dtype),
                  jax.random.normal(ky, shape).astype(dtype))
    return (x, h, *vectors), cotangents


@pytest.mark.parametrize("shape", [(3, 7, 48), (300, 40), (5, 130)])
def test_values_and_gradients_match_autodiff_in_fp32(shape):
    """(3, 7, 48): 21 rows, less than one load; (300, 40): loads of 128 rows (the width padded
    to 64), the last one partly past the end, over three gradient groups; (5, 130): a width
    padded to 256. Gradients: the residual and the branch get the same d(s), the branch bias
    its column sum, the gains theirs."""
    args, cotangents = operands(shape, jnp.float32)
    got, got_vjp = jax.vjp(norm_kernel.add_layer_norm, *args)
    want, want_vjp = jax.vjp(plain, *args)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
    for g, w in zip(got_vjp(cotangents), want_vjp(cotangents)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=5e-5)


def test_bf16_activations_round_once_and_keep_fp32_parameter_gradients():
    """In the model x, h and the cotangents are bf16 and the vectors fp32 parameters: s and d(s)
    come back bf16 (one rounding of the fp32 value), the vectors' gradients fp32, from sums
    taken before any rounding."""
    args, (ds, dy) = operands((256, 96), jnp.bfloat16, seed=1)
    got, got_vjp = jax.vjp(norm_kernel.add_layer_norm, *args)
    grads = got_vjp((ds, dy))
    assert [g.dtype for g in got + grads] == [jnp.bfloat16] * 4 + [jnp.float32] * 3
    as32 = lambda a: a.astype(jnp.float32)  # noqa: E731
    np.testing.assert_array_equal(as32(got[0]), as32(plain(*args)[0]))
    # The normalization and its gradient, in fp32 autodiff, of the residual as stored (bf16).
    layer_norm = lambda s, gain, bias: plain(s, jnp.zeros_like(s), 0.0, gain, bias)[1]  # noqa
    want, want_vjp = jax.vjp(layer_norm, as32(got[0]), *args[3:])
    np.testing.assert_allclose(as32(got[1]), want, rtol=2 ** -7, atol=2e-2)
    d_norm, d_gain, d_bias = want_vjp(as32(dy))
    want_ds = d_norm + as32(ds)
    np.testing.assert_allclose(as32(grads[0]), want_ds, rtol=2 ** -7, atol=3e-2)
    np.testing.assert_array_equal(as32(grads[1]), as32(grads[0]))
    for g, w in zip(grads[2:], (jnp.sum(want_ds, axis=0), d_gain, d_bias)):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-3)


def test_rows_wider_than_one_load_are_refused(tiny_config):
    """Loads wider than norm_kernel.ROW_ELEMENTS compute wrong values on a GPU: auto leaves such a model to XLA, and an explicit pallas is an error."""
    wide = ("--config.model.n_embd=16384", "--config.model.n_head=128")
    assert model_config(tiny_config(*wide), backend="gpu", devices=1).norm_kernel == "xla"
    with pytest.raises(ConfigError, match="at most 8192 channels, and model.n_embd is 16384"):
        tiny_config("--config.model.norm_kernel=pallas", *wide)
    row, vector = jnp.ones((1, 16384)), jnp.ones((16384,))
    with pytest.raises(ValueError, match="at most 8192 channels, not 16384"):
        norm_kernel.add_layer_norm(row, row, vector, vector, vector)
