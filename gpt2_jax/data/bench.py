"""Tokens/s the input pipeline delivers on this host, with no accelerator in the loop.

    python -m gpt2_jax.data.bench [--files 'data/fineweb10B/fineweb_train_*.bin'] [--seconds 20]

Without --files it first writes random shards (--shard_tokens each) to a temporary directory.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np

from gpt2_jax.data import pipeline
from gpt2_jax.data.shards import find_shards, write_shard
from gpt2_jax.errors import exits_on_user_error


def measure(files: list[str], *, seq_len: int, accum: int, batch: int, threads: int,
            seconds: float) -> float:
    """Steady-state tokens/s of `pipeline.train_batches` (the first batch is not timed)."""
    it = pipeline.train_batches(files, seq_len=seq_len, accum_steps=accum, local_batch=batch,
                                seed=0, num_threads=threads, process_index=0, process_count=1)
    next(it)
    tokens, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        tokens += next(it)[..., 1:].size  # targets per batch: accum x batch x seq_len
    return tokens / (time.perf_counter() - start)


@exits_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gpt2_jax.data.bench", description=__doc__)
    parser.add_argument("--files", help="glob of shards (default: random shards in a temp dir)")
    parser.add_argument("--shard_tokens", type=int, default=50_000_000)
    parser.add_argument("--num_shards", type=int, default=2)
    parser.add_argument("--seq_len", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=64, help="sequences per micro-batch")
    parser.add_argument("--accum", type=int, default=8, help="micro-batches per step")
    parser.add_argument("--threads", type=int, default=8, help="grain reader threads")
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if args.files:
            files = find_shards(args.files)
        else:
            rng = np.random.default_rng(0)
            files = [os.path.join(tmp, f"random_{i:06d}.bin") for i in range(args.num_shards)]
            for path in files:
                write_shard(path, rng.integers(0, 50257, args.shard_tokens, dtype=np.uint16))
        rate = measure(files, seq_len=args.seq_len, accum=args.accum, batch=args.batch,
                       threads=args.threads, seconds=args.seconds)
    print(f"{rate:,.0f} tokens/s | {args.accum} x {args.batch} x {args.seq_len + 1} windows, "
          f"{args.threads} threads, {len(files)} shards | {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}")


if __name__ == "__main__":
    main()
