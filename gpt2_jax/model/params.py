"""A GPT's params pytree without running it: initialization, logical sharding specs, shapes, and
the counts (parameters, FLOPs per token) that MFU is measured against."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gpt2_jax.model.gpt import GPT, GPTConfig


def init_params(model: GPT, rng: jax.Array) -> Any:
    """The params pytree (logical-axis boxes removed).

    Initialized through a rolled layer loop: the values are the same for every scan_unroll,
    and compiling 48 unrolled initializers would take longer than the training step's compile.
    """
    rolled = model.clone(config=dataclasses.replace(model.config, scan_unroll=1))
    return nn.unbox(rolled.init(rng, jnp.zeros((1, 1), jnp.int32)))["params"]


def param_logical_specs(model: GPT) -> Any:
    """The params' logical PartitionSpecs, read off the model without allocating anything."""
    abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
    return nn.get_partition_spec(abstract)["params"]


def abstract_params(model: GPT, shardings: Any = None) -> Any:
    """The params' shapes and dtypes as ShapeDtypeStructs (with `shardings`, laid out by them),
    without allocating anything: what a restore or a sharding plan starts from."""
    abstract = jax.eval_shape(lambda rng: init_params(model, rng), jax.random.key(0))
    if shardings is None:
        return abstract
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, shardings)


def count_params(params: Any) -> int:
    """Parameters in a params pytree (arrays or ShapeDtypeStructs)."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))


def flops_per_token(cfg: GPTConfig, n_params: int, seq_len: int) -> float:
    """Training FLOPs per token by llm.c's (PaLM's) formula: 6N + 6*L*D*T.

    This is what llm.c reports MFU against, so our MFU compares with its figures directly.
    """
    return 6 * n_params + 6 * cfg.n_layer * cfg.n_embd * seq_len
