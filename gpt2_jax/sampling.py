"""Autoregressive sampling from a params pytree (one compiled loop, no host round trips)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from gpt2_jax.model import GPT, lm_head_logits


def sample_token(logits_BxV: jax.Array, rng: jax.Array, temperature: float,
                 top_k: int | None) -> jax.Array:
    """Greedy at temperature 0; else softmax sampling, optionally among the top_k logits."""
    if temperature == 0:
        return jnp.argmax(logits_BxV, axis=-1)
    logits_BxV = logits_BxV / temperature
    if top_k:
        kth_largest_Bx1 = jax.lax.top_k(logits_BxV, top_k)[0][:, -1:]
        logits_BxV = jnp.where(logits_BxV < kth_largest_Bx1, -jnp.inf, logits_BxV)
    return jax.random.categorical(rng, logits_BxV, axis=-1)


@functools.partial(jax.jit, static_argnames=("model", "prompt_len", "max_new_tokens",
                                             "temperature", "top_k"))
def _generate(model: GPT, params, tokens_BxT, rng, *, prompt_len, max_new_tokens, temperature,
              top_k):
    def body(position, carry):
        tokens_BxT, rng = carry
        rng, step_rng = jax.random.split(rng)
        h_BxTxD = model.apply({"params": params}, tokens_BxT, method=GPT.hidden_states)
        logits_BxV = lm_head_logits(h_BxTxD[:, position - 1], params["wte"]["embedding"])
        next_B = sample_token(logits_BxV, step_rng, temperature, top_k)
        return tokens_BxT.at[:, position].set(next_B.astype(tokens_BxT.dtype)), rng

    end = prompt_len + max_new_tokens
    tokens_BxT, _ = jax.lax.fori_loop(prompt_len, end, body, (tokens_BxT, rng))
    return tokens_BxT[:, :end]


def generate(model: GPT, params, prompt: list[int], max_new_tokens: int, *, num_samples: int = 1,
             temperature: float = 1.0, top_k: int | None = None, seed: int = 0) -> jax.Array:
    """(num_samples, len(prompt) + max_new_tokens) token ids, the prompt included.

    Each new token reruns the model on a fixed (block_size) buffer: causal attention ignores the
    unwritten tail, and one shape means one compilation.
    """
    block_size = model.config.block_size
    if not prompt:
        raise ValueError("the prompt must hold at least one token")
    if len(prompt) + max_new_tokens > block_size:
        raise ValueError(f"prompt ({len(prompt)} tokens) + max_new_tokens ({max_new_tokens}) "
                         f"exceeds model.block_size ({block_size})")
    tokens_BxT = jnp.zeros((num_samples, block_size), jnp.int32).at[:, :len(prompt)].set(
        jnp.asarray(prompt, jnp.int32))
    return _generate(model, params, tokens_BxT, jax.random.key(seed), prompt_len=len(prompt),
                     max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k)
