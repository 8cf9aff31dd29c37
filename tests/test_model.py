import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import CONFIGS

from gpt2_jax.config import load_config, model_config
from gpt2_jax.model import (GPT, GPTConfig, abstract_params, count_params, cross_entropy,
                            init_params, lm_head_logits)
from gpt2_jax.tokenizer import VOCAB_SIZE


@pytest.mark.parametrize("config_file, expected", [
    ("gpt2_124m.py", 124_475_904),
    ("gpt2_1558m.py", 1_557_686_400),
])
def test_parameter_count_matches_llmc(config_file, expected):
    model = GPT(model_config(load_config(str(CONFIGS / config_file)), backend="cpu"))
    assert count_params(abstract_params(model)) == expected


@functools.cache  # initialization compiles too: once per variant for the whole module
def tiny_model(dtype="float32", **kw):
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, dtype=dtype, **kw)
    model = GPT(cfg)
    return model, init_params(model, jax.random.key(0))


@functools.cache
def _jitted_apply(model):
    return jax.jit(model.apply, static_argnames="method")


def apply(model, *args, **kwargs):
    """model.apply under jit (eager op-by-op execution is slow on CPU), one jitted function per
    model, so a test calling it again with the same shapes does not compile again."""
    return _jitted_apply(model)(*args, **kwargs)


def test_causal_changing_token_t_changes_no_earlier_logit():
    model, params = tiny_model()
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, VOCAB_SIZE)
    t = 9
    changed = tokens.at[:, t].set((tokens[:, t] + 1) % VOCAB_SIZE)
    before = apply(model, {"params": params}, tokens)
    after = apply(model, {"params": params}, changed)
    np.testing.assert_array_equal(before[:, :t], after[:, :t])
    assert not np.allclose(before[:, t], after[:, t])


def test_loss_at_init_is_near_uniform_over_real_vocab():
    model, params = tiny_model()
    tokens = jax.random.randint(jax.random.key(2), (4, 17), 0, VOCAB_SIZE)
    loss = apply(model, {"params": params}, tokens[:, :-1], tokens[:, 1:], method=GPT.loss)
    assert abs(float(loss) - math.log(VOCAB_SIZE)) < 0.1


def test_padded_vocab_logits_are_minus_inf():
    model, params = tiny_model()
    logits = apply(model, {"params": params}, jnp.zeros((1, 4), jnp.int32))
    assert logits.shape[-1] == 50304 and logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isneginf(logits[..., VOCAB_SIZE:])))
    assert bool(jnp.all(jnp.isfinite(logits[..., :VOCAB_SIZE])))


def test_chunked_loss_equals_whole_loss_and_gradient():
    rng = np.random.default_rng(0)
    h = jnp.asarray(rng.normal(size=(64, 16)), jnp.float32)
    wte = jnp.asarray(rng.normal(size=(50304, 16)) * 0.1, jnp.float32)
    targets = jnp.asarray(rng.integers(0, VOCAB_SIZE, 64))
    whole, g_whole = jax.value_and_grad(cross_entropy, argnums=(0, 1))(h, wte, targets, VOCAB_SIZE, 0)
    chunked, g_chunked = jax.value_and_grad(cross_entropy, argnums=(0, 1))(h, wte, targets, VOCAB_SIZE, 16)
    np.testing.assert_allclose(chunked, whole, rtol=1e-6)
    for a, b in zip(g_chunked, g_whole):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)
    # and both equal a plain float64 reference
    logits = np.asarray(lm_head_logits(h, wte))[:, :VOCAB_SIZE].astype(np.float64)
    ref = np.mean(np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1))
                  + logits.max(1) - logits[np.arange(64), np.asarray(targets)])
    np.testing.assert_allclose(whole, ref, rtol=1e-5)


def test_fused_cross_entropy_gradient_equals_autodiff_of_the_plain_formula():
    """The custom VJP against autodiff of logsumexp - target logit over the real vocabulary."""
    rng = np.random.default_rng(1)
    h = jnp.asarray(rng.normal(size=(32, 16)), jnp.float32)
    wte = jnp.asarray(rng.normal(size=(50304, 16)) * 0.1, jnp.float32)
    targets = jnp.asarray(rng.integers(0, VOCAB_SIZE, 32))

    def plain(h, wte):
        logits = (h @ wte.T)[:, :VOCAB_SIZE]
        return jnp.mean(jax.nn.logsumexp(logits, axis=-1)
                        - jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0])

    fused_grads = jax.grad(cross_entropy, argnums=(0, 1))(h, wte, targets, VOCAB_SIZE)
    plain_grads = jax.grad(plain, argnums=(0, 1))(h, wte)
    for a, b in zip(fused_grads, plain_grads):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9)
    assert not np.any(np.asarray(fused_grads[1])[VOCAB_SIZE:])  # padded rows get no gradient


