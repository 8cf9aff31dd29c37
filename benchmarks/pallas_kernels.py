"""The Pallas kernels alone on a GPU: the MLP's GELU (ops/gelu_kernel.py), the residual add +
LayerNorm (ops/norm_kernel.py) and the fused classifier.

    python benchmarks/pallas_kernels.py            # each against XLA, the classifier alone
    python benchmarks/pallas_kernels.py --sweep    # also the GELU and norm backwards' tile sweeps

For GPT-2 124M's and 1558M's shapes (one micro-batch of 64 x 1024 and 16 x 1024 tokens) it checks
the GELU and norm kernels' gradients against fp32 autodiff and times forward + backward against
XLA's fusions of the bf16 formula; then it times the classifier on one 124M micro-batch of bf16
logits (65,536 x 50,304), its buffer donated and fed back as the training step does. BENCHMARKS.md
(runs x, aa, ag, ai-ak) has the figures and the sweeps that chose the tiles.
"""

from __future__ import annotations

import argparse
import itertools
import time

import jax
import jax.numpy as jnp

from gpt2_jax.ops import gelu_kernel, loss_kernel, norm_kernel
from gpt2_jax.tokenizer import VOCAB_SIZE

MLP_SHAPES = {"124M": (65536, 3072), "1558M": (16384, 6400)}
NORM_SHAPES = {"124M": (65536, 768), "1558M": (16384, 1600)}


def timed(fn, *args, n: int = 20) -> float:
    """Milliseconds per call of a jitted fn, after one warm-up call."""
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    for _ in range(n):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / n * 1e3


def xla_gelu(z: jax.Array, b: jax.Array) -> jax.Array:
    """What the model computes with gelu_kernel=xla (autodiff stores tanh)."""
    return jax.nn.gelu(z + b.astype(z.dtype), approximate=True)


def gelu(rows: int, width: int, sweep: bool) -> None:
    kz, kb, kd = jax.random.split(jax.random.key(0), 3)
    z = (jax.random.normal(kz, (rows, width)) * 2).astype(jnp.bfloat16)
    b = jax.random.normal(kb, (width,)) * 0.1
    dy = jax.random.normal(kd, (rows, width)).astype(jnp.bfloat16)
    want = jax.jit(lambda z, b: jax.vjp(xla_gelu, z.astype(jnp.float32), b)[1](
        dy.astype(jnp.float32)))(z, b)
    got = jax.jit(lambda z, b: jax.vjp(gelu_kernel.bias_gelu, z, b)[1](dy))(z, b)
    print(f"GELU {rows} x {width}: d(z) max error "
          f"{float(jnp.max(jnp.abs(got[0].astype(jnp.float32) - want[0]))):.4f} (values up to "
          f"{float(jnp.max(jnp.abs(want[0]))):.1f}), d(b) relative error "
          f"{float(jnp.max(jnp.abs(got[1] - want[1])) / jnp.max(jnp.abs(want[1]))):.1e}")
    for name, f in (("XLA autodiff", xla_gelu), ("Pallas kernels", gelu_kernel.bias_gelu)):
        step = jax.jit(lambda z, b, dy, f=f: (lambda y, vjp: (y, vjp(dy)))(*jax.vjp(f, z, b)))
        print(f"  {name}: forward + backward {timed(step, z, b, dy):.3f} ms")
    moved = 3 * z.size * z.dtype.itemsize
    print(f"  backward alone: {timed(jax.jit(gelu_kernel.bias_gelu_backward), z, b, dy):.3f} ms "
          f"({moved / 1e9:.2f} GB; {moved / 3.0e12 * 1e3:.3f} ms at 3.0 TB/s)")
    if not sweep:
        return
    kept = (gelu_kernel.BLOCK_ROWS, gelu_kernel.BLOCK_COLS, gelu_kernel.GROUP_ROWS,
            gelu_kernel.NUM_WARPS, gelu_kernel.NUM_STAGES)
    results = []
    for tile in itertools.product((16, 32, 64), (128, 256, 512), (256, 1024), (4, 8), (1, 2, 3)):
        if tile[0] * tile[1] > 32768:
            continue
        (gelu_kernel.BLOCK_ROWS, gelu_kernel.BLOCK_COLS, gelu_kernel.GROUP_ROWS,
         gelu_kernel.NUM_WARPS, gelu_kernel.NUM_STAGES) = tile
        # A new function each time: jit caches by function, and the tile is read at trace time.
        results.append((timed(jax.jit(lambda z, b, dy: gelu_kernel.bias_gelu_backward(z, b, dy)),
                              z, b, dy), tile))
    (gelu_kernel.BLOCK_ROWS, gelu_kernel.BLOCK_COLS, gelu_kernel.GROUP_ROWS,
     gelu_kernel.NUM_WARPS, gelu_kernel.NUM_STAGES) = kept
    for ms, tile in sorted(results)[:8]:
        print(f"  {ms:.3f} ms: rows {tile[0]} cols {tile[1]} group {tile[2]} warps {tile[3]} "
              f"stages {tile[4]}")


