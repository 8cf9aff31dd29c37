"""What the Pallas kernel choices (model.loss_kernel, gelu_kernel, norm_kernel) share: the model
trains the same with either value. On a mesh of several devices they run per device
(sharding.per_device) and train the same as XLA's fusions; the loss kernel, which needs whole rows
of logits, is refused where tensor parallelism splits the vocabulary."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import run_steps
from jax.sharding import Mesh

from gpt2_jax.ops import gelu_kernel, loss_kernel, norm_kernel
from gpt2_jax.parallel import sharding
from gpt2_jax.config import model_config
from gpt2_jax.ops.kernels import KERNEL_KEYS
from gpt2_jax.errors import ConfigError
from gpt2_jax.model import GPT, GPTConfig, init_params, next_token_loss
from gpt2_jax.training.optim import make_optimizer
from gpt2_jax.training.step import build_training
from gpt2_jax.tokenizer import VOCAB_SIZE

@pytest.mark.parametrize("key", KERNEL_KEYS)
@pytest.mark.slow
def test_the_model_trains_the_same_with_either_kernel(key):
    tokens = jax.random.randint(jax.random.key(4), (2, 17), 0, VOCAB_SIZE)
    results = []
    for kernel in ("xla", "pallas"):
        model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=16, **{key: kernel}))
        params = init_params(model, jax.random.key(0))
        step = jax.value_and_grad(lambda p: next_token_loss(model, p, tokens))
        # The program itself, not only its values: a model that ignored the key would pass below.
        assert ("pallas_call" in str(jax.make_jaxpr(step)(params))) == (kernel == "pallas")
        results.append(jax.jit(step)(params))
    (xla_loss, xla_grads), (pallas_loss, pallas_grads) = results
    np.testing.assert_allclose(pallas_loss, xla_loss, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7),
                 pallas_grads, xla_grads)


@pytest.mark.parametrize("key, without_its_operation, refusal", [
    ("gelu_kernel", ("mlp_act", "relu2"), "computes GELU"),
    ("norm_kernel", ("norm", "rmsnorm"), "computes LayerNorm"),
])
def test_auto_picks_the_per_device_kernels_on_gpus_where_the_model_uses_them(
        tiny_config, key, without_its_operation, refusal):
    option, value = without_its_operation
    without = f"--config.model.{option}={value}"
    assert getattr(model_config(tiny_config(), backend="cpu"), key) == "xla"
    for devices in (1, 2):
        assert getattr(model_config(tiny_config(), backend="gpu", devices=devices), key) == "pallas"
    assert getattr(model_config(tiny_config(f"--config.model.{key}=pallas"), backend="gpu",
                                devices=8), key) == "pallas"
    assert getattr(model_config(tiny_config(without), backend="gpu", devices=1), key) == "xla"
    with pytest.raises(ConfigError, match=f"model.{key}=pallas {refusal}"):
        tiny_config(f"--config.model.{key}=pallas", without)
    with pytest.raises(ConfigError, match=f"model.{key} must be auto, pallas or xla"):
        tiny_config(f"--config.model.{key}=triton")


@pytest.mark.parametrize("key, without_its_operation", [("gelu_kernel", {"mlp_act": "relu2"}),
                                                        ("norm_kernel", {"norm": "rmsnorm"})])
@pytest.mark.slow
def test_a_model_without_the_kernels_operation_ignores_it(key, without_its_operation):
    """A kernel key names the kernel for GELU or LayerNorm; a model without that operation,
    built directly with the key (config.validate refuses the pair), keeps its own."""
    tokens = jax.random.randint(jax.random.key(2), (2, 9), 0, VOCAB_SIZE)
    losses = []
    for kernel in ("xla", "pallas"):
        model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8,
                              **without_its_operation, **{key: kernel}))
        losses.append(next_token_loss(model, init_params(model, jax.random.key(0)), tokens))
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-6)


def test_the_loss_kernel_is_refused_where_tensor_parallelism_splits_the_vocabulary(tiny_config):
    mesh = Mesh(np.array(jax.devices()[:2]).reshape(1, 1, 2), sharding.MESH_AXES)
    with pytest.raises(ConfigError, match="model.loss_kernel=pallas runs on each device's whole "
                                          "rows .* this mesh of 2 devices splits"):
        build_training(tiny_config("--config.model.loss_kernel=pallas", "--config.mesh.data=1",
                                   "--config.mesh.tensor=2"), mesh)


def train_three_steps(tiny_config, mesh_overrides: tuple, kernel_overrides: tuple) -> dict:
    """Losses and params after 3 steps on the mesh, once with XLA's fusions, once with the
    kernels named (each =pallas)."""
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, VOCAB_SIZE, (1, 8, 17)) for _ in range(3)]
    runs = {}
    for kernel in ("xla", "pallas"):
        c = tiny_config(*mesh_overrides, "--config.train.total_batch_size=128",
                        *(f"--config.model.{key}={kernel}" for key in kernel_overrides))
        mesh = sharding.make_mesh(c.mesh)
        _, state, history = run_steps(c, mesh, make_optimizer(c.optim, 10), batches)
        runs[kernel] = ([float(m["loss"]) for m in history], state.params)
    np.testing.assert_allclose(runs["pallas"][0], runs["xla"][0], rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 runs["pallas"][1], runs["xla"][1])
    return mesh


@pytest.mark.slow
def test_the_gelu_and_norm_kernels_train_the_same_per_device_on_a_mesh(tiny_config):
    """data x fsdp x tensor = 2 x 2 x 2: each device runs the kernels on its rows (and the GELU
    kernels on its half of the MLP width); the gradient partials are summed across devices."""
    mesh = train_three_steps(tiny_config, ("--config.mesh.data=2", "--config.mesh.fsdp=2",
                                           "--config.mesh.tensor=2"), ("gelu_kernel", "norm_kernel"))
    z, b = jnp.ones((128, 128)), jnp.zeros((128,))
    with jax.set_mesh(mesh):
        assert "shard_map" in str(jax.make_jaxpr(gelu_kernel.bias_gelu)(z, b))
        assert "shard_map" in str(jax.make_jaxpr(norm_kernel.add_layer_norm)(z, z, b, b, b))


@pytest.mark.slow
def test_every_kernel_trains_the_same_per_device_without_tensor_parallelism(tiny_config):
    """data x fsdp = 4 x 2: the loss kernel too runs on each device's rows of logits."""
    mesh = train_three_steps(tiny_config, ("--config.mesh.data=4", "--config.mesh.fsdp=2",
                                           "--config.train.micro_batch_size=1"), KERNEL_KEYS)
    logits, targets = jnp.ones((16, 128)), jnp.zeros((16,), jnp.int32)
    with jax.set_mesh(mesh):
        assert "shard_map" in str(jax.make_jaxpr(
            lambda l, t: loss_kernel.softmax_gradient(l, t, 100))(logits, targets))
