"""The train state, its sharded creation, and the jitted train and eval steps."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from gpt2_jax.parallel import sharding
from gpt2_jax.training import stability
from gpt2_jax.config import RunPlan
from gpt2_jax.model import GPT, abstract_params, init_params, next_token_loss, param_logical_specs
from gpt2_jax.training.optim import lr_schedule, make_optimizer


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # optimizer steps taken (skipped updates included)
    params: Any  # float32 parameter pytree
    opt_state: Any  # the optimizer's moments (float32), sharded like the params
    guard: stability.GuardState  # recent losses / grad norms for the outlier guard


def state_shardings(model: GPT, tx: optax.GradientTransformation, mesh: Mesh,
                    guard_window: int, zero1: bool = False,
                    zero1_by_layers: bool = False) -> TrainState:
    """Shardings of every leaf of the train state: moments follow their params' logical axes
    (through the ZeRO-1 rules when `zero1`, see RunPlan), scalars are replicated."""
    specs = param_logical_specs(model)
    params = sharding.logical_sharding(specs, mesh)
    moments = sharding.logical_sharding(
        specs, mesh, sharding.optimizer_rules(zero1, zero1_by_layers))
    replicated = NamedSharding(mesh, P())
    # Partitioned optimizers (Muon's groups) hold MaskedNode placeholders where a group has no
    # state for a param: those stay as they are.
    masked = lambda leaf: isinstance(leaf, optax.MaskedNode)  # noqa: E731
    opt_state = optax.tree_map_params(
        tx, lambda leaf, s: leaf if masked(leaf) else s,
        jax.eval_shape(tx.init, abstract_params(model)), moments,
        transform_non_params=lambda _: replicated, is_leaf=masked)
    guard = jax.tree.map(lambda _: replicated,
                         jax.eval_shape(lambda: stability.init_guard(guard_window)))
    return TrainState(step=replicated, params=params, opt_state=opt_state, guard=guard)


def _init_state(model: GPT, tx: optax.GradientTransformation, rng: jax.Array,
                guard_window: int) -> TrainState:
    params = init_params(model, rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      guard=stability.init_guard(guard_window))


def create_train_state(model: GPT, tx: optax.GradientTransformation, shardings: TrainState,
                       seed: int, guard_window: int) -> TrainState:
    """A fresh state created directly on its shards (no full copy on any device or host)."""
    init = jax.jit(lambda rng: _init_state(model, tx, rng, guard_window), out_shardings=shardings)
    return init(jax.random.key(seed))


def abstract_train_state(model: GPT, tx: optax.GradientTransformation, shardings: TrainState,
                         guard_window: int) -> TrainState:
    """The state's shapes, dtypes and shardings, without allocating it (what restore needs)."""
    abstract = jax.eval_shape(lambda rng: _init_state(model, tx, rng, guard_window),
                              jax.random.key(0))
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, shardings)


def stacked_leaves(model: GPT) -> Any:
    """True for each param stacked on a leading "layers" axis (the blocks'), False elsewhere."""
    return jax.tree.map(lambda spec: len(spec) > 0 and spec[0] == "layers",
                        param_logical_specs(model), is_leaf=lambda x: isinstance(x, P))


def unstack_layers(tree: Any, stacked: Any) -> Any:
    """Each stacked leaf as a tuple of its per-layer slices; other leaves as they are."""
    return jax.tree.map(lambda s, x: tuple(x) if s else x, stacked, tree)


def stack_layers(tree: Any, stacked: Any) -> Any:
    """The inverse of unstack_layers."""
    return jax.tree.map(lambda s, x: jnp.stack(x) if s else x, stacked, tree)


