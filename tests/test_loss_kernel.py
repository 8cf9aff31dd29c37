"""The Pallas fused classifier (ops/loss_kernel.py, run by Pallas' interpreter on CPU) against
the plain formula, and the config rules that say where it runs (test_pallas_kernels.py has the
model with either choice)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt2_jax.ops import loss_kernel
from gpt2_jax.config import model_config
from gpt2_jax.errors import ConfigError
from gpt2_jax.model import cross_entropy
from gpt2_jax.tokenizer import VOCAB_SIZE

N, D, V = 24, 16, 50304  # GPT-2's padded vocabulary: 13 column blocks, the last one partial


def inputs(seed=0):
    rng = np.random.default_rng(seed)
    h = jnp.asarray(rng.normal(size=(N, D)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(V, D)) * 0.3, jnp.float32)
    targets = jnp.asarray(rng.integers(0, VOCAB_SIZE, N))
    targets = targets.at[0].set(VOCAB_SIZE - 1).at[1].set(0)  # first and last real columns
    return h, w, targets


def reference(h, w, targets):
    """Summed loss over the real vocabulary, by autodiff of the plain formula."""
    logits = (h @ w.T)[:, :VOCAB_SIZE]
    return jnp.sum(jax.nn.logsumexp(logits, axis=-1)
                   - jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0])


def test_float32_loss_and_gradients_equal_the_plain_formula():
    h, w, targets = inputs()
    loss, grads = jax.jit(jax.value_and_grad(
        lambda h, w: loss_kernel.summed_loss(h, w, targets, VOCAB_SIZE, jnp.float32),
        argnums=(0, 1)))(h, w)
    ref_loss, ref_grads = jax.value_and_grad(reference, argnums=(0, 1))(h, w, targets)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    for got, want in zip(grads, ref_grads):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert grads[1].dtype == jnp.float32
    assert not np.any(np.asarray(grads[1])[VOCAB_SIZE:])  # padded rows get no gradient


def test_bfloat16_logits_stay_within_bf16_rounding_of_the_float32_reference():
    """bf16 operands and logits (as on GPU), softmax in fp32: loss within 1e-3 relative,
    gradients within 2% of their largest entry."""
    h, w, targets = inputs(1)
    loss, (g_h, g_w) = jax.jit(jax.value_and_grad(
        lambda h, w: loss_kernel.summed_loss(h.astype(jnp.bfloat16), w, targets,
                                                  VOCAB_SIZE, jnp.bfloat16),
        argnums=(0, 1)))(h, w)
    ref_loss, (r_h, r_w) = jax.value_and_grad(reference, argnums=(0, 1))(h, w, targets)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-3)
    assert g_w.dtype == jnp.float32  # from the fp32 GEMM output, not via a bf16 copy
    for got, want in ((g_h, r_h), (g_w, r_w)):
        got = np.asarray(got, np.float32)
        assert np.max(np.abs(got - want)) <= 0.02 * np.max(np.abs(want))


def test_the_kernel_writes_softmax_minus_onehot_with_zero_padding():
    h, w, targets = inputs(2)
    logits = h @ w.T
    d_logits, lse, target_logit = loss_kernel.softmax_gradient(logits, targets, VOCAB_SIZE)
    real = logits[:, :VOCAB_SIZE]
    np.testing.assert_allclose(lse, jax.nn.logsumexp(real, axis=-1), rtol=1e-6)
    np.testing.assert_allclose(target_logit, real[jnp.arange(N), targets], rtol=1e-6)
    want = jax.nn.softmax(real, axis=-1) - jax.nn.one_hot(targets, VOCAB_SIZE)
    np.testing.assert_allclose(d_logits[:, :VOCAB_SIZE], want, atol=1e-7)
    assert not np.any(np.asarray(d_logits)[:, VOCAB_SIZE:])


def test_chunked_pallas_loss_equals_the_xla_loss():
    h, w, targets = inputs(3)

    def loss(kernel, chunk):
        return jax.jit(jax.value_and_grad(
            lambda h, w: cross_entropy(h, w, targets, VOCAB_SIZE, chunk, kernel=kernel),
            argnums=(0, 1)))(h, w)

    xla_loss, xla_grads = loss("xla", 0)
    for chunk in (0, 8):
        pallas_loss, pallas_grads = loss("pallas", chunk)
        np.testing.assert_allclose(pallas_loss, xla_loss, rtol=1e-6)
        for got, want in zip(pallas_grads, xla_grads):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_auto_picks_pallas_on_gpus_without_tensor_parallelism_and_refuses_a_softcap(tiny_config):
    assert model_config(tiny_config(), backend="cpu").loss_kernel == "xla"
    assert model_config(tiny_config("--config.model.loss_kernel=pallas"),
                        backend="cpu", devices=1).loss_kernel == "pallas"
    assert model_config(tiny_config(), backend="gpu", devices=2).loss_kernel == "pallas"
    split_vocabulary = tiny_config("--config.mesh.tensor=2")
    assert model_config(split_vocabulary, backend="gpu", devices=2).loss_kernel == "xla"
    assert model_config(split_vocabulary, backend="gpu", devices=1).loss_kernel == "pallas"
    # The mesh in use decides, not the config's: a training mesh built apart, or evaluation's.
    assert model_config(tiny_config(), backend="gpu", devices=2, tensor=2).loss_kernel == "xla"
    assert model_config(split_vocabulary, backend="gpu", devices=2,
                        tensor=1).loss_kernel == "pallas"
    with pytest.raises(ConfigError, match="model.loss_kernel=pallas has no logit softcap"):
        tiny_config("--config.model.loss_kernel=pallas", "--config.model.logit_softcap=15.0")
    with pytest.raises(ConfigError, match="model.loss_kernel must be auto, pallas or xla"):
        tiny_config("--config.model.loss_kernel=triton")
