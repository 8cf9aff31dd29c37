"""Parallelism in one place: the device mesh and the logical-axis rules table.

The model names the axes of every parameter and activation ("embed", "mlp", ...); the table below
maps those names onto mesh axes. Changing the parallelism is editing this table, not the model.

Mesh axes: `data` (replicated params, split batch), `fsdp` (split batch *and* params/optimizer
state, ZeRO-3), `tensor` (split heads, MLP width and vocabulary). We build meshes with Auto axis
types: XLA propagates shardings from the parameters, the batch and the constraints the model places
on its activations, so no op needs an explicit out_sharding.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from gpt2_jax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis (or axes). Rules are tried in order; a mesh axis already used by an
# earlier dimension of the same array is skipped (so an activation's "embed" stays unsharded once
# its "batch" has taken fsdp).
LOGICAL_AXIS_RULES = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("embed", "fsdp"),
    ("kv", None),
    ("length", None),
    ("layers", None),
)


def optimizer_rules(zero1: bool, split_layers: bool = False) -> tuple:
    """Rules for the AdamW moments. With ZeRO-1 (llm.c's -z 1) they are also split over the data
    axis, while the params stay as the table says (replicated over data). Where `split_layers`
    (the data axis divides n_layer), the stacked blocks split by whole layers: each device updates
    its layers and the step's all-gather of the params joins contiguous halves. Split along
    "embed", a middle axis of the stacked kernels, the gather needed a transposed copy of every
    kernel on each side. Other params (the
    embeddings, ln_f) split along "embed"."""
    if not zero1:
        return LOGICAL_AXIS_RULES
    rules = tuple((name, ("fsdp", "data")) if name == "embed" else (name, axes)
                  for name, axes in LOGICAL_AXIS_RULES)
    if not split_layers:
        return rules
    # Rules are tried in order and skip mesh axes already taken: a stacked kernel's "layers"
    # takes data first, and its "embed" falls back to fsdp alone.
    return (("layers", "data"), *rules, ("embed", "fsdp"))


def mesh_shape(mesh_config, n_devices: int) -> tuple[int, int, int]:
    """Resolve -1 ("all remaining devices") and check the mesh covers exactly `n_devices`."""
    sizes = [int(mesh_config[axis]) for axis in MESH_AXES]
    fixed = math.prod(s for s in sizes if s != -1)
    if sizes.count(-1) > 1:
        raise ConfigError("at most one of mesh.data, mesh.fsdp, mesh.tensor may be -1")
    if -1 in sizes:
        if n_devices % fixed:
            raise ConfigError(f"mesh {dict(zip(MESH_AXES, sizes))} does not fit {n_devices} devices: "
                             f"{n_devices} is not a multiple of {fixed}")
        sizes[sizes.index(-1)] = n_devices // fixed
    if math.prod(sizes) != n_devices:
        raise ConfigError(f"mesh.data x mesh.fsdp x mesh.tensor = {' x '.join(map(str, sizes))} = "
                         f"{math.prod(sizes)}, but there are {n_devices} devices")
    return tuple(sizes)


def make_mesh(mesh_config, devices=None) -> Mesh:
    """The (data, fsdp, tensor) mesh over all devices of all processes (or `devices`)."""
    devices = jax.devices() if devices is None else list(devices)
    axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    return jax.make_mesh(mesh_shape(mesh_config, len(devices)), MESH_AXES,
                         axis_types=axis_types, devices=devices)


def batch_parallelism(mesh: Mesh) -> int:
    """How many ways the batch is split (the data-parallel degree)."""
    return mesh.shape["data"] * mesh.shape["fsdp"]


@dataclasses.dataclass(frozen=True)
class BatchLayout:
    """How `train.total_batch_size` tokens per step split over devices and micro-steps."""

    micro_batch: int  # sequences per data-parallel device per micro-step (train.micro_batch_size)
    accum_steps: int  # micro-steps accumulated per optimizer step
    global_micro_batch: int  # sequences per micro-step, all devices
    local_micro_batch: int  # sequences per micro-step fed by this process

    @classmethod
    def from_config(cls, c, mesh: Mesh) -> "BatchLayout":
        return cls.split(c.train, batch_parallelism(mesh), jax.process_count())

    @classmethod
    def split(cls, t, batch_ways: int, processes: int = 1) -> "BatchLayout":
        """The layout of config section `t` (train) over `batch_ways` data-parallel devices in
        `processes` processes; a step that is not whole micro-steps is a ConfigError."""
        global_micro = t.micro_batch_size * batch_ways
        micro_tokens = global_micro * t.seq_len
        if t.total_batch_size <= 0 or t.total_batch_size % micro_tokens:
            raise ConfigError(
                f"train.total_batch_size ({t.total_batch_size}) must be a multiple of "
                f"train.micro_batch_size x data-parallel devices x train.seq_len = "
                f"{t.micro_batch_size} x {batch_ways} x {t.seq_len} = {micro_tokens}")
        return cls(micro_batch=t.micro_batch_size, accum_steps=t.total_batch_size // micro_tokens,
                   global_micro_batch=global_micro, local_micro_batch=global_micro // processes)


def logical_sharding(logical_specs, mesh: Mesh, rules: tuple = LOGICAL_AXIS_RULES):
    """A pytree of logical PartitionSpecs -> NamedShardings through the rules table."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of an (accum, batch, seq_len + 1) token batch: rows over the batch axes."""
    return NamedSharding(mesh, P(None, ("data", "fsdp"), None))


def eval_batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of a (batch, seq_len + 1) token batch."""
    return NamedSharding(mesh, P(("data", "fsdp"), None))


def axis_rules(all_manual: bool = False):
    """Context in which the model's logical activation constraints take effect (inside jit).
    `all_manual`: inside a shard_map manual over every mesh axis, where each device works on its
    own rows and nothing is split further, so every logical axis maps to no mesh axis."""
    return nn.logical_axis_rules(tuple((name, None) for name, _ in LOGICAL_AXIS_RULES)
                                 if all_manual else LOGICAL_AXIS_RULES)


def per_device(fn: Callable, in_axes: tuple, out_axes) -> Callable:
    """`fn` applied to each device's shard of its operands: for kernels that have no SPMD
    partitioning rule (the Pallas ones), a shard_map over the mesh in context (`jax.set_mesh`),
    operands' and results' shardings named as logical axes and resolved by the rules table.
    `fn` itself without a mesh of several devices in context, inside a shard_map already manual
    over the whole mesh, or for operands the mesh does not divide (the 1-token trace that builds
    the params)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1 or mesh.are_all_axes_manual:
        return fn

    def spec(axes: tuple) -> P:
        return nn.logical_to_mesh_axes(axes, LOGICAL_AXIS_RULES)

    def devices_along(entry) -> int:
        names = () if entry is None else (entry,) if isinstance(entry, str) else entry
        return math.prod(mesh.shape[name] for name in names)

    in_specs = tuple(spec(axes) for axes in in_axes)
    out_specs = (spec(out_axes) if isinstance(out_axes[0], str)
                 else tuple(spec(axes) for axes in out_axes))
    sharded = jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                            check_vma=False)

    def run(*operands):
        divides = all(size % devices_along(entry) == 0 for x, s in zip(operands, in_specs)
                      for size, entry in zip(x.shape, s))
        return (sharded if divides else fn)(*operands)

    return run


def to_global_array(local_batch: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """This process's rows of a batch -> one global array (works for one or many processes)."""
    return jax.make_array_from_process_local_data(sharding, local_batch)