def test_bf16_compute_matches_float32_reference():
    """bf16 activations with fp32 params: loss within 1% of the fp32 model's."""
    model32, params = tiny_model("float32")
    model16, _ = tiny_model("bfloat16")
    tokens = jax.random.randint(jax.random.key(3), (4, 17), 0, VOCAB_SIZE)
    args = ({"params": params}, tokens[:, :-1], tokens[:, 1:])
    loss32 = apply(model32, *args, method=GPT.loss)
    loss16 = apply(model16, *args, method=GPT.loss)
    assert loss16.dtype == jnp.float32
    np.testing.assert_allclose(loss16, loss32, rtol=1e-2)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))


@pytest.mark.parametrize("variant", [
    {"remat": "dots_with_no_batch_dims_saveable"},
    {"scan_unroll": 2},  # the layer loop unrolled: the same stacked params, the same math
    {"scan_unroll": 2, "remat": "dots_with_no_batch_dims_saveable"},
])
def test_remat_and_unrolling_do_not_change_loss_or_gradients(variant):
    model, params = tiny_model()
    remat_model, _ = tiny_model(**variant)
    tokens = jax.random.randint(jax.random.key(4), (2, 17), 0, VOCAB_SIZE)

    def loss(m, p):
        return apply(m, {"params": p}, tokens[:, :-1], tokens[:, 1:], method=GPT.loss)

    l1, g1 = jax.value_and_grad(lambda p: loss(model, p))(params)
    l2, g2 = jax.value_and_grad(lambda p: loss(remat_model, p))(params)
    np.testing.assert_allclose(l1, l2, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), g1, g2)


@pytest.mark.slow
@pytest.mark.parametrize("scan_unroll", [1, 2])
def test_a_remat_policy_recomputes_even_when_the_layer_loop_is_unrolled(scan_unroll):
    """dots_with_no_batch_dims_saveable saves the weight matmuls and recomputes GELU (its tanh)
    in the backward pass. Unrolled, XLA merged that recomputation with the forward pass (common
    subexpressions) and stored every activation, until remat kept the two apart: the compiled
    step must hold each block's tanh twice."""
    tokens = jnp.zeros((2, 17), jnp.int32)

    def tanhs_in_compiled_step(remat):
        model, params = tiny_model(remat=remat, scan_unroll=scan_unroll)
        grad = jax.jit(jax.grad(lambda p: apply(model, {"params": p}, tokens[:, :-1],
                                                  tokens[:, 1:], method=GPT.loss)))
        return grad.lower(params).compile().as_text().count(" tanh(")

    layers_in_loop_body = scan_unroll  # the tiny model has 2 layers: 1 or 2 iterations
    assert tanhs_in_compiled_step("none") == layers_in_loop_body
    assert tanhs_in_compiled_step("dots_with_no_batch_dims_saveable") == 2 * layers_in_loop_body


def test_params_do_not_depend_on_unrolling():
    """init_params compiles a rolled loop whatever scan_unroll says: the values must be those
    the unrolled model's own init gives."""
    model, params = tiny_model(scan_unroll=2)
    own = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32)))["params"]
    jax.tree.map(np.testing.assert_array_equal, params, own)


def test_sequence_longer_than_block_size_is_rejected():
    model, params = tiny_model()
    with pytest.raises(ValueError, match="block_size"):
        apply(model, {"params": params}, jnp.zeros((1, 33), jnp.int32))


def test_embedding_gradients_accumulate_in_fp32():
    """The gradient of an embedding lookup is a scatter-add of one row per token. Real text
    repeats a few tokens thousands of times per batch, and a bf16 scatter-add of those rows ran
    as colliding compare-and-swap loops on a GPU, a large share of the step. With bf16 compute, every scatter the step's gradient needs must be fp32."""
    model, params = tiny_model(dtype="bfloat16")
    tokens = jnp.zeros((2, 9), jnp.int32)

    def loss(params):
        return model.apply({"params": params}, tokens[:, :-1], tokens[:, 1:], method=GPT.loss)

    hlo = jax.jit(jax.grad(loss)).lower(params).as_text(dialect="hlo")
    scatter_types = [line.split("=")[1].split("[")[0].strip() for line in hlo.splitlines()
                     if " scatter(" in line]
    assert scatter_types and set(scatter_types) == {"f32"}, scatter_types
