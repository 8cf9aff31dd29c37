"""The transformer as the engine runs it: a functional forward over the params pytree, reading and
writing a preallocated KV cache.

`prepare_weights` casts the params to the compute dtype once and splits the stacked blocks into
one pytree per layer, so no step reads fp32 weights or slices the stack. `prefill` runs whole
prompts (causal attention among their own positions) and returns their keys and values;
`decode` advances every row of the batch by one token at its own position, writing that
position's key and value into the cache in place and attending over the first `length` cache
positions only (a bucket the host picks to cover every live row). The math is the model's own:
`embed`, `normalize`, `rotary`, `rms_normalize` and `lm_head_logits` from model.py.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gpt2_jax.model.gpt import GPTConfig, embed, normalize, rms_normalize, rotary
from gpt2_jax.model.loss import lm_head_logits

# Per layer, the cache's keys and values: two (B, S, H, K) arrays in the compute dtype.
Cache = tuple[tuple[jax.Array, jax.Array], ...]


def prepare_weights(params: Any, cfg: GPTConfig, dtype) -> dict:
    """The params in the engine's layout: matrices and biases cast to `dtype` (the norms' gains
    stay fp32, as the model computes norms in fp32), blocks as a list of per-layer pytrees."""
    cast = lambda a: a.astype(dtype)  # noqa: E731
    blocks = params["h"]
    layers = [jax.tree.map(lambda a, i=i: a[i], blocks) for i in range(cfg.n_layer)]
    layers = [{"ln_1": layer["ln_1"], "ln_2": layer["ln_2"],
               "attn": jax.tree.map(cast, layer["attn"]), "mlp": jax.tree.map(cast, layer["mlp"])}
              for layer in layers]
    weights = {"wte": cast(params["wte"]["embedding"]), "ln_f": params["ln_f"], "layers": layers}
    if cfg.pos_emb == "learned":
        weights["wpe"] = cast(params["wpe"]["embedding"])
    if not cfg.tie_embeddings:
        weights["lm_head"] = cast(params["lm_head"])
    return weights


def empty_cache(cfg: GPTConfig, batch: int, dtype) -> Cache:
    shape = (batch, cfg.block_size, cfg.n_head, cfg.head_dim)
    return tuple((jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(cfg.n_layer))


def _norm(x, ln, dtype):
    return normalize(x, ln["scale"], ln.get("bias"), dtype)


def _linear(x, proj, n_in=1):
    return jnp.tensordot(x, proj["kernel"], axes=n_in) + proj["bias"]


def _mlp(h, mlp, cfg: GPTConfig):
    h = _linear(h, mlp["c_fc"])
    h = jnp.square(nn.relu(h)) if cfg.mlp_act == "relu2" else nn.gelu(h, approximate=True)
    return _linear(h, mlp["c_proj"])


def _qkv(h_BxTxD, attn, positions_BxT, cfg: GPTConfig):
    qkv_BxTx3xHxK = _linear(h_BxTxD, attn["c_attn"])
    q, k, v = (qkv_BxTx3xHxK[:, :, i] for i in range(3))
    if cfg.qk_norm:
        q, k = rms_normalize(q), rms_normalize(k)
    if cfg.pos_emb == "rope":  # rotary() takes one row's positions: map it over the rows
        q, k = (jax.vmap(lambda x, p: rotary(x[None], p)[0])(a, positions_BxT) for a in (q, k))
    return q, k, v


def _embed(weights, tokens_BxT, positions_BxT, cfg: GPTConfig, dtype):
    x = embed(weights["wte"], tokens_BxT, dtype, None)
    if cfg.pos_emb == "learned":  # the model adds position embeddings in its first norm
        x = x + embed(weights["wpe"], positions_BxT, dtype, None)
    return x


def _logits(weights, x_NxD, cfg: GPTConfig, dtype):
    h_NxD = _norm(x_NxD, weights["ln_f"], dtype)
    head = weights["wte"] if cfg.tie_embeddings else weights["lm_head"]
    return lm_head_logits(h_NxD, head, real_vocab_size=cfg.real_vocab_size,
                          softcap=cfg.logit_softcap)


def prefill(weights: dict, tokens_NxP: jax.Array, lengths_N: jax.Array, cfg: GPTConfig, dtype
            ) -> tuple[jax.Array, list[tuple[jax.Array, jax.Array]]]:
    """Next-token logits after each prompt's last real token, (N, V) fp32, and every layer's
    (keys, values) of the prompts, (N, P, H, K) each. Prompts are right-padded to P: causal
    attention keeps the padding from reaching a real position."""
    positions_NxP = jnp.broadcast_to(jnp.arange(tokens_NxP.shape[1]), tokens_NxP.shape)
    x = _embed(weights, tokens_NxP, positions_NxP, cfg, dtype)
    kv = []
    for layer in weights["layers"]:
        q, k, v = _qkv(_norm(x, layer["ln_1"], dtype), layer["attn"], positions_NxP, cfg)
        kv.append((k, v))
        y = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla")
        x = x + _linear(y, layer["attn"]["c_proj"], n_in=2)
        x = x + _mlp(_norm(x, layer["ln_2"], dtype), layer["mlp"], cfg)
    last_NxD = jnp.take_along_axis(x, (lengths_N - 1)[:, None, None], axis=1)[:, 0]
    return _logits(weights, last_NxD, cfg, dtype), kv


def decode(weights: dict, cache: Cache, tokens_B: jax.Array, positions_B: jax.Array,
           length: int, cfg: GPTConfig, dtype) -> tuple[jax.Array, Cache]:
    """One token per row: row b's token at positions_B[b] (its key and value written there),
    attending over cache positions [0, positions_B[b]] within the first `length`. Returns the
    next-token logits, (B, V) fp32, and the updated cache."""
    rows_B = jnp.arange(tokens_B.shape[0])
    x = _embed(weights, tokens_B[:, None], positions_B[:, None], cfg, dtype)
    visible_Bx1x1xS = (jnp.arange(length)[None, :] <= positions_B[:, None])[:, None, None, :]
    new_cache = []
    for layer, (keys, values) in zip(weights["layers"], cache):
        q, k, v = _qkv(_norm(x, layer["ln_1"], dtype), layer["attn"], positions_B[:, None], cfg)
        keys = keys.at[rows_B, positions_B].set(k[:, 0])
        values = values.at[rows_B, positions_B].set(v[:, 0])
        new_cache.append((keys, values))
        y = jax.nn.dot_product_attention(q, keys[:, :length], values[:, :length],
                                         mask=visible_Bx1x1xS, implementation="xla")
        x = x + _linear(y, layer["attn"]["c_proj"], n_in=2)
        x = x + _mlp(_norm(x, layer["ln_2"], dtype), layer["mlp"], cfg)
    return _logits(weights, x[:, 0], cfg, dtype), tuple(new_cache)
