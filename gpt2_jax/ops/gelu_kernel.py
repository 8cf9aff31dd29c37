"""The MLP's bias add and tanh GELU as two Pallas (Triton) kernels, forward and backward.

Autodiff of `gelu(z + b)` stores tanh(.) next to z in the forward pass and, in the backward,
reads z, tanh and dy to write d(z) plus bias-gradient partials: one XLA fusion that moves four
activation-sized tensors. A custom VJP that recomputes tanh in jnp was slower, because XLA
split its backward in two (d(z) written in fp32, then read back for the bias reduction).

Here the forward reads z and writes gelu(z + b), nothing else, and the backward reads z and dy
once, recomputes tanh in fp32 and writes d(z) plus one fp32 bias-gradient partial per group of
rows, which XLA sums. Both run over (row group, column block) tiles, so the backward runs near
the GPU's memory bandwidth. They have no SPMD partitioning rule: on a mesh each device runs them
on its own rows and columns (sharding.per_device), and the bias partials are summed across
devices; that stays faster than XLA's fusions on a mesh too, so `model.gelu_kernel=auto` takes
them on any GPU mesh. Off GPU they run in Pallas' interpreter (tests compare them with autodiff).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from gpt2_jax.ops import pallas
from gpt2_jax.parallel import sharding

SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
CUBIC = 0.044715
# The tiling: the fastest of a sweep of the backward's tiles (docs/benchmarks/ has the sweep).
BLOCK_COLS = 128  # columns per tile (a power of two dividing the hidden width, at most this)
BLOCK_ROWS = 32  # rows per load
GROUP_ROWS = 256  # rows summed into one bias-gradient partial
NUM_WARPS, NUM_STAGES = 4, 1


def gelu_tanh(h: jax.Array) -> jax.Array:
    """GPT-2's GELU: 0.5 h (1 + tanh(sqrt(2/pi) (h + 0.044715 h^3)))."""
    return 0.5 * h * (1 + jnp.tanh(SQRT_2_OVER_PI * (h + CUBIC * h * h * h)))


def gelu_tanh_derivative(h: jax.Array) -> jax.Array:
    """d gelu_tanh / dh, with tanh recomputed rather than stored."""
    t = jnp.tanh(SQRT_2_OVER_PI * (h + CUBIC * h * h * h))
    return 0.5 * (1 + t) + 0.5 * h * (1 - t * t) * SQRT_2_OVER_PI * (1 + 3 * CUBIC * h * h)


def _power_of_two_dividing(n: int, at_most: int) -> int:
    return min(n & -n, at_most)


def _tiles(z_ref, b_ref, *, block_rows: int, group_rows: int, block_cols: int):
    """This program's columns, and a function giving its i-th tile's rows and z + b (fp32)."""
    cols = pl.ds(pl.program_id(1) * block_cols, block_cols)
    first_row = pl.program_id(0) * group_rows
    b = plgpu.load(b_ref.at[cols]).astype(jnp.float32)

    def tile(i):
        rows = pl.ds(first_row + i * block_rows, block_rows)
        return rows, plgpu.load(z_ref.at[rows, cols]).astype(jnp.float32) + b[None, :]

    return cols, tile


def _forward_kernel(z_ref, b_ref, y_ref, **tiling):
    cols, tile = _tiles(z_ref, b_ref, **tiling)

    def step(i, carry):
        rows, h = tile(i)
        plgpu.store(y_ref.at[rows, cols], gelu_tanh(h).astype(y_ref.dtype))
        return carry

    jax.lax.fori_loop(0, tiling["group_rows"] // tiling["block_rows"], step, 0)


def _backward_kernel(z_ref, b_ref, dy_ref, dz_ref, db_ref, **tiling):
    cols, tile = _tiles(z_ref, b_ref, **tiling)

    def step(i, db_partial):
        rows, h = tile(i)
        dh = plgpu.load(dy_ref.at[rows, cols]).astype(jnp.float32) * gelu_tanh_derivative(h)
        plgpu.store(dz_ref.at[rows, cols], dh.astype(dz_ref.dtype))
        return db_partial + jnp.sum(dh, axis=0)

    db_partial = jax.lax.fori_loop(0, tiling["group_rows"] // tiling["block_rows"], step,
                                   jnp.zeros((tiling["block_cols"],), jnp.float32))
    plgpu.store(db_ref.at[pl.ds(pl.program_id(0), 1), cols], db_partial[None, :])


def _over_tiles(kernel, name: str, outputs, z_NxF: jax.Array, *operands: jax.Array):
    """`kernel` on a grid of (row group, column block) tiles of z (N x F); `outputs(n_groups)`
    gives the output shapes."""
    n_rows, width = z_NxF.shape
    block_cols = _power_of_two_dividing(width, BLOCK_COLS)
    group_rows = _power_of_two_dividing(n_rows, GROUP_ROWS)
    n_groups = n_rows // group_rows
    return pl.pallas_call(
        functools.partial(kernel, block_rows=min(group_rows, BLOCK_ROWS), group_rows=group_rows,
                          block_cols=block_cols),
        out_shape=outputs(n_groups), grid=(n_groups, width // block_cols),
        interpret=pallas.interpret(), name=name,
        compiler_params=plgpu.CompilerParams(num_warps=NUM_WARPS, num_stages=NUM_STAGES),
    )(z_NxF, *operands)


ROWS, COLUMNS = ("batch", "mlp"), ("mlp",)  # logical axes of z (tokens x width) and of b


def _backward_pass(z_NxF, b_F, dy_NxF):
    return _over_tiles(
        _backward_kernel, "bias_gelu_backward",
        lambda n_groups: (jax.ShapeDtypeStruct(z_NxF.shape, z_NxF.dtype),
                          jax.ShapeDtypeStruct((n_groups, z_NxF.shape[1]), jnp.float32)),
        z_NxF, b_F, dy_NxF)


def _forward_pass(z_NxF, b_F):
    return _over_tiles(_forward_kernel, "bias_gelu",
                       lambda _: jax.ShapeDtypeStruct(z_NxF.shape, z_NxF.dtype), z_NxF, b_F)


def bias_gelu_backward(z_NxF: jax.Array, b_F: jax.Array, dy_NxF: jax.Array
                       ) -> tuple[jax.Array, jax.Array]:
    """(d(z) in z's dtype, d(b) in fp32) for y = gelu_tanh(z + b), in one pass over z and dy
    (on a mesh, each device over its rows and columns; the partials' sum crosses devices)."""
    dz_NxF, db_partials_GxF = sharding.per_device(
        _backward_pass, (ROWS, COLUMNS, ROWS), (ROWS, ROWS))(z_NxF, b_F, dy_NxF)
    return dz_NxF, jnp.sum(db_partials_GxF, axis=0)


@jax.custom_vjp
def bias_gelu(z: jax.Array, b: jax.Array) -> jax.Array:
    """gelu_tanh(z + b) in z's dtype, computed in fp32; b (the last axis) keeps its own dtype
    for its gradient."""
    width = z.shape[-1]
    y = sharding.per_device(_forward_pass, (ROWS, COLUMNS), ROWS)(z.reshape(-1, width), b)
    return y.reshape(z.shape)


def _forward(z, b):
    return bias_gelu(z, b), (z, b)


def _backward(residuals, dy):
    z, b = residuals
    width = z.shape[-1]
    dz, db = bias_gelu_backward(z.reshape(-1, width), b, dy.reshape(-1, width))
    return dz.reshape(z.shape), db.astype(b.dtype)


bias_gelu.defvjp(_forward, _backward)
