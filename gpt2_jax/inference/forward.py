"""The transformer as the engine runs it: a functional forward over the params pytree, reading and
writing a preallocated KV cache.

`prepare_weights` casts the params to the compute dtype once and splits the stacked blocks into
one pytree per layer, so no step reads fp32 weights or slices the stack. `prefill` runs whole
prompts (causal attention among their own positions) and returns their keys and values;
`decode` advances every row of the batch by one token at its own position, writing that
position's key and value into the cache in place. On a GPU it runs Pallas kernels where XLA
would run chains of small ones, since a decode step's time is mostly their count: per layer, one
attention kernel (cache write, scores, softmax and values over each row's filled positions), and
at each of the layer's two residual adds one kernel that also applies the next LayerNorm.
Elsewhere, attention reads the first `length` cache positions (a bucket the host picks to cover
every live row). The math is the model's own: `embed`, `normalize`, `rotary`, `rms_normalize`
and `lm_head_logits` from model.py.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gpt2_jax.model.gpt import GPTConfig, embed, normalize, rms_normalize, rotary
from gpt2_jax.model.loss import lm_head_logits
from gpt2_jax.ops import decode_attention, norm_kernel

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


def _mlp_hidden(h, mlp, cfg: GPTConfig):
    """The MLP up to its output projection."""
    h = _linear(h, mlp["c_fc"])
    return jnp.square(nn.relu(h)) if cfg.mlp_act == "relu2" else nn.gelu(h, approximate=True)


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


def _logits(weights, h_NxD, cfg: GPTConfig):
    """Next-token logits from the final norm's output."""
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
        x = x + _linear(_mlp_hidden(_norm(x, layer["ln_2"], dtype), layer["mlp"], cfg),
                        layer["mlp"]["c_proj"])
    last_NxD = jnp.take_along_axis(x, (lengths_N - 1)[:, None, None], axis=1)[:, 0]
    return _logits(weights, _norm(last_NxD, weights["ln_f"], dtype), cfg), kv


def _add_norm(x, branch, bias, ln, dtype, kernel: bool):
    """(x + branch + bias, its normalization by `ln`): with `kernel`, the Pallas kernel that does
    both in one pass (LayerNorm only)."""
    if kernel:
        return norm_kernel.add_layer_norm(x, branch, bias, ln["scale"], ln["bias"])
    x = x + (branch + bias).astype(x.dtype)
    return x, _norm(x, ln, dtype)


def choose_kernels(cfg: GPTConfig, device: jax.Device,
                   requested: dict[str, bool] | None = None) -> dict[str, bool]:
    """Which Pallas kernels `decode` runs: the attention kernel (heads of a power-of-two size)
    and the fused residual add and LayerNorm (LayerNorm rows up to the norm kernel's width), by
    default on GPUs where the model allows them. `requested` overrides by name (tests force them
    on in Pallas' interpreter; the benchmark's --xla_only turns them off); ValueError for a
    name it does not know or a kernel that cannot compute this model."""
    allowed = {"attention": decode_attention.supports(cfg.head_dim),
               "norm": cfg.norm == "layernorm" and cfg.n_embd <= norm_kernel.MAX_WIDTH}
    chosen = {name: ok and device.platform == "gpu" for name, ok in allowed.items()}
    for name, on in (requested or {}).items():
        if name not in allowed:
            raise ValueError(f"unknown decode kernel {name!r} (one of {sorted(allowed)})")
        if on and not allowed[name]:
            raise ValueError(f"the decode kernel {name!r} cannot compute this model "
                             f"(head_dim {cfg.head_dim}, norm {cfg.norm}, n_embd {cfg.n_embd})")
        chosen[name] = on
    return chosen


def decode(weights: dict, cache: Cache, tokens_B: jax.Array, positions_B: jax.Array,
           length: int, cfg: GPTConfig, dtype, kernels: dict[str, bool] | None = None
           ) -> tuple[jax.Array, Cache]:
    """One token per row: row b's token at positions_B[b] (its key and value written there),
    attending over cache positions [0, positions_B[b]]. The XLA path reads the first `length`
    positions of every row; the attention kernel reads each row's own. `kernels`
    (choose_kernels) picks the Pallas kernels. Returns the next-token logits, (B, V) fp32, and
    the updated cache."""
    kernels = kernels or {"attention": False, "norm": False}
    x = _embed(weights, tokens_B[:, None], positions_B[:, None], cfg, dtype)[:, 0]
    layers = weights["layers"]
    h = _norm(x, layers[0]["ln_1"], dtype)
    new_cache = []
    for i, (layer, (keys, values)) in enumerate(zip(layers, cache)):
        q, k, v = (a[:, 0] for a in _qkv(h[:, None], layer["attn"], positions_B[:, None], cfg))
        if kernels["attention"]:
            y, keys, values = decode_attention.decode_attention(
                jnp.stack([q, k, v], axis=1), keys, values, positions_B)
        else:
            rows_B = jnp.arange(tokens_B.shape[0])
            visible_Bx1x1xS = (jnp.arange(length) <= positions_B[:, None])[:, None, None, :]
            keys = keys.at[rows_B, positions_B].set(k)
            values = values.at[rows_B, positions_B].set(v)
            y = jax.nn.dot_product_attention(q[:, None], keys[:, :length], values[:, :length],
                                             mask=visible_Bx1x1xS, implementation="xla")[:, 0]
        new_cache.append((keys, values))
        proj, mlp = layer["attn"]["c_proj"], layer["mlp"]
        x, h = _add_norm(x, jnp.tensordot(y, proj["kernel"], axes=2), proj["bias"],
                         layer["ln_2"], dtype, kernels["norm"])
        branch = jnp.tensordot(_mlp_hidden(h, mlp, cfg), mlp["c_proj"]["kernel"], axes=1)
        next_ln = layers[i + 1]["ln_1"] if i + 1 < len(layers) else weights["ln_f"]
        x, h = _add_norm(x, branch, mlp["c_proj"]["bias"], next_ln, dtype, kernels["norm"])
    return _logits(weights, h, cfg), tuple(new_cache)