def make_train_step(model: GPT, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    loss_chunk_size: int, grad_shardings: Any, loss_zscore: float = 0.0,
                    grad_zscore: float = 0.0, scatter_layers: bool = False) -> Callable:
    """(state, tokens[accum, batch, T+1]) -> (state, metrics); accumulates inside one jit.

    The outlier guard (stability.py) decides in the same jit whether the update is applied.
    The accumulated gradients are held in the params' layout (`grad_shardings`) inside and at
    both ends of the micro-step loop, so ZeRO-1's split moments reach neither the backward pass
    (each device would scatter the whole batch's embedding rows into its part of the table) nor
    the loop's carry (every micro-step would gather the whole accumulator again). The blocks'
    stacked gradients are accumulated layer by layer and stacked once, after the loop: summed
    into stacked accumulators, every micro-step would also concatenate the layers' gradients in
    a pass of its own.

    On a mesh split along `data` only (data parallelism, ZeRO-1) the micro-step loop runs per
    device, in a shard_map manual over the whole mesh: each device sums its own rows' gradients,
    and the sums are reduced once per step, in the compute dtype, as llm.c does, instead of an
    all-reduce in every micro-step. With `scatter_layers` (ZeRO-1 moments split by whole layers)
    the blocks' sums are reduce-scattered: each device gets the layers it updates. Meshes that
    also split along fsdp or tensor keep the partitioner's per-micro-step collectives: manual
    over `data` alone, XLA's SPMD partitioner (jax 0.10.2) aborted with a tensor axis, and cuDNN
    attention's custom partitioning failed on GPU (jax 0.11.2).
    """
    stacked = stacked_leaves(model)
    per_layer_specs = jax.tree.map(
        lambda s, sh: (P(*sh.spec[1:]),) * model.config.n_layer if s else sh.spec,
        stacked, grad_shardings)
    reduce_dtype = jnp.dtype(model.config.dtype)
    scattered = jax.tree.map(lambda s: s and scatter_layers, stacked)  # reduce-scattered by layers

    def summed_gradients(params, tokens_AxBxT1, all_manual=False):
        """The sum of the micro-steps' gradients (in the params' layout) and their losses;
        `all_manual`: run per device, where no layout is left to constrain."""
        def constrain(grads):
            return grads if all_manual else jax.lax.with_sharding_constraint(grads, per_layer_specs)

        with sharding.axis_rules(all_manual):
            def micro_step(grad_sum, tokens_BxT1):
                loss, grads = jax.value_and_grad(next_token_loss, argnums=1)(
                    model, params, tokens_BxT1, loss_chunk_size)
                grads = unstack_layers(grads, stacked)
                return constrain(jax.tree.map(jnp.add, grad_sum, grads)), loss

            zeros = constrain(unstack_layers(jax.tree.map(jnp.zeros_like, params), stacked))
            grad_sum, losses_A = jax.lax.scan(micro_step, zeros, tokens_AxBxT1)
            return stack_layers(constrain(grad_sum), stacked), losses_A

    def reduced_over_data(params, tokens_AxBxT1):
        """summed_gradients on each device's rows, reduced across `data` once."""
        def reduce(scatter, g):
            # Each device's loss is the mean over its rows: the step's is their mean.
            g_low = (g / jax.lax.axis_size("data")).astype(reduce_dtype)
            g_low = (jax.lax.psum_scatter(g_low, "data", scatter_dimension=0, tiled=True)
                     if scatter else jax.lax.psum(g_low, "data"))
            return g_low.astype(g.dtype)

        def local(params, tokens_AxBxT1):
            grad_sum, losses_A = summed_gradients(params, tokens_AxBxT1, all_manual=True)
            return (jax.tree.map(reduce, scattered, grad_sum),
                    jax.lax.pmean(losses_A, "data"))

        out_specs = (jax.tree.map(lambda s: P("data") if s else P(), scattered), P())
        return jax.shard_map(local, in_specs=(P(), P(None, "data", None)), out_specs=out_specs,
                             check_vma=False)(params, tokens_AxBxT1)

    def train_step(state: TrainState, tokens_AxBxT1: jax.Array):
        mesh_shape = jax.sharding.get_abstract_mesh().shape
        if mesh_shape.get("data", 1) > 1 and all(
                size == 1 for name, size in mesh_shape.items() if name != "data"):
            grad_sum, losses_A = reduced_over_data(state.params, tokens_AxBxT1)
        else:
            grad_sum, losses_A = summed_gradients(state.params, tokens_AxBxT1)
            grad_sum = jax.lax.with_sharding_constraint(grad_sum, grad_shardings)
        grads = jax.tree.map(lambda g: g / tokens_AxBxT1.shape[0], grad_sum)
        loss, grad_norm = jnp.mean(losses_A), optax.tree.norm(grads)
        skip, guard, guard_metrics = stability.assess(state.guard, loss, grad_norm,
                                                      loss_zscore, grad_zscore)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        params, opt_state = stability.unless(skip, (params, opt_state),
                                             (state.params, state.opt_state))
        new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                               guard=guard)
        metrics = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(state.step),
                   **guard_metrics}
        return new_state, metrics

    return train_step


def jit_train_step(train_step: Callable, shardings: TrainState, mesh: Mesh) -> Callable:
    """Compile with the state's shardings; the old state's buffers are donated to the new one."""
    return jax.jit(train_step, in_shardings=(shardings, sharding.batch_sharding(mesh)),
                   out_shardings=(shardings, NamedSharding(mesh, P())), donate_argnums=0)


def make_evaluator(model: GPT, mesh: Mesh, loss_chunk_size: int) -> Callable:
    """(params, host batches of tokens[batch, T+1]) -> their mean loss: every batch is dispatched
    to the jitted loss before any is read back."""
    batch_sharding = sharding.eval_batch_sharding(mesh)

    @functools.partial(jax.jit, in_shardings=(None, batch_sharding))
    def eval_step(params, tokens_BxT1):
        with sharding.axis_rules():
            return next_token_loss(model, params, tokens_BxT1, loss_chunk_size)

    def mean_loss(params, batches) -> float:
        losses = [eval_step(params, sharding.to_global_array(b, batch_sharding)) for b in batches]
        return float(np.mean(jax.device_get(losses)))

    return mean_loss


@dataclasses.dataclass(frozen=True)
class Training:
    """The model, optimizer, state shardings and jitted step of one config on one mesh: built
    one way for the trainer, the bench and the tests."""

    model: GPT
    tx: optax.GradientTransformation
    shardings: TrainState  # of every leaf of the state
    train_step: Callable  # jitted (state, tokens[accum, batch, T+1]) -> (state, metrics)
    guard_window: int

    def init_state(self, seed: int) -> TrainState:
        return create_train_state(self.model, self.tx, self.shardings, seed, self.guard_window)

    def abstract_state(self) -> TrainState:
        return abstract_train_state(self.model, self.tx, self.shardings, self.guard_window)


def build_training(c, mesh: Mesh, tx: optax.GradientTransformation | None = None,
                   plan: RunPlan | None = None) -> Training:
    """Everything the train step of config `c` needs on `mesh`, as `plan` (default: resolved
    here) says (`tx` replaces the configured optimizer, for tests)."""
    plan = plan or RunPlan.resolve(c, mesh)
    model = GPT(plan.model)
    tx = tx or make_optimizer(c.optim, c.train.max_steps)
    window = c.stability.window
    shardings = state_shardings(model, tx, mesh, window, plan.zero1, plan.zero1_by_layers)
    step = make_train_step(model, tx, lr_schedule(c.optim, c.train.max_steps),
                           c.train.loss_chunk_size, shardings.params, c.stability.loss_zscore,
                           c.stability.grad_zscore, scatter_layers=plan.zero1_by_layers)
    return Training(model, tx, shardings, jit_train_step(step, shardings, mesh), window)