def xla_residual_norm(x, h, h_bias, gain, bias):
    """What the model computes with norm_kernel=xla (model.ResidualNorm's LayerNorm)."""
    s = x + (h + h_bias.astype(h.dtype))
    s32 = s.astype(jnp.float32)
    mean = jnp.mean(s32, axis=-1, keepdims=True)
    var = jnp.maximum(jnp.mean(jnp.square(s32), axis=-1, keepdims=True) - jnp.square(mean), 0.0)
    return s, ((s32 - mean) * (jax.lax.rsqrt(var + norm_kernel.EPS) * gain) + bias).astype(s.dtype)


def residual_norm(rows: int, width: int, sweep: bool) -> None:
    keys = jax.random.split(jax.random.key(0), 7)
    x, h, ds, dy = (jax.random.normal(k, (rows, width)).astype(jnp.bfloat16)
                    for k in (keys[0], keys[1], keys[5], keys[6]))
    vectors = [jax.random.normal(k, (width,)) * 0.1 + offset
               for k, offset in zip(keys[2:5], (0.0, 1.0, 0.0))]

    def with_gradients(f):
        def run(*operands):
            out, vjp = jax.vjp(f, *operands)
            return out, vjp(tuple(c.astype(o.dtype) for c, o in zip((ds, dy), out)))
        return jax.jit(run)

    as32 = lambda a: a.astype(jnp.float32)  # noqa: E731
    want = with_gradients(lambda *a: xla_residual_norm(*map(as32, a)))(x, h, *vectors)
    kernels = with_gradients(norm_kernel.add_layer_norm)
    got = kernels(x, h, *vectors)
    errors = [float(jnp.max(jnp.abs(as32(g) - w)) / jnp.max(jnp.abs(w)))
              for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want))]
    print(f"residual + LayerNorm {rows} x {width}: largest error relative to each output's "
          f"largest value (s, y, d(x), d(h), d(h_bias), d(gain), d(bias)): "
          + " ".join(f"{e:.1e}" for e in errors))
    for name, f in (("XLA fusions", with_gradients(xla_residual_norm)), ("Pallas kernels", kernels)):
        print(f"  {name}: forward + backward {timed(f, x, h, *vectors):.3f} ms")
    if not sweep:
        return
    kept = norm_kernel.GROUP_ROWS, norm_kernel.NUM_STAGES
    for norm_kernel.GROUP_ROWS, norm_kernel.NUM_STAGES in itertools.product((64, 128, 256),
                                                                         (1, 2, 3)):
        tiled = with_gradients(lambda *a: norm_kernel.add_layer_norm(*a))  # a new function each
        differs = max(float(jnp.max(jnp.abs(as32(a) - as32(b))))
                      for a, b in zip(jax.tree.leaves(tiled(x, h, *vectors)),
                                      jax.tree.leaves(got)))
        print(f"  group {norm_kernel.GROUP_ROWS} stages {norm_kernel.NUM_STAGES}: "
              f"{timed(tiled, x, h, *vectors):.3f} ms, largest difference from the kept tiling "
              f"{differs:.2g}")
    norm_kernel.GROUP_ROWS, norm_kernel.NUM_STAGES = kept


def timed_feeding_back(fn, first, *args, n: int = 10) -> float:
    """Like timed(), for a fn that donates its first argument and returns its replacement."""
    value = fn(first, *args)
    jax.block_until_ready(value)
    start = time.perf_counter()
    for _ in range(n):
        value = fn(value, *args)
    jax.block_until_ready(value)
    return (time.perf_counter() - start) / n * 1e3


def classifier(rows: int = 65536, vocab: int = 50304) -> None:
    targets = jax.random.randint(jax.random.key(1), (rows,), 0, VOCAB_SIZE)
    logits = (jax.random.normal(jax.random.key(0), (rows, vocab), jnp.bfloat16) * 2)
    kernel = jax.jit(lambda l, t: loss_kernel.softmax_gradient(l, t, VOCAB_SIZE)[0],
                     donate_argnums=0)
    print(f"fused classifier {rows} x {vocab} bf16: "
          f"{timed_feeding_back(kernel, logits, targets):.3f} ms "
          f"(reading once and writing once at 3.0 TB/s: {2 * logits.nbytes / 3.0e9:.1f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", action="store_true", help="the backwards' tile sweeps")
    args = parser.parse_args()
    print(jax.devices()[0].device_kind, "jax", jax.__version__)
    for size, (rows, width) in MLP_SHAPES.items():
        print(f"== {size}")
        gelu(rows, width, args.sweep)
        residual_norm(*NORM_SHAPES[size], args.sweep)
    classifier()


if __name__ == "__main__":
    main()
