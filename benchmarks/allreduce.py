"""All-reduce bandwidth over every local device, as nccl-tests reports it (for the 8-GPU projection).

    python benchmarks/allreduce.py [--sizes_mib 1 16 64 256 1024] [--dtype bfloat16] [--iters 20]

For each message size: the mean time of a jitted `psum` of a (devices x size) array sharded one row
per device, the algorithm bandwidth (bytes per device / time) and the bus bandwidth, algbw x
2(n-1)/n, which is what a ring all-reduce moves per link and what compares across device counts.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P


def allreduce_seconds(mib: float, dtype, iters: int) -> float:
    """Mean seconds of one all-reduce of `mib` MiB per device."""
    n = jax.device_count()
    mesh = jax.make_mesh((n,), ("d",))
    elements = int(mib * 2**20) // jnp.dtype(dtype).itemsize
    x = jax.device_put(jnp.ones((n, elements), dtype), NamedSharding(mesh, P("d", None)))
    reduce = jax.jit(jax.shard_map(lambda a: jax.lax.psum(a, "d"), mesh=mesh,
                                   in_specs=P("d", None), out_specs=P("d", None)))
    jax.block_until_ready(reduce(x))  # compile and warm up
    started = time.perf_counter()
    for _ in range(iters):
        x = reduce(x)
    jax.block_until_ready(x)
    return (time.perf_counter() - started) / iters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes_mib", type=float, nargs="+", default=[1, 16, 64, 256, 1024])
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args()
    n = jax.device_count()
    if n < 2:
        parser.error("one device: nothing to reduce (run it on a machine with several GPUs)")
    print(f"{n} x {jax.devices()[0].device_kind}, jax {jax.__version__}")
    print(f"{'MiB/device':>10} {'ms':>9} {'algbw GB/s':>11} {'busbw GB/s':>11}")
    for mib in args.sizes_mib:
        seconds = allreduce_seconds(mib, args.dtype, args.iters)
        algbw = mib * 2**20 / seconds / 1e9
        print(f"{mib:10g} {1000 * seconds:9.3f} {algbw:11.1f} {algbw * 2 * (n - 1) / max(n, 1):11.1f}",
              flush=True)


if __name__ == "__main__":
    main()
