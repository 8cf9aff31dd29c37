"""The residual add and the LayerNorm after it as Pallas (Triton) kernels, as llm.c fuses them.

Every block adds a branch (attention, MLP) and its output projection's bias to the residual
stream and normalizes the sum for the next branch. XLA makes that three or four passes over
activation-sized arrays in the forward (the bias add, the residual add, the statistics, the
normalization) and, in the backward, a row pass plus separate column reductions for the gains
and the branch's bias. Here the forward reads x and the branch once and writes the new residual,
its normalization and the per-row statistics; the backward reads the residual, the normalized
output's gradient and the residual's own gradient once and writes their sum's gradient, with the
column sums (gains, branch bias) left as one fp32 partial per group of rows that XLA adds up (a
partial per program instead was what made an earlier all-Pallas LayerNorm slower).

Rows are split over programs; each program holds whole rows (the width padded to a power of
two, masked), since the statistics need the full row. On a mesh each device runs the kernels on
its own rows (sharding.per_device). Off GPU they run in Pallas' interpreter (tests compare them
with the jnp formula and with autodiff).
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from gpt2_jax.ops import pallas
from gpt2_jax.parallel import sharding

EPS = 1e-5  # GPT-2's (and flax's) LayerNorm epsilon
# The tiling: the fastest of a sweep (docs/benchmarks/ has it). Loads of 16,384 elements or more
# computed wrong values (NaN) on a GPU, so rows wider than one load are refused.
ROW_ELEMENTS = 8192  # elements per load: 8 rows of 768 (padded to 1024), 4 of 1600 (to 2048)
GROUP_ROWS = 256  # rows summed into one partial of the column sums (backward)
MAX_WIDTH = ROW_ELEMENTS  # the widest row (model.n_embd) the kernels take
NUM_STAGES = 1

# Logical axes: (tokens, width) arrays split by rows, (width,) vectors whole, per-row statistics.
ROWS, VECTOR, STATS = ("batch", None), (None,), ("batch",)


def _layout(width: int) -> tuple[int, int, int]:
    """(padded width, rows per load, warps) for rows of `width` elements."""
    padded = pl.next_power_of_2(width)
    return padded, max(1, min(ROW_ELEMENTS // padded, GROUP_ROWS)), 4 if padded <= 1024 else 8


def _block(first_row, n_rows: int, width: int):
    """Indices and mask of the rows first_row.. of one load (every column of each), and the
    rows alone with their mask."""
    padded, rows_per_load, _ = _layout(width)
    rows = first_row + jnp.arange(rows_per_load)
    cols = jnp.arange(padded)
    row_ok = rows < n_rows
    return (rows[:, None], cols[None, :]), row_ok[:, None] & (cols < width)[None, :], rows, row_ok


def _vector32(ref, width: int):
    """A (width,) vector in fp32, padded with zeros to the power of two."""
    cols = jnp.arange(pl.next_power_of_2(width))
    return plgpu.load(ref.at[cols], mask=cols < width, other=0.0).astype(jnp.float32)


def _load32(ref, index, mask):
    return plgpu.load(ref.at[index], mask=mask, other=0.0).astype(jnp.float32)


def _forward_kernel(x_ref, h_ref, hb_ref, g_ref, b_ref, s_ref, y_ref, mean_ref, rstd_ref):
    n_rows, width = x_ref.shape
    _, rows_per_load, _ = _layout(width)
    index, ok, rows, row_ok = _block(pl.program_id(0) * rows_per_load, n_rows, width)
    h = _load32(h_ref, index, ok) + _vector32(hb_ref, width)[None, :]
    s = (_load32(x_ref, index, ok) + h).astype(s_ref.dtype)
    plgpu.store(s_ref.at[index], s, mask=ok)
    s = s.astype(jnp.float32)  # normalize the residual as stored, as the unfused model does
    mean = jnp.sum(s, axis=1) / width
    centered = jnp.where(ok, s - mean[:, None], 0.0)
    rstd = jax.lax.rsqrt(jnp.sum(centered * centered, axis=1) / width + EPS)
    gain, bias = _vector32(g_ref, width), _vector32(b_ref, width)
    y = centered * rstd[:, None] * gain[None, :] + bias[None, :]
    plgpu.store(y_ref.at[index], y.astype(y_ref.dtype), mask=ok)
    plgpu.store(mean_ref.at[rows], mean, mask=row_ok)
    plgpu.store(rstd_ref.at[rows], rstd, mask=row_ok)


def _backward_kernel(s_ref, g_ref, mean_ref, rstd_ref, dy_ref, ds_ref, dx_ref, dhb_ref, dg_ref,
                     db_ref):
    n_rows, width = s_ref.shape
    padded, rows_per_load, _ = _layout(width)
    g = _vector32(g_ref, width)
    group = pl.program_id(0)  # read outside the loop: Pallas' interpreter allows it only there

    def step(i, partials):
        first = group * GROUP_ROWS + i * rows_per_load
        index, ok, rows, row_ok = _block(first, n_rows, width)
        mean = plgpu.load(mean_ref.at[rows], mask=row_ok, other=0.0)
        rstd = plgpu.load(rstd_ref.at[rows], mask=row_ok, other=0.0)
        xhat = jnp.where(ok, (_load32(s_ref, index, ok) - mean[:, None]) * rstd[:, None], 0.0)
        dy = _load32(dy_ref, index, ok)
        dxhat = dy * g[None, :]
        mean_dxhat = jnp.sum(dxhat, axis=1) / width
        mean_dxhat_xhat = jnp.sum(dxhat * xhat, axis=1) / width
        dx = ((dxhat - mean_dxhat[:, None] - xhat * mean_dxhat_xhat[:, None]) * rstd[:, None]
              + _load32(ds_ref, index, ok))
        plgpu.store(dx_ref.at[index], dx.astype(dx_ref.dtype), mask=ok)
        dhb, dg, db = partials
        return dhb + jnp.sum(dx, axis=0), dg + jnp.sum(dy * xhat, axis=0), db + jnp.sum(dy, axis=0)

    zeros = jnp.zeros((padded,), jnp.float32)
    partials = jax.lax.fori_loop(0, GROUP_ROWS // rows_per_load, step, (zeros,) * 3)
    cols = jnp.arange(padded)
    for ref, partial in zip((dhb_ref, dg_ref, db_ref), partials):
        plgpu.store(ref.at[group, cols], partial, mask=cols < width)


def _call(kernel, name: str, programs: int, width: int, out_shape, *operands):
    return pl.pallas_call(
        kernel, out_shape=out_shape, grid=(programs,), interpret=pallas.interpret(), name=name,
        compiler_params=plgpu.CompilerParams(num_warps=_layout(width)[2], num_stages=NUM_STAGES),
    )(*operands)


def _forward_pass(x_NxD, h_NxD, hb_D, g_D, b_D):
    n_rows, width = x_NxD.shape
    rows = jax.ShapeDtypeStruct((n_rows,), jnp.float32)
    return _call(_forward_kernel, "add_layer_norm", pl.cdiv(n_rows, _layout(width)[1]), width,
                 (jax.ShapeDtypeStruct(x_NxD.shape, x_NxD.dtype),
                  jax.ShapeDtypeStruct(x_NxD.shape, x_NxD.dtype), rows, rows),
                 x_NxD, h_NxD, hb_D, g_D, b_D)


def _backward_pass(s_NxD, g_D, mean_N, rstd_N, dy_NxD, ds_NxD):
    n_rows, width = s_NxD.shape
    groups = pl.cdiv(n_rows, GROUP_ROWS)
    partials = jax.ShapeDtypeStruct((groups, width), jnp.float32)
    return _call(_backward_kernel, "add_layer_norm_backward", groups, width,
                 (jax.ShapeDtypeStruct(s_NxD.shape, ds_NxD.dtype), partials, partials, partials),
                 s_NxD, g_D, mean_N, rstd_N, dy_NxD, ds_NxD)


def add_layer_norm(x: jax.Array, h: jax.Array, h_bias: jax.Array, gain: jax.Array,
                   bias: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(s, LayerNorm(s)) for s = x + (h + h_bias) over the last axis: the residual stream after a
    branch and its bias are added, and the next branch's input, both in x's dtype; statistics in
    fp32, of s as stored. The branch's bias comes in apart so that its add, and its gradient's
    reduction, happen here rather than in passes of their own."""
    if x.shape[-1] > MAX_WIDTH:
        raise ValueError(f"norm_kernel.add_layer_norm takes rows of at most {MAX_WIDTH} channels, "
                         f"not {x.shape[-1]} (wider loads compute wrong values)")
    return _add_layer_norm(x, h.astype(x.dtype), h_bias, gain, bias)


