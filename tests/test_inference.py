"""The decode engine: greedy decoding equals the training model's argmax, rows are independent
(alone, batched, joining mid-flight), sampling settings and stop conditions are honored, and a
new prompt length within a bucket does not recompile."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt2_jax import tokenizer
from gpt2_jax.errors import RequestError
from gpt2_jax.inference import Engine, SamplingParams, complete
from gpt2_jax.inference import engine as engine_module
from gpt2_jax.inference import forward
from gpt2_jax.ops import decode_attention
from gpt2_jax.model import GPT, GPTConfig, init_params

GREEDY = SamplingParams(max_tokens=12, temperature=0, stop_at_eot=False)
PROMPTS = [[464, 3290, 318, 257], [50256], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]]


def tiny_model(**options):
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, **options)
    model = GPT(cfg)
    params = init_params(model, jax.random.key(1))
    # Noise on every leaf: biases that are not zero and gains that are not one, so that a bias
    # or a norm applied twice or not at all changes the tokens (LayerNorm at its init is
    # idempotent), and an untied head that is not zero (every logit would tie).
    params = jax.tree.map(
        lambda a: a + 0.05 * jax.random.normal(jax.random.key(a.size), a.shape), params)
    return model, params


@pytest.fixture(scope="module")
def gpt2():
    model, params = tiny_model()
    return model, params, Engine(model.config, params, max_batch=4, chunk_steps=8)


def full_forward_logits(model, params):
    """Logits at every position of one row, from GPT.apply on the sequence right-padded to the
    block (one compiled length; causal, so the padding cannot reach a scored position)."""
    forward = jax.jit(lambda t: model.apply({"params": params}, t)[0])

    def logits(tokens):
        padded = np.zeros((1, model.config.block_size), np.int32)
        padded[0, :len(tokens)] = tokens
        return np.asarray(forward(padded))[len(tokens) - 1]

    return logits


def argmax_continuation(model, params, prompt, n):
    logits = full_forward_logits(model, params)
    tokens = list(prompt)
    for _ in range(n):
        tokens.append(int(np.argmax(logits(tokens))))
    return tokens[len(prompt):]


def test_greedy_decoding_equals_the_models_argmax_step_by_step(gpt2):
    model, params, engine = gpt2
    (request,) = engine.generate([PROMPTS[0]], GREEDY)
    assert request.tokens == argmax_continuation(model, params, PROMPTS[0], 12)
    assert request.finish_reason == "length" and request.text == tokenizer.decode(request.tokens)


def test_the_decode_kernels_decode_as_the_models_argmax(gpt2):
    """The GPU's path (attention kernel, fused residual add and LayerNorm), in Pallas'
    interpreter: the same greedy tokens, with rows at different positions."""
    model, params, _ = gpt2
    engine = Engine(model.config, params, max_batch=2, chunk_steps=8,
                    kernels={"attention": True, "norm": True})
    for request, prompt in zip(engine.generate([PROMPTS[0], PROMPTS[2]], GREEDY),
                               [PROMPTS[0], PROMPTS[2]]):
        assert request.tokens == argmax_continuation(model, params, prompt, 12)


def test_the_attention_kernel_equals_the_formula_at_every_kind_of_position():
    """Rows at the first position, either side of a load's boundary and at the cache's end:
    the output of attention over [0, position] and the new key and value written there only."""
    B, S, H, K = 5, 200, 2, 16
    q_k_v, keys, values = (jax.random.normal(jax.random.key(i), shape) for i, shape in
                           enumerate([(B, 3, H, K), (B, S, H, K), (B, S, H, K)]))
    positions = jnp.array([0, 63, 64, 65, S - 1])
    y, new_keys, new_values = jax.jit(decode_attention.decode_attention)(
        q_k_v, keys, values, positions)
    rows = jnp.arange(B)
    want_keys = keys.at[rows, positions].set(q_k_v[:, 1])
    want_values = values.at[rows, positions].set(q_k_v[:, 2])
    visible = (jnp.arange(S) <= positions[:, None])[:, None, None, :]
    want_y = jax.nn.dot_product_attention(q_k_v[:, None, 0], want_keys, want_values,
                                          mask=visible)[:, 0]
    np.testing.assert_allclose(y, want_y, atol=1e-5)
    np.testing.assert_array_equal(new_keys, want_keys)
    np.testing.assert_array_equal(new_values, want_values)


@pytest.mark.parametrize("kernels", [False, True])
def test_prefill_and_decode_logits_equal_the_models(gpt2, kernels):
    """The logits themselves, not only their argmax: after a prompt (prefill) and after one
    decoded token, against GPT.apply on the same tokens, fp32. With the kernels (Pallas'
    interpreter), the decoding row is at a later position than the other row."""
    model, params, _ = gpt2
    cfg = model.config
    weights = forward.prepare_weights(params, cfg, "float32")
    prompts = [PROMPTS[2], PROMPTS[0] + [0] * 13]  # right-padded to one length
    lengths = jnp.array([len(PROMPTS[2]), len(PROMPTS[0])])
    logits, kv = forward.prefill(weights, jnp.array(prompts), lengths, cfg, "float32")
    expected = full_forward_logits(model, params)
    for row, prompt in enumerate([PROMPTS[2], PROMPTS[0]]):
        np.testing.assert_allclose(logits[row], expected(prompt), rtol=1e-4, atol=1e-4)
    cache = tuple((keys.at[:, :17].set(k), values.at[:, :17].set(v))
                  for (keys, values), (k, v) in zip(forward.empty_cache(cfg, 2, "float32"), kv))
    tokens = jnp.argmax(logits, axis=-1)
    logits, _ = forward.decode(weights, cache, tokens, lengths, cfg.block_size, cfg, "float32",
                               {"attention": kernels, "norm": kernels})
    for row, prompt in enumerate([PROMPTS[2], PROMPTS[0]]):
        np.testing.assert_allclose(logits[row], expected(prompt + [int(tokens[row])]),
                                   rtol=1e-4, atol=1e-4)


def test_a_decode_kernel_the_model_cannot_use_is_refused_by_name():
    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=32, norm="rmsnorm")
    cpu = jax.devices("cpu")[0]
    assert forward.choose_kernels(cfg, cpu) == {"attention": False, "norm": False}
    assert forward.choose_kernels(cfg, cpu, {"attention": True})["attention"]
    with pytest.raises(ValueError, match="'norm' cannot compute"):
        forward.choose_kernels(cfg, cpu, {"norm": True})
    with pytest.raises(ValueError, match="unknown decode kernel 'mlp'"):
        forward.choose_kernels(cfg, cpu, {"mlp": True})


@pytest.mark.slow
def test_the_modern_recipe_decodes_as_its_forward_argmax():
    model, params = tiny_model(pos_emb="rope", qk_norm=True, norm="rmsnorm", mlp_act="relu2",
                               tie_embeddings=False, logit_softcap=15.0)
    engine = Engine(model.config, params, max_batch=2, chunk_steps=8)
    for request, prompt in zip(engine.generate(PROMPTS[:2], GREEDY), PROMPTS):
        assert request.tokens == argmax_continuation(model, params, prompt, 12)


@pytest.mark.slow
def test_an_fp8_trained_model_decodes_from_its_fp32_params():
    model, params = tiny_model(fp8=True)
    (request,) = Engine(model.config, params, max_batch=1, chunk_steps=4).generate(
        [PROMPTS[0]], SamplingParams(max_tokens=5, top_k=10))
    assert len(request.tokens) == 5 and max(request.tokens) < tokenizer.VOCAB_SIZE


@pytest.mark.slow
def test_each_row_of_a_batch_gets_the_tokens_it_gets_alone(gpt2):
    _, _, engine = gpt2
    settings = [GREEDY, SamplingParams(max_tokens=12, temperature=1.5, top_k=20, seed=7,
                                       stop_at_eot=False),
                SamplingParams(max_tokens=9, temperature=0.8, top_p=0.9, seed=3, stop_at_eot=False)]
    alone = [engine.generate([p], s)[0].tokens for p, s in zip(PROMPTS, settings)]
    batched = [r.tokens for r in engine.generate(PROMPTS, settings)]
    assert batched == alone and [len(t) for t in alone] == [12, 12, 9]


def test_a_request_joining_mid_flight_gets_the_tokens_it_gets_alone(gpt2):
    _, _, engine = gpt2
    long = SamplingParams(max_tokens=40, temperature=1.0, seed=1, stop_at_eot=False)
    late = SamplingParams(max_tokens=20, temperature=1.0, top_k=50, seed=2, stop_at_eot=False)
    alone = [engine.generate([PROMPTS[0]], long)[0].tokens,
             engine.generate([PROMPTS[2]], late)[0].tokens]
    first = engine.submit(PROMPTS[0], long)
    engine.step()  # `first` is prefilled and decoded a chunk before `second` arrives
    assert 1 < len(first.tokens) < 40
    second = engine.submit(PROMPTS[2], late)
    while engine.step():
        pass
    assert [first.tokens, second.tokens] == alone


def test_seeded_sampling_is_reproducible_per_row_and_seeds_differ(gpt2):
    _, _, engine = gpt2
    runs = [[r.tokens for r in engine.generate([PROMPTS[1]] * 3, [
        SamplingParams(max_tokens=20, temperature=1.0, seed=s, stop_at_eot=False)
        for s in (5, 5, 6)])] for _ in range(2)]
    assert runs[0] == runs[1] and runs[0][0] == runs[0][1] != runs[0][2]
    assert max(max(t) for t in runs[0]) < tokenizer.VOCAB_SIZE  # never a padding id


def test_top_k_and_top_p_are_honored(gpt2):
    model, params, engine = gpt2
    logits = full_forward_logits(model, params)
    prompt = PROMPTS[0]
    (top3,) = engine.generate([prompt], SamplingParams(max_tokens=16, temperature=5.0, top_k=3,
                                                       seed=0, stop_at_eot=False))
    for i, token in enumerate(top3.tokens):
        assert token in np.argsort(logits(prompt + top3.tokens[:i]))[-3:]
    assert len(set(top3.tokens)) > 1  # it did sample
    # A nucleus smaller than the top token's probability keeps only that token: greedy.
    (nucleus,) = engine.generate([prompt], SamplingParams(max_tokens=12, temperature=5.0,
                                                          top_p=1e-6, seed=0, stop_at_eot=False))
    assert nucleus.tokens == argmax_continuation(model, params, prompt, 12)


def test_stop_strings_cut_the_text_before_them(gpt2):
    _, _, engine = gpt2
    (free,) = engine.generate([PROMPTS[0]], SamplingParams(max_tokens=30, temperature=1.0,
                                                           seed=4, stop_at_eot=False))
    stop = free.text[len(free.text) // 2:][:3]
    (stopped,) = engine.generate([PROMPTS[0]], SamplingParams(max_tokens=30, temperature=1.0,
                                                              seed=4, stop=(stop, "never seen"),
                                                              stop_at_eot=False))
    assert stopped.finish_reason == "stop" and stopped.text == free.text[:free.text.find(stop)]
    assert engine.slots == [None] * 4  # its slot was freed


def test_endoftext_and_max_tokens_stop_a_row():
    model, params = tiny_model()
    # The final norm's bias along <|endoftext|>'s embedding: every position predicts it.
    eot_row = params["wte"]["embedding"][tokenizer.EOT_TOKEN]
    params["ln_f"]["bias"] = 100 * eot_row / jnp.sum(jnp.square(eot_row))
    engine = Engine(model.config, params, max_batch=2, chunk_steps=4)
    stops, runs_on = engine.generate([[1, 2]] * 2, [
        SamplingParams(max_tokens=10, temperature=0),
        SamplingParams(max_tokens=10, temperature=0, stop_at_eot=False)])
    assert stops.tokens == [tokenizer.EOT_TOKEN] and stops.finish_reason == "stop"
    assert stops.text == ""
    assert runs_on.tokens == [tokenizer.EOT_TOKEN] * 10 and runs_on.finish_reason == "length"


def test_a_new_prompt_length_within_a_bucket_does_not_recompile(gpt2):
    _, _, engine = gpt2
    engine.generate([[7] * 3], GREEDY)
    compiled = (engine_module._prefill_insert._cache_size(),
                engine_module._generate._cache_size())
    for length in (2, 5, 9, 16):  # the same bucket of 16 prompt positions
        engine.generate([[7] * length], GREEDY)
    assert (engine_module._prefill_insert._cache_size(),
            engine_module._generate._cache_size()) == compiled


def test_requests_the_engine_cannot_serve_name_the_field(gpt2):
    _, _, engine = gpt2
    for prompt, params, field in [
            ([], GREEDY, "prompt"), ([1] * 64, GREEDY, "prompt"),
            ([1] * 60, SamplingParams(max_tokens=5), "max_tokens"),
            ([1], SamplingParams(max_tokens=0), "max_tokens"),
            ([1], SamplingParams(temperature=-1), "temperature"),
            ([1], SamplingParams(top_p=0), "top_p"), ([1], SamplingParams(top_k=-2), "top_k")]:
        with pytest.raises(RequestError, match=f"^{field}: ") as raised:
            engine.submit(prompt, params)
        assert raised.value.param == field


def test_complete_seeds_each_sample_and_cancelled_requests_free_their_slot(gpt2):
    model, params, engine = gpt2
    samples = complete(model.config, params, [50256], 10, num_samples=2, seed=3)
    assert [s.tokens for s in samples] == [r.tokens for r in engine.generate(
        [[50256]] * 2, [SamplingParams(max_tokens=10, seed=s, stop_at_eot=False) for s in (3, 4)])]
    request = engine.submit(PROMPTS[0], SamplingParams(max_tokens=50))
    engine.step()
    request.cancel()
    assert not engine.step() and request.finish_reason == "cancelled" and request.done.is_set()


def test_blockwise_top_k_values_equal_lax_top_k():
    from gpt2_jax.inference.sampling import top_k_values

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, 50, (3, 1000)).astype(np.float32))  # many ties
    x = x.at[1, 500:].set(-jnp.inf)
    for k in (1, 7, 64):
        np.testing.assert_array_equal(top_k_values(x, k, block=4), jax.lax.top_k(x, k)[0])
