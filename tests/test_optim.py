import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers import CONFIGS

from gpt2_jax.config import load_config, model_config
from gpt2_jax.model import GPT, init_params
from gpt2_jax.training.optim import decay_mask, lr_schedule, make_optimizer


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


@pytest.mark.slow
def test_muon_orthogonalizes_each_matrix_and_adam_takes_the_rest(tiny_config):
    """The first Muon update of a block matrix is its gradient orthogonalized: every singular
    value near one (Newton-Schulz's quintic lands in about 0.5..1.5, not exactly on 1) however
    spread the gradient's are, once the lr and the width scaling are divided out."""
    c = tiny_config("--config.optim.name=muon", "--config.optim.warmup_steps=0",
                    "--config.optim.grad_clip=0.0")
    params = init_params(GPT(model_config(c)), jax.random.key(0))
    rng = np.random.default_rng(0)
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    def spread_matrix(rows, cols):  # singular values from 1e-2 to 1 (five Newton-Schulz steps
        u, _ = np.linalg.qr(rng.normal(size=(rows, rows)))  # lift one by at most ~3.4^5 = 485x)
        v, _ = np.linalg.qr(rng.normal(size=(cols, rows)))
        return u @ np.diag(np.geomspace(1e-2, 1.0, rows)) @ v.T

    grads["h"]["mlp"]["c_fc"]["kernel"] = jnp.asarray(
        np.stack([spread_matrix(32, 128) for _ in range(c.model.n_layer)]), jnp.float32)
    tx = make_optimizer(c.optim, c.train.max_steps)
    updates, _ = tx.update(grads, tx.init(params), params)

    c_fc = -updates["h"]["mlp"]["c_fc"]["kernel"] / (c.optim.muon_lr * 2.0)  # width: sqrt(128/32)
    for layer in range(c.model.n_layer):
        gradient_sv = np.linalg.svd(np.asarray(grads["h"]["mlp"]["c_fc"]["kernel"][layer]),
                                    compute_uv=False)
        update_sv = np.linalg.svd(np.asarray(c_fc[layer]), compute_uv=False)
        assert gradient_sv[0] / gradient_sv[-1] > 50
        assert 0.5 < update_sv.min() and update_sv.max() < 1.5, update_sv
    # Adam groups, each at its own lr: the first Adam step is lr * g / (|g| + eps)
    for (group, name), lr in ((("wte", "embedding"), c.optim.embed_lr),
                              (("ln_f", "scale"), c.optim.scalar_lr)):
        g = np.asarray(grads[group][name])
        np.testing.assert_allclose(-updates[group][name], lr * g / (np.abs(g) + c.optim.eps),
                                   rtol=1e-5, atol=1e-9)
