"""What the two Pallas kernel choices (model.loss_kernel, model.gelu_kernel) share: the model
trains the same with either value, and a mesh of several devices refuses an explicit pallas."""

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from gpt2_jax.errors import ConfigError
from gpt2_jax.model import GPT, GPTConfig, init_params, next_token_loss
from gpt2_jax.step import build_training
from gpt2_jax.tokenizer import VOCAB_SIZE

KEYS = ["loss_kernel", "gelu_kernel"]


@pytest.mark.parametrize("key", KEYS)
def test_the_model_trains_the_same_with_either_kernel(key):
    tokens = jax.random.randint(jax.random.key(4), (2, 17), 0, VOCAB_SIZE)
    results = []
    for kernel in ("xla", "pallas"):
        model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=16, **{key: kernel}))
        params = init_params(model, jax.random.key(0))
        results.append(jax.jit(jax.value_and_grad(
            lambda p: next_token_loss(model, p, tokens)))(params))
    (xla_loss, xla_grads), (pallas_loss, pallas_grads) = results
    np.testing.assert_allclose(pallas_loss, xla_loss, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7),
                 pallas_grads, xla_grads)


@pytest.mark.parametrize("key", KEYS)
def test_pallas_on_a_mesh_of_several_devices_is_refused(tiny_config, key):
    mesh = Mesh(np.array(jax.devices()[:2]), ("data",))
    with pytest.raises(ConfigError, match=f"model.{key}=pallas runs on one device .* has 2"):
        build_training(tiny_config(f"--config.model.{key}=pallas"), mesh)
