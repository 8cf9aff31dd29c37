import jax
import numpy as np
import optax
import pytest

from helpers import run_steps
from gpt2_jax.parallel import sharding
from gpt2_jax.training.optim import make_optimizer
from gpt2_jax.tokenizer import VOCAB_SIZE

pytestmark = pytest.mark.slow  # each test trains a model for several steps


def one_device_mesh(c):
    return sharding.make_mesh(c.mesh, jax.devices()[:1])


def test_tiny_model_overfits_one_batch(tiny_config):
    c = tiny_config("--config.optim.lr=1e-2", "--config.optim.warmup_steps=5",
                    "--config.optim.final_lr_frac=1.0", "--config.optim.weight_decay=0.0",
                    "--config.train.max_steps=80")
    batch = np.random.default_rng(0).integers(0, VOCAB_SIZE, (1, 4, 17)).astype(np.int32)
    _, _, history = run_steps(c, one_device_mesh(c), make_optimizer(c.optim, 80), [batch] * 80)
    assert history[0]["loss"] > 10.0
    assert history[-1]["loss"] < 0.5, [float(h["loss"]) for h in history[::10]]


def test_accumulation_equals_one_larger_batch(tiny_config):
    """k micro-batches accumulated inside the step == one k-times-larger batch (same update)."""
    c = tiny_config()
    tokens = np.random.default_rng(1).integers(0, VOCAB_SIZE, (4, 2, 17)).astype(np.int32)
    tx = optax.sgd(0.1)  # update = -lr * gradient, so params compare the gradients exactly
    mesh = one_device_mesh(c)
    _, accumulated, h_acc = run_steps(c, mesh, tx, [tokens])
    _, whole, h_whole = run_steps(c, mesh, tx, [tokens.reshape(1, 8, 17)])
    np.testing.assert_allclose(h_acc[0]["loss"], h_whole[0]["loss"], rtol=1e-6)
    np.testing.assert_allclose(h_acc[0]["grad_norm"], h_whole[0]["grad_norm"], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 accumulated.params, whole.params)
    assert int(accumulated.step) == 1


def test_data_parallel_step_matches_single_device(tiny_config):
    """The same global batch on 8 data-parallel devices gives the 1-device losses and params."""
    c = tiny_config("--config.train.max_steps=3")
    batches = [np.random.default_rng(s).integers(0, VOCAB_SIZE, (1, 8, 17)).astype(np.int32)
               for s in range(3)]
    tx = make_optimizer(c.optim, 3)
    _, single, h1 = run_steps(c, one_device_mesh(c), tx, batches)
    c8 = tiny_config("--config.mesh.data=8", "--config.train.micro_batch_size=1",
                     "--config.train.total_batch_size=128")
    _, parallel, h8 = run_steps(c8, sharding.make_mesh(c8.mesh), tx, batches)
    for a, b in zip(h1, h8):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 single.params, parallel.params)
