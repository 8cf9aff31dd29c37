"""A decode step's attention, one new token per row over a KV cache, as one Pallas (Triton) kernel.

XLA computes it as a chain of small kernels (two cache scatters, the scores, the softmax's max and
sum, the weighted values, converts), each bound by latency at decode sizes, and over a bucket of
positions that the longest row sets. Here one program per (row, head) writes the row's new key
and value into the cache in place, reads only the positions that row has filled, in blocks, with
FlashAttention's online softmax, and writes the output. Off GPU it runs in Pallas' interpreter,
which tests compare with the plain formula.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from gpt2_jax.ops import pallas

BLOCK = 64  # cache positions per load


def _kernel(positions_ref, qkv_ref, keys_in_ref, values_in_ref, y_ref, keys_ref, values_ref):
    del keys_in_ref, values_in_ref  # the same buffers as keys_ref and values_ref (aliased)
    row, head = pl.program_id(0), pl.program_id(1)
    head_dim = qkv_ref.shape[-1]
    cols = jnp.arange(head_dim)
    position = plgpu.load(positions_ref.at[row])
    q, k, v = (plgpu.load(qkv_ref.at[row, i, head, cols]) for i in range(3))
    # The new token's own key and value: they start the softmax's running state, and are
    # written at `position`, which the loop below does not read.
    q32 = q.astype(jnp.float32) * (1.0 / head_dim ** 0.5)
    plgpu.store(keys_ref.at[row, position, head, cols], k)
    plgpu.store(values_ref.at[row, position, head, cols], v)
    m = jnp.sum(q32 * k.astype(jnp.float32))
    state = (m, jnp.float32(1.0), v.astype(jnp.float32))

    def block(j, state):
        m, l, acc = state
        positions = j * BLOCK + jnp.arange(BLOCK)
        filled = positions < position
        index = (row, positions[:, None], head, cols[None, :])
        k = plgpu.load(keys_ref.at[index], mask=filled[:, None], other=0.0).astype(jnp.float32)
        s = jnp.where(filled, jnp.sum(k * q32[None, :], axis=1), -jnp.inf)
        m_new = jnp.maximum(m, jnp.max(s))
        p = jnp.exp(s - m_new)
        scale = jnp.exp(m - m_new)
        v = plgpu.load(values_ref.at[index], mask=filled[:, None], other=0.0).astype(jnp.float32)
        return m_new, l * scale + jnp.sum(p), acc * scale + jnp.sum(p[:, None] * v, axis=0)

    _, l, acc = jax.lax.fori_loop(0, pl.cdiv(position, BLOCK), block, state)
    plgpu.store(y_ref.at[row, head, cols], (acc / l).astype(y_ref.dtype))


def supports(head_dim: int) -> bool:
    """Whether the kernel takes heads of this size (a power of two, for Triton's loads)."""
    return head_dim >= 16 and head_dim & (head_dim - 1) == 0


def decode_attention(qkv_Bx3xHxK: jax.Array, keys_BxSxHxK: jax.Array, values_BxSxHxK: jax.Array,
                     positions_B: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Row b's query attends over cache positions [0, positions_B[b]], its own key and value
    (qkv[b, 1], qkv[b, 2]) written at positions_B[b] first. Returns the output (B, H, K) in
    the cache's dtype and the updated cache (in place when the caller donates it)."""
    B, _, H, K = qkv_Bx3xHxK.shape
    return pl.pallas_call(
        _kernel, grid=(B, H), name="decode_attention", interpret=pallas.interpret(),
        out_shape=(jax.ShapeDtypeStruct((B, H, K), qkv_Bx3xHxK.dtype),
                   jax.ShapeDtypeStruct(keys_BxSxHxK.shape, keys_BxSxHxK.dtype),
                   jax.ShapeDtypeStruct(values_BxSxHxK.shape, values_BxSxHxK.dtype)),
        input_output_aliases={2: 1, 3: 2},
        compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=2),
    )(positions_B.astype(jnp.int32), qkv_Bx3xHxK.astype(keys_BxSxHxK.dtype), keys_BxSxHxK,
      values_BxSxHxK)
