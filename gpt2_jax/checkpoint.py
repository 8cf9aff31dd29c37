"""Orbax checkpoints of a run: train state, data-iterator position and the resolved config.

Layout: `<workdir>/checkpoints/<step>/{state,data,config}`. Orbax writes each checkpoint into a
temporary directory and renames it into place once complete, so a crash mid-write leaves the
previous checkpoint as the newest usable one. Saves are asynchronous: the train loop blocks only
while the arrays are copied off the devices.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from pathlib import Path
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from jax.sharding import Mesh

from gpt2_jax import sharding
from gpt2_jax.config import ConfigError, model_config
from gpt2_jax.model import GPT, abstract_params, param_logical_specs


def _not_read_only_chatter(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return "read_only" not in message and "directory is read only" not in message


@contextlib.contextmanager
def _quiet_read_only():
    """Opening a checkpoint directory read-only makes orbax warn about the options it overrides:
    silence those lines while we do, and only those."""
    logger = logging.getLogger("absl")
    logger.addFilter(_not_read_only_chatter)
    try:
        yield
    finally:
        logger.removeFilter(_not_read_only_chatter)

# Keys that fix the params' shapes: a checkpoint and a config taking its weights must agree.
MODEL_SHAPE_KEYS = ("model.n_layer", "model.n_head", "model.n_embd", "model.vocab_size",
                    "model.block_size")
# ... and the whole train state's: a checkpoint and the config resuming it must agree.
SHAPE_KEYS = (*MODEL_SHAPE_KEYS, "stability.window")


def incomplete_checkpoints(directory: Path) -> list[Path]:
    """Checkpoint directories orbax never committed (a crash or kill mid-write)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_dir() and "tmp" in p.name)


class Checkpointer:
    """Saves and restores one run's checkpoints (every `train.checkpoint_every` steps)."""

    def __init__(self, directory: str | Path, keep: int = 3, keep_period: int = 0,
                 read_only: bool = False):
        self.directory = Path(directory).absolute()
        if read_only and not self.directory.is_dir():
            raise FileNotFoundError(f"no checkpoints directory at {self.directory}")
        self.skipped = incomplete_checkpoints(self.directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, keep_period=keep_period or None, create=not read_only,
            read_only=read_only, enable_async_checkpointing=True,
            cleanup_tmp_directories=not read_only)
        with _quiet_read_only():
            self.manager = ocp.CheckpointManager(self.directory, options=options,
                                                 item_names=("state", "data", "config"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_state: dict,
             config: ml_collections.ConfigDict) -> None:
        """Start an asynchronous save; returns once the arrays are off the devices."""
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state),
            config=ocp.args.JsonSave(config.to_dict())), force=True)

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict, dict]:
        """(state, data-iterator state, config dict) of `step`, laid out as `abstract_state` says
        (its ShapeDtypeStructs carry the target shardings: any mesh, one CPU included)."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=ocp.args.JsonRestore(),
            config=ocp.args.JsonRestore()))
        return restored.state, restored.data, restored.config

    def saved_config(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(
            config=ocp.args.JsonRestore())).config

    def wait(self) -> None:
        """Block until every pending save is on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def restore_params(directory: str | Path, step: int, abstract: Any) -> Any:
    """Only the params of a checkpoint (not the optimizer state), laid out as `abstract_params`
    says: evaluation, sampling and fine-tuning need a third of the memory a full restore does."""
    with _quiet_read_only():
        manager = ocp.CheckpointManager(
            Path(directory).absolute(), options=ocp.CheckpointManagerOptions(read_only=True),
            item_handlers={"state": ocp.PyTreeCheckpointHandler()})
    target = {"params": abstract}
    try:
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True)))
    finally:
        manager.close()
    return restored.state["params"]


def save_params(directory: str | Path, step: int, params: Any,
                config: ml_collections.ConfigDict) -> None:
    """A params-only checkpoint (imported weights): `restore_params` reads it, as evaluation,
    sampling and `train.init_from` do; resuming training from it is refused (no optimizer)."""
    manager = ocp.CheckpointManager(Path(directory).absolute(), item_names=("state", "config"))
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave({"params": params}),
                                               config=ocp.args.JsonSave(config.to_dict())))
    manager.wait_until_finished()
    manager.close()


def check_same_model(saved: dict, config: ml_collections.ConfigDict, where: str,
                     keys: tuple[str, ...] = SHAPE_KEYS) -> None:
    """Refuse a checkpoint whose shapes (of `keys`) disagree with the config, naming the keys."""
    diffs = []
    for key in keys:
        section, name = key.split(".")
        theirs, ours = saved[section][name], config[section][name]
        if theirs != ours:
            diffs.append(f"{key}: checkpoint {theirs} vs config {ours}")
    if diffs:
        raise ConfigError(f"the checkpoint in {where} has another model shape ("
                          + "; ".join(diffs) + "); use its settings or another workdir")


@dataclasses.dataclass
class Trained:
    """A run's weights restored for evaluation, sampling or export."""

    model: GPT
    params: Any
    config: ml_collections.ConfigDict  # the run's resolved config, as checkpointed
    step: int
    mesh: Mesh


def load_trained(workdir: str | Path, step: int | None = None) -> Trained:
    """The params of `step` (default: the newest) of the run in `workdir`, data-parallel over all
    devices present (8 GPUs, 1 GPU, 1 CPU), the model built from the checkpoint's own config."""
    directory = Path(workdir) / "checkpoints"
    if not directory.is_dir():
        raise ConfigError(f"{workdir}: no checkpoints/ directory (not a training run?)")
    checkpoints = Checkpointer(directory, read_only=True)
    try:
        available = list(checkpoints.manager.all_steps())
        step = checkpoints.latest_step() if step is None else step
        if step is None or step not in available:
            raise ConfigError(f"{directory}: no checkpoint for step {step} "
                              f"(available: {available})")
        config = ml_collections.ConfigDict(checkpoints.saved_config(step))
    finally:
        checkpoints.close()
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    model = GPT(model_config(config))
    shardings = sharding.logical_sharding(param_logical_specs(model), mesh)
    params = restore_params(directory, step, abstract_params(model, shardings))
    return Trained(model, params, config, step, mesh)
