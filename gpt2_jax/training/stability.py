"""The outlier guard (llm.c's -sl / -sg): skip an update whose loss or gradient norm is far above
the recent ones, and every update whose loss or gradients are not finite. It runs inside the
jitted step, so guarding costs no host round trip.

Z-scores compare a step's value with the last `window` finite values. As in llm.c, a skipped
outlier still enters the window: the window follows the run, so when the loss or gradient norm
moves to a new level and stays there (the gradient norm often rises as the lr decays), the guard
skips a few steps and then accepts the new level; a window that kept skipped values out would go
stale and skip every update from then on. Non-finite values never enter it. Like llm.c, the
guard starts judging once the window is full. A skipped step still advances the step count (and
so the lr schedule), but leaves params and optimizer state exactly as they were.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class GuardState:
    losses: jax.Array  # (window,) recent finite losses (a ring buffer)
    grad_norms: jax.Array  # (window,) their gradient norms
    filled: jax.Array  # values written so far (the window is full at `window`)
    skipped: jax.Array  # updates skipped since the run began
    bad_streak: jax.Array  # consecutive steps with non-finite loss or gradients


def init_guard(window: int) -> GuardState:
    zeros = jnp.zeros((window,), jnp.float32)
    return GuardState(losses=zeros, grad_norms=zeros, filled=jnp.zeros((), jnp.int32),
                      skipped=jnp.zeros((), jnp.int32), bad_streak=jnp.zeros((), jnp.int32))


def _zscore(values: jax.Array, x: jax.Array) -> jax.Array:
    return (x - jnp.mean(values)) / (jnp.std(values) + 1e-8)


def assess(guard: GuardState, loss: jax.Array, grad_norm: jax.Array, loss_threshold: float,
           grad_threshold: float) -> tuple[jax.Array, GuardState, dict]:
    """(skip this update?, the guard's next state, z-scores and flags for the logs)."""
    window = guard.losses.shape[0]
    full = guard.filled >= window
    loss_z = jnp.where(full, _zscore(guard.losses, loss), 0.0)
    grad_z = jnp.where(full, _zscore(guard.grad_norms, grad_norm), 0.0)
    nonfinite = ~(jnp.isfinite(loss) & jnp.isfinite(grad_norm))
    outlier = ((loss_threshold > 0) & (loss_z > loss_threshold)) | (
        (grad_threshold > 0) & (grad_z > grad_threshold))
    skip = nonfinite | outlier
    slot = guard.filled % window
    losses, grad_norms, filled = unless(  # non-finite values never enter the window
        nonfinite, (guard.losses.at[slot].set(loss), guard.grad_norms.at[slot].set(grad_norm),
                    guard.filled + 1), (guard.losses, guard.grad_norms, guard.filled))
    next_guard = GuardState(losses=losses, grad_norms=grad_norms, filled=filled,
                            skipped=guard.skipped + skip.astype(jnp.int32),
                            bad_streak=jnp.where(nonfinite, guard.bad_streak + 1, 0))
    return skip, next_guard, {"loss_zscore": loss_z, "grad_zscore": grad_z,
                              "skipped": next_guard.skipped, "bad_streak": next_guard.bad_streak}


def unless(skip: jax.Array, new, old):
    """`new` pytree, or `old` where the update is skipped."""
    return jax.tree.map(lambda n, o: jnp.where(skip, o, n), new, old)
