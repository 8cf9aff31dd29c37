"""The token-embedding backward alone, on real-text tokens against uniform random ones.

    python benchmarks/embedding_backward.py --shards 'data/debian/debian_train_*.bin'

Why real text slowed the trainer (BENCHMARKS.md): the gradient of an embedding lookup is a
scatter-add of one row per token, and real text repeats a few tokens very often, so the adds
collide on the same rows. This times that backward for one 124M micro-batch (64 x 1024 tokens,
768 channels) in the ways it can be written, and prints the dtype XLA scatters in.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from gpt2_jax.data.shards import find_shards, open_shard
from gpt2_jax.model import embed


def cast_then_gather(table, ids):  # what flax's nn.Embed does with dtype=bfloat16
    return jnp.take(table.astype(jnp.bfloat16), ids, axis=0)


def gather_then_cast(table, ids):  # gpt2_jax.model.embed
    return embed(table, ids, jnp.bfloat16, "vocab")


def one_hot_matmul(table, ids):  # a dense product instead of a scatter (tensor cores)
    return jax.nn.one_hot(ids, table.shape[0], dtype=jnp.bfloat16) @ table.astype(jnp.bfloat16)


VARIANTS = {"cast table, then gather": cast_then_gather,
            "gather fp32, then cast": gather_then_cast,
            "one-hot matmul": one_hot_matmul}


def time_ms(fn, *args, repeats: int = 20) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(1000 * (time.perf_counter() - started))
    return statistics.median(times)


def scatter_dtypes(fn, *args) -> str:
    hlo = fn.lower(*args).compile().as_text()
    kinds = {line.split("=")[1].split("[")[0].strip() for line in hlo.splitlines()
             if " scatter(" in line}
    return ",".join(sorted(kinds)) or "no scatter"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", required=True, help="glob of token shards (real text)")
    parser.add_argument("--tokens", type=int, default=64 * 1024)
    parser.add_argument("--channels", type=int, default=768)
    args = parser.parse_args()
    real = np.asarray(open_shard(find_shards(args.shards)[0])[:args.tokens], dtype=np.int32)
    counts = np.bincount(real)
    print(f"real tokens: {len(np.unique(real))} distinct in {args.tokens}; the most frequent "
          f"token is {counts.max() / args.tokens:.1%} of them, the top 10 {np.sort(counts)[-10:].sum() / args.tokens:.1%}")
    rng = np.random.default_rng(0)
    batches = {"real text": real, "uniform": rng.integers(0, 50257, args.tokens, dtype=np.int32)}
    table = jnp.asarray(rng.normal(0, 0.02, (50304, args.channels)), jnp.float32)
    cotangent = jnp.asarray(rng.normal(0, 1e-3, (args.tokens, args.channels)), jnp.bfloat16)
    print(f"{'variant':28s} {'tokens':10s} {'backward ms':>11s}  scatter dtype")
    for name, lookup in VARIANTS.items():
        backward = jax.jit(lambda t, i, g, f=lookup: jax.vjp(lambda t: f(t, i), t)[1](g)[0])
        for data_name, ids in batches.items():
            ids = jnp.asarray(ids)
            print(f"{name:28s} {data_name:10s} {time_ms(backward, table, ids, cotangent):11.2f}  "
                  f"{scatter_dtypes(backward, table, ids, cotangent)}", flush=True)


if __name__ == "__main__":
    main()
