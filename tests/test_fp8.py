"""FP8 matmuls (model.fp8): e4m3 forward, e5m2 gradients, checked against bf16 on CPU, where XLA
converts the float8 operands to a wide type."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt2_jax.ops import fp8
from gpt2_jax.model import GPT, GPTConfig, init_params, next_token_loss


def cosine(a, b):
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_quantize_scales_by_a_power_of_two_that_fits_the_largest_magnitude():
    x = jnp.array([[-3.0, 0.5], [1.5, 0.001]])
    q, scale = fp8.quantize(x, fp8.E4M3)
    assert q.dtype == jnp.float8_e4m3fn
    assert float(scale) == 2.0 ** -7  # 3 / 448 rounded up to a power of two
    largest = float(jnp.max(jnp.abs(q.astype(jnp.float32))))
    assert 448.0 / 2 < largest <= 448.0
    np.testing.assert_allclose(q.astype(jnp.float32) * scale, x, rtol=0.07)  # 3 mantissa bits
    q0, scale0 = fp8.quantize(jnp.zeros((2, 2)), fp8.E5M2)
    assert float(scale0) == 1.0 and not np.any(np.asarray(q0.astype(jnp.float32)))


def test_matmul_and_its_gradients_follow_the_exact_product():
    x = jax.random.normal(jax.random.key(0), (64, 48))
    w = jax.random.normal(jax.random.key(1), (48, 32)) * 0.1
    g = jax.random.normal(jax.random.key(2), (64, 32))
    y, vjp = jax.vjp(lambda a, b: fp8.matmul(a, b, jnp.dtype(jnp.float32)), x, w)
    dx, dw = vjp(g)
    assert dx.dtype == x.dtype and dw.dtype == w.dtype
    y_ref, vjp_ref = jax.vjp(jnp.matmul, x, w)
    dx_ref, dw_ref = vjp_ref(g)
    # e4m3 has 3 mantissa bits (relative step 1/8), e5m2 2 (1/4); sums over 48 or 64 products
    # average the rounding down to a few %.
    assert np.linalg.norm(y - y_ref) / np.linalg.norm(y_ref) < 0.05
    assert cosine(dx, dx_ref) > 0.99 and cosine(dw, dw_ref) > 0.99


def test_only_the_gradient_products_ask_for_precise_accumulation():
    """XLA's FP8 GEMMs skip the fp32 promotion of partial sums at DEFAULT precision and keep it at
    HIGHEST: the forward may take the fast path, the two gradient products (sums over every token
    of a micro-batch for the weights) may not."""
    x = jax.random.normal(jax.random.key(0), (8, 4), jnp.bfloat16)
    w = jax.random.normal(jax.random.key(1), (4, 6))
    loss = lambda a, b: jnp.sum(fp8.matmul(a, b, jnp.dtype(jnp.bfloat16)).astype(jnp.float32))
    hlo = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(x, w).as_text()
    precisions = re.findall(r"dot_general .*precision = \[(\w+), (\w+)\]", hlo)
    assert sorted(precisions) == [("DEFAULT", "DEFAULT"), ("HIGHEST", "HIGHEST"),
                                  ("HIGHEST", "HIGHEST")]


def tiny(fp8_on: bool) -> GPT:
    return GPT(GPTConfig(n_layer=2, n_head=4, n_embd=128, vocab_size=512, real_vocab_size=512,
                         block_size=64, dtype="bfloat16", fp8=fp8_on))


@pytest.mark.slow
def test_fp8_model_matches_bf16_in_loss_and_gradients():
    """Tolerances: loss within 1% and each gradient leaf's direction within cosine 0.98 of bf16
    (measured here: 7e-7 and >= 0.993)."""
    params = init_params(tiny(False), jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (8, 65), 0, 512)
    results = [jax.jit(jax.value_and_grad(lambda p, m=tiny(f): next_token_loss(m, p, tokens)))(params)
               for f in (False, True)]
    (loss16, grads16), (loss8, grads8) = results
    assert abs(float(loss8) - float(loss16)) / float(loss16) < 0.01
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(grads16), jax.tree.leaves(grads8)):
        assert b.dtype == jnp.float32
        assert cosine(a, b) > 0.98, jax.tree_util.keystr(path)


@pytest.mark.parametrize("fp8_on, expected", [(False, set()), (True, {"f8E4M3FN", "f8E5M2"})])
def test_only_the_fp8_model_has_float8_operands(fp8_on, expected):
    model = tiny(fp8_on)
    params = jax.eval_shape(lambda k: init_params(model, k), jax.random.key(0))
    tokens = jax.ShapeDtypeStruct((2, 17), jnp.int32)
    hlo = jax.jit(jax.grad(lambda p, t: next_token_loss(model, p, t))).lower(params, tokens).as_text()
    assert set(re.findall(r"f8E\w+", hlo)) == expected


