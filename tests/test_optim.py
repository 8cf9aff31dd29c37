import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers import CONFIGS

from gpt2_jax.config import load_config
from gpt2_jax.optim import decay_mask, lr_schedule, make_optimizer


@pytest.fixture
def optim():
    c = load_config(str(CONFIGS / "gpt2_1558m.py"))  # lr 6e-4, warmup 700, final_lr_frac 0.1
    return c.optim


def test_schedule_warmup_then_cosine_to_final_fraction(optim):
    schedule = lr_schedule(optim, max_steps=32000)
    np.testing.assert_allclose(schedule(0), 6e-4 / 700, rtol=1e-6)
    np.testing.assert_allclose(schedule(699), 6e-4, rtol=1e-6)  # end of warmup: the peak
    np.testing.assert_allclose(schedule(700), 6e-4, rtol=1e-6)
    mid = 700 + (32000 - 700) // 2
    np.testing.assert_allclose(schedule(mid), 6e-5 + 0.5 * (6e-4 - 6e-5), rtol=1e-4)
    np.testing.assert_allclose(schedule(32000), 6e-5, rtol=1e-6)  # the end: final_lr_frac * lr
    steps = np.arange(700, 32001, 500)
    assert np.all(np.diff(np.asarray(schedule(steps))) < 0)


def test_weight_decay_only_on_kernels_and_embeddings():
    params = {"wte": {"embedding": jnp.ones((4, 2))},
              "h": {"mlp": {"c_fc": {"kernel": jnp.ones((2, 2, 4)), "bias": jnp.ones((2, 4))}},
                    "ln_1": {"scale": jnp.ones((2, 2)), "bias": jnp.ones((2, 2))}}}
    mask = decay_mask(params)
    assert mask["wte"]["embedding"] and mask["h"]["mlp"]["c_fc"]["kernel"]
    assert not mask["h"]["mlp"]["c_fc"]["bias"]
    assert not mask["h"]["ln_1"]["scale"] and not mask["h"]["ln_1"]["bias"]

    # With zero gradients AdamW's only effect is decay: kernels shrink, biases/LayerNorm stay.
    optim = load_config(None).optim
    tx = make_optimizer(optim, max_steps=100)
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero_grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    assert float(new["h"]["mlp"]["c_fc"]["kernel"][0, 0, 0]) < 1.0
    assert float(new["wte"]["embedding"][0, 0]) < 1.0
    assert float(new["h"]["mlp"]["c_fc"]["bias"][0, 0]) == 1.0
    assert float(new["h"]["ln_1"]["scale"][0, 0]) == 1.0
