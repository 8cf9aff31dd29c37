"""Per-row sampling: each row has its own temperature, top_k, top_p and seed.

A row draws by the Gumbel-max trick over the whole vocabulary, with noise from its own key folded
with the index of the token being drawn: argmax(logits / T + g) over the ids that top_k and top_p
allow. The noise does not depend on the other rows, on the batch size or on how the allowed set
was found, so a row's tokens are the same alone, in any batch, and joining at any step.

Finding the allowed set needs the largest logits in order. `k_cap` (static) is how many the
compiled sampler sorts: enough for every row's top_k, or the whole vocabulary when some row asks
for top_p without a top_k; 0 when no row restricts its draw, 1 when every row is greedy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# The sizes k_cap is rounded up to, so a new top_k does not compile a new sampler.
K_CAPS = (64, 256, 1024)


def k_cap(temperatures, top_ks, top_ps, vocab_size: int) -> int:
    """The compiled sampler's sort size for rows with these settings (host values)."""
    sampled = [(k, p) for t, k, p in zip(temperatures, top_ks, top_ps) if t > 0]
    if not sampled:
        return 1
    needed = max(k if k > 0 else (vocab_size if p < 1 else 0) for k, p in sampled)
    if needed == 0:
        return 0
    return next((cap for cap in K_CAPS if cap >= needed), vocab_size)


def top_k_values(x_BxV: jax.Array, k: int, block: int = 16) -> jax.Array:
    """The k largest values of each row, largest first. Exact, from the k blocks (of `block`
    adjacent ids) with the largest maxima, which hold all of them: XLA's top_k on a GPU sorts
    the whole row, so this sorts k * block candidates instead of the vocabulary."""
    B, V = x_BxV.shape
    if k * block >= V:
        return jax.lax.top_k(x_BxV, k)[0]
    x_BxNxb = jnp.pad(x_BxV, ((0, 0), (0, -V % block)), constant_values=-jnp.inf
                      ).reshape(B, -1, block)
    blocks_Bxk = jax.lax.top_k(jnp.max(x_BxNxb, axis=-1), k)[1]
    candidates = jnp.take_along_axis(x_BxNxb, blocks_Bxk[:, :, None], axis=1)
    return jax.lax.top_k(candidates.reshape(B, k * block), k)[0]


def sample(logits_BxV: jax.Array, seeds_B: jax.Array, indices_B: jax.Array,
           temperature_B: jax.Array, top_k_B: jax.Array, top_p_B: jax.Array,
           cap: int) -> jax.Array:
    """Each row's next token: argmax where its temperature is 0, else a draw at that temperature
    among its top_k largest logits (0 = all) whose probabilities, largest first, sum to top_p
    (the one that crosses top_p included). `indices_B` is the index in its sequence of the
    token being drawn: with the seed it keys the draw."""
    greedy_B = jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    if cap == 1:
        return greedy_B
    scaled_BxV = logits_BxV / jnp.maximum(temperature_B, 1e-6)[:, None]
    if cap > 0:
        sorted_BxC = top_k_values(scaled_BxV, cap)
        rank_C = jnp.arange(cap)
        in_top_k_BxC = (top_k_B[:, None] <= 0) | (rank_C[None, :] < top_k_B[:, None])
        probs_BxC = jax.nn.softmax(jnp.where(in_top_k_BxC, sorted_BxC, -jnp.inf), axis=-1)
        before_BxC = jnp.cumsum(probs_BxC, axis=-1) - probs_BxC
        kept_BxC = in_top_k_BxC & ((before_BxC < top_p_B[:, None]) | (rank_C[None, :] == 0))
        # The smallest kept logit: ids at or above it are allowed (ties included).
        threshold_B = jnp.min(jnp.where(kept_BxC, sorted_BxC, jnp.inf), axis=-1)
        unrestricted_B = (top_k_B <= 0) & (top_p_B >= 1)
        threshold_B = jnp.where(unrestricted_B, -jnp.inf, threshold_B)
        scaled_BxV = jnp.where(scaled_BxV >= threshold_B[:, None], scaled_BxV, -jnp.inf)
    keys_B = jax.vmap(lambda s, i: jax.random.fold_in(jax.random.key(s), i))(seeds_B, indices_B)
    noise_BxV = jax.vmap(lambda key: jax.random.gumbel(key, logits_BxV.shape[-1:]))(keys_B)
    drawn_B = jnp.argmax(scaled_BxV + noise_BxV, axis=-1).astype(jnp.int32)
    return jnp.where(temperature_B > 0, drawn_B, greedy_B)
