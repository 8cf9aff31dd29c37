"""The MLP's bias + GELU kernels (fused_gelu.py, run by Pallas' interpreter on CPU) against
autodiff of the plain formula, and the config rules that say where they run
(test_pallas_kernels.py has the model with either choice)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt2_jax import fused_gelu
from gpt2_jax.config import model_config
from gpt2_jax.errors import ConfigError


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
    np.testing.assert_allclose(fused_gelu.bias_gelu(z, b), plain(z, b), rtol=1e-6, atol=2e-5)
    got = jax.vjp(fused_gelu.bias_gelu, z, b)[1](dy)
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
    dz, db = jax.vjp(fused_gelu.bias_gelu, z.astype(jnp.bfloat16), b)[1](dy.astype(jnp.bfloat16))
    assert dz.dtype == jnp.bfloat16 and db.dtype == jnp.float32
    want_dz, want_db = jax.vjp(plain, z.astype(jnp.bfloat16).astype(jnp.float32), b)[1](
        dy.astype(jnp.bfloat16).astype(jnp.float32))
    np.testing.assert_allclose(dz.astype(jnp.float32), want_dz, rtol=2 ** -8, atol=2e-5)
    np.testing.assert_allclose(db, want_db, rtol=1e-5, atol=1e-4)


def test_auto_picks_pallas_on_gpus_with_gelu_only(tiny_config):
    assert model_config(tiny_config(), backend="cpu").gelu_kernel == "xla"
    assert model_config(tiny_config(), backend="gpu", devices=1).gelu_kernel == "pallas"
    assert model_config(tiny_config(), backend="gpu", devices=2).gelu_kernel == "pallas"
    assert model_config(tiny_config("--config.model.gelu_kernel=pallas"), backend="gpu",
                        devices=8).gelu_kernel == "pallas"  # runs per device on a mesh
    assert model_config(tiny_config("--config.model.mlp_act=relu2"), backend="gpu",
                        devices=1).gelu_kernel == "xla"
    with pytest.raises(ConfigError, match="model.gelu_kernel=pallas computes GELU"):
        tiny_config("--config.model.gelu_kernel=pallas", "--config.model.mlp_act=relu2")
    with pytest.raises(ConfigError, match="model.gelu_kernel must be auto, pallas or xla"):
        tiny_config("--config.model.gelu_kernel=triton")


def test_a_squared_relu_mlp_ignores_the_gelu_kernel():
    """gelu_kernel names the kernel for GELU; with mlp_act=relu2 there is no GELU to run it on
    (config.validate refuses the pair; a GPTConfig built directly must not apply both)."""
    from gpt2_jax.model import GPT, GPTConfig, init_params, next_token_loss

    tokens = jax.random.randint(jax.random.key(2), (2, 9), 0, 50257)
    losses = []
    for kernel in ("xla", "pallas"):
        model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, mlp_act="relu2",
                              gelu_kernel=kernel))
        losses.append(next_token_loss(model, init_params(model, jax.random.key(0)), tokens))
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-6)