@jax.custom_vjp
def _add_layer_norm(x, h, h_bias, gain, bias):
    return _forward(x, h, h_bias, gain, bias)[0]


def _forward(x, h, h_bias, gain, bias):
    width = x.shape[-1]
    s, y, mean, rstd = sharding.per_device(
        _forward_pass, (ROWS, ROWS, VECTOR, VECTOR, VECTOR), (ROWS, ROWS, STATS, STATS))(
        x.reshape(-1, width), h.reshape(-1, width), h_bias, gain, bias)
    return (s.reshape(x.shape), y.reshape(x.shape)), (s, h_bias, gain, bias, mean, rstd)


def _backward(residuals, cotangents):
    s, h_bias, gain, bias, mean, rstd = residuals
    ds, dy = cotangents
    width = s.shape[-1]
    dx, *partials = sharding.per_device(
        _backward_pass, (ROWS, VECTOR, STATS, STATS, ROWS, ROWS), (ROWS, ROWS, ROWS, ROWS))(
        s, gain, mean, rstd, dy.reshape(-1, width), ds.reshape(-1, width))
    dx = dx.reshape(ds.shape)
    return (dx, dx, *(jnp.sum(p, axis=0).astype(v.dtype)
                      for p, v in zip(partials, (h_bias, gain, bias))))


_add_layer_norm.defvjp(_forward, _backward)
