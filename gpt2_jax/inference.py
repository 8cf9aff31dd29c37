"""A trained model for evaluation and sampling: restored from a run's checkpoint onto whatever
devices are present (8 GPUs, 1 GPU, 1 CPU), its config read from the checkpoint itself."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import ml_collections
from jax.sharding import Mesh

from gpt2_jax import sharding
from gpt2_jax.checkpoint import Checkpointer, restore_params
from gpt2_jax.config import ConfigError, model_config
from gpt2_jax.model import GPT
from gpt2_jax.train_step import init_params, param_logical_specs


@dataclasses.dataclass
class Trained:
    model: GPT
    params: Any
    config: ml_collections.ConfigDict  # the run's resolved config, as checkpointed
    step: int
    mesh: Mesh


def load_trained(workdir: str | Path, step: int | None = None) -> Trained:
    """The params of `step` (default: the newest) of the run in `workdir`, data-parallel over all
    devices (params replicated unless the run's rules split them over fsdp/tensor)."""
    directory = Path(workdir) / "checkpoints"
    if not directory.is_dir():
        raise ConfigError(f"{workdir}: no checkpoints/ directory (not a training run?)")
    checkpoints = Checkpointer(directory, read_only=True)
    available = list(checkpoints.manager.all_steps())
    step = checkpoints.latest_step() if step is None else step
    if step is None or step not in available:
        raise ConfigError(f"{directory}: no checkpoint for step {step} (available: {available})")
    config = ml_collections.ConfigDict(checkpoints.saved_config(step))
    checkpoints.close()
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    model = GPT(model_config(config))
    shardings = sharding.logical_sharding(param_logical_specs(model), mesh)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            jax.eval_shape(lambda rng: init_params(model, rng), jax.random.key(0)),
                            shardings)
    return Trained(model, restore_params(directory, step, abstract), config, step, mesh)
