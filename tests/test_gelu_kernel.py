"""The MLP's bias + GELU kernels (ops/gelu_kernel.py, run by Pallas' interpreter on CPU) against
autodiff of the plain formula (test_pallas_kernels.py has the model with either choice and the
rules that say where the kernels run)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt2_jax.ops import gelu_kernel


def plain(z, b):
    return jax.nn.gelu(z + b, approximate=True)


@pytest.mark.parametrize("shape", [(3, 96, 192), (600, 48)])
def test_value_and_gradients_match_autodiff_in_fp32(shape):
    """(3, 96, 192): 288 rows in bias-gradient groups of 32, 192 columns in blocks of 64;
    (600, 48): groups of 8 rows, one block of 16 columns. The absolute tolerance covers the
    far negative tail, where 1 + tanh(.) cancels in fp32 (values there are about 1e-5)."""
    kz, kb, kd = jax.random.split(jax.random.key(0), 3)
    z = jax.random.normal(kz, shape) * 3  # well into both tails of the GELU
    b = jax.random.normal(kb, shape[-1:])
    dy = jax.random.normal(kd, shape)
    np.testing.assert_allclose(gelu_kernel.bias_gelu(z, b), plain(z, b), rtol=1e-6, atol=2e-5)
    got = jax.vjp(gelu_kernel.bias_gelu, z, b)[1](dy)
    want = jax.vjp(plain, z, b)[1](dy)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-4)


def test_bf16_activations_keep_an_fp32_bias_gradient():
    """In the model z and dy are bf16 and the bias an fp32 parameter: d(z) comes back bf16 (one
    rounding of the fp32 value), d(b) fp32, summed before any rounding."""
    kz, kb, kd = jax.random.split(jax.random.key(1), 3)
    z = jax.random.normal(kz, (256, 128)) * 2
    b = jax.random.normal(kb, (128,))
    dy = jax.random.normal(kd, (256, 128))
    dz, db = jax.vjp(gelu_kernel.bias_gelu, z.astype(jnp.bfloat16), b)[1](dy.astype(jnp.bfloat16))
    assert dz.dtype == jnp.bfloat16 and db.dtype == jnp.float32
    want_dz, want_db = jax.vjp(plain, z.astype(jnp.bfloat16).astype(jnp.float32), b)[1](
        dy.astype(jnp.bfloat16).astype(jnp.float32))
    np.testing.assert_allclose(dz.astype(jnp.float32), want_dz, rtol=2 ** -8, atol=2e-5)
    np.testing.assert_allclose(db, want_db, rtol=1e-5, atol=1e-4)
