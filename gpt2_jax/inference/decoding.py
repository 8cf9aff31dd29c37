"""Autoregressive sampling with a KV cache: the prompt is processed once (prefill), then each new
token costs one position, all inside one compiled loop (no host round trips); and the samples
back to text."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from gpt2_jax import tokenizer
from gpt2_jax.model import GPT


def sample_token(logits_BxV: jax.Array, rng: jax.Array, temperature: float,
                 top_k: int | None) -> jax.Array:
    """Greedy at temperature 0; else softmax sampling, optionally among the top_k logits.
    (The padded vocabulary's logits are -inf, so those ids are never drawn.)"""
    if temperature == 0:
        return jnp.argmax(logits_BxV, axis=-1)
    logits_BxV = logits_BxV / temperature
    if top_k:
        kth_largest_Bx1 = jax.lax.top_k(logits_BxV, top_k)[0][:, -1:]
        logits_BxV = jnp.where(logits_BxV < kth_largest_Bx1, -jnp.inf, logits_BxV)
    return jax.random.categorical(rng, logits_BxV, axis=-1)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "temperature", "top_k"))
def _generate(model: GPT, params, prompt_BxP, rng, *, max_new_tokens, temperature, top_k):
    B, P = prompt_BxP.shape
    decoder = dataclasses.replace(model, decode=True)
    # An empty cache: zeros of the shapes init gives (init itself would also run one position).
    shapes = jax.eval_shape(decoder.init, jax.random.key(0), prompt_BxP[:, :1])["cache"]
    cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    logits_BxPxV, state = decoder.apply({"params": params, "cache": cache}, prompt_BxP,
                                        mutable=["cache"])
    rng, first_rng = jax.random.split(rng)
    first_B = sample_token(logits_BxPxV[:, -1], first_rng, temperature, top_k)
    new_BxN = jnp.zeros((B, max_new_tokens), jnp.int32).at[:, 0].set(first_B)

    def body(i, carry):
        new_BxN, cache, rng = carry
        rng, step_rng = jax.random.split(rng)
        logits_Bx1xV, state = decoder.apply({"params": params, "cache": cache},
                                            jax.lax.dynamic_slice_in_dim(new_BxN, i - 1, 1, axis=1),
                                            mutable=["cache"])
        next_B = sample_token(logits_Bx1xV[:, 0], step_rng, temperature, top_k)
        return new_BxN.at[:, i].set(next_B), state["cache"], rng

    new_BxN, _, _ = jax.lax.fori_loop(1, max_new_tokens, body, (new_BxN, state["cache"], rng))
    return jnp.concatenate([prompt_BxP, new_BxN], axis=1)


def generate(model: GPT, params, prompt: list[int], max_new_tokens: int, *, num_samples: int = 1,
             temperature: float = 1.0, top_k: int | None = None, seed: int = 0) -> jax.Array:
    """(num_samples, len(prompt) + max_new_tokens) token ids, the prompt included."""
    if not prompt:
        raise ValueError("the prompt must hold at least one token")
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be at least 1")
    if len(prompt) + max_new_tokens > model.config.block_size:
        raise ValueError(f"prompt ({len(prompt)} tokens) + max_new_tokens ({max_new_tokens}) "
                         f"exceeds model.block_size ({model.config.block_size})")
    prompt_BxP = jnp.tile(jnp.asarray(prompt, jnp.int32), (num_samples, 1))
    return _generate(model, params, prompt_BxP, jax.random.key(seed),
                     max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k)


def decode_samples(tokens, prompt_len: int, stop_at_eot: bool) -> list[str]:
    """The continuations as text, each cut at its first <|endoftext|> when asked."""
    texts = []
    for row in np.asarray(tokens)[:, prompt_len:]:
        if stop_at_eot and tokenizer.EOT_TOKEN in row:
            row = row[:list(row).index(tokenizer.EOT_TOKEN)]
        texts.append(tokenizer.decode(row))
    return texts
