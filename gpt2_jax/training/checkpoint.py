"""Orbax checkpoints of a run: train state, data-iterator position and the resolved config.

Layout: `<workdir>/checkpoints/<step>/{state,data,config}`. Orbax writes each checkpoint into a
temporary directory and renames it into place once complete, so a crash mid-write leaves the
previous checkpoint as the newest usable one. Saves are asynchronous: the train loop blocks only
while the arrays are copied off the devices. A checkpoint damaged later (a file truncated,
overwritten or deleted) fails to restore: the trainer moves it aside to
`checkpoints/broken-<step>-<time>/` and resumes from the next newest; evaluation and sampling fall
back to the next newest without touching the run. A save the disk has no room for (checked before
it starts, or found when orbax's write fails) stops the run in one line, its partial files removed
and the newest complete checkpoint kept.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import inspect
import logging
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

import jax
import ml_collections
import orbax.checkpoint as ocp
from jax.sharding import Mesh

from gpt2_jax.parallel import sharding
from gpt2_jax.config import model_config
from gpt2_jax.errors import CheckpointError, DiskFullError
from gpt2_jax.model import GPT, abstract_params, param_logical_specs
from gpt2_jax.ops import kernels


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


class BrokenCheckpoint(Exception):
    """A checkpoint item (state, data or config) that does not restore: damaged or missing
    files. The message is the item's path and what failed."""


# The file each item's restore starts from: orbax's own error when it is missing does not name it.
ITEM_METADATA = {"state": "_METADATA", "data": "metadata", "config": "metadata"}


def _restore_item(manager: ocp.CheckpointManager, step: int, item: str, args) -> Any:
    """One item of checkpoint `step`; any failure to read it raises BrokenCheckpoint (a failure
    for want of memory is not the checkpoint's fault and propagates as it is)."""
    metadata = Path(manager.directory) / str(step) / item / ITEM_METADATA[item]
    if not metadata.is_file():
        raise BrokenCheckpoint(f"{metadata}: missing")
    try:
        with _silenced_leftovers():
            return getattr(manager.restore(step, args=ocp.args.Composite(**{item: args})), item)
    except Exception as e:  # noqa: BLE001 - orbax, tensorstore and json fail in many ways
        if is_out_of_memory(e):
            raise
        path = Path(manager.directory) / str(step) / item
        raise BrokenCheckpoint(f"{path}: {describe_failure(e)}") from e


class Checkpointer:
    """Saves and restores one run's checkpoints (every `train.checkpoint_every` steps)."""

    def __init__(self, directory: str | Path, keep: int = 3, keep_period: int = 0,
                 read_only: bool = False):
        self.directory = Path(directory).absolute()
        if read_only and not self.directory.is_dir():
            raise CheckpointError(f"no checkpoints directory at {self.directory}")
        self.skipped = incomplete_checkpoints(self.directory)
        self._writing = None  # the step of the newest save started
        # A background save that fails (a full disk) does so on orbax's threads, which print
        # tracebacks while training goes on; the failure itself is raised by the next save.
        self._quiet = contextlib.ExitStack()
        if not read_only:
            self._quiet.enter_context(_silenced_leftovers())
        with _quiet_read_only():
            options = ocp.CheckpointManagerOptions(
                max_to_keep=keep, keep_period=keep_period or None, create=not read_only,
                read_only=read_only, enable_async_checkpointing=True,
                cleanup_tmp_directories=not read_only)
            self.manager = ocp.CheckpointManager(self.directory, options=options,
                                                 item_names=("state", "data", "config"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def steps(self) -> list[int]:
        """The steps of the complete checkpoints, newest first."""
        return sorted(self.manager.all_steps(), reverse=True)

    def set_aside(self, step: int) -> Path:
        """Move a broken checkpoint out of the way, never deleting it; returns where it went."""
        target = self.directory / f"broken-{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        if jax.process_index() == 0:
            (self.directory / str(step)).rename(target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"checkpoint {step} set aside")
        self.manager.reload()
        return target

    def save(self, step: int, state: Any, data_state: dict,
             config: ml_collections.ConfigDict) -> None:
        """Start an asynchronous save; returns once the arrays are off the devices. Refuses,
        before writing anything, a save the disk has no room for; a save that runs out of room
        anyway (the previous one, still in the background, or this one) raises DiskFullError
        here or in `wait`, its partial files removed."""
        # The previous, background save ends first (orbax's save would wait for it anyway), so
        # its failure names its own step, and a refusal below names what the disk holds then.
        with self._disk_full_as_error(self._writing or step):
            self.manager.wait_until_finished()
            self.manager.check_for_errors()
        needed = sum(leaf.nbytes for leaf in jax.tree.leaves(state))
        free = shutil.disk_usage(self.directory).free
        if needed > free:
            raise DiskFullError(self._disk_full_message(step, needed, free, written=False))
        self._writing = step
        with self._disk_full_as_error(step):
            self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(data_state),
                config=ocp.args.JsonSave(config.to_dict())), force=True)

    @contextlib.contextmanager
    def _disk_full_as_error(self, step: int):
        """An orbax failure for want of space -> DiskFullError, with the partial checkpoint
        removed."""
        try:
            yield
        except Exception as e:  # noqa: BLE001 - orbax wraps tensorstore's error in several ways
            if not is_disk_full(e):
                raise
            self._quiet.pop_all()  # orbax's leftovers of the failure stay silent
            for partial in incomplete_checkpoints(self.directory):
                shutil.rmtree(partial, ignore_errors=True)
            failed = re.search(r"/(\d+)\.orbax-checkpoint-tmp", str(e))  # orbax names the path
            raise DiskFullError(self._disk_full_message(
                int(failed.group(1)) if failed else step, None,
                shutil.disk_usage(self.directory).free, written=True)) from None

    def _disk_full_message(self, step: int, needed: int | None, free: int, written: bool) -> str:
        # From the disk: orbax lists a step from the moment its save starts, failed or not.
        newest = max((int(p.name) for p in self.directory.iterdir() if p.name.isdigit()),
                     default=None)
        kept = (f"the newest complete checkpoint, step {newest}, is kept" if newest is not None
                else "no checkpoint was complete yet")
        return (f"disk full: {_mount_point(self.directory)} (holding {self.directory}) has "
                f"{free / 2**30:.2f} GiB free"
                + (f", and checkpoint step {step} needs about {needed / 2**30:.2f} GiB"
                   if needed else f"; checkpoint step {step} ran out of space while written")
                + ("; removed its partial files" if written else "")
                + f". Training stopped rather than go on without checkpoints ({kept}); free "
                "space (or lower train.keep_checkpoints) and run the same command to resume")

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """(state, data-iterator state) of `step`, laid out as `abstract_state` says (its
        ShapeDtypeStructs carry the target shardings: any mesh, one CPU included)."""
        state = _restore_item(self.manager, step, "state",
                              ocp.args.StandardRestore(abstract_state))
        return state, _restore_item(self.manager, step, "data", ocp.args.JsonRestore())

    def saved_config(self, step: int) -> dict:
        return _restore_item(self.manager, step, "config", ocp.args.JsonRestore())

    def wait(self) -> None:
        """Block until every pending save is on disk."""
        with self._disk_full_as_error(self._writing):
            self.manager.wait_until_finished()

    def close(self) -> None:
        try:
            self.manager.close()
        except Exception as e:  # noqa: BLE001 - a failed save, already raised by save or wait
            if not is_disk_full(e):
                raise
        self._quiet.close()


def restore_params(directory: str | Path, step: int, abstract: Any) -> Any:
    """Only the params of a checkpoint (not the optimizer state), laid out as `abstract_params`
    says: evaluation, sampling and fine-tuning need a third of the memory a full restore does."""
    with _quiet_read_only():
        manager = ocp.CheckpointManager(
            Path(directory).absolute(), options=ocp.CheckpointManagerOptions(read_only=True),
            item_handlers={"state": ocp.PyTreeCheckpointHandler()})
    target = {"params": abstract}
    try:
        state = _restore_item(manager, step, "state", ocp.args.PyTreeRestore(
            item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True))
    finally:
        manager.close()
    return state["params"]


def save_params(directory: str | Path, step: int, params: Any,
                config: ml_collections.ConfigDict) -> None:
    """A params-only checkpoint (imported weights): `restore_params` reads it, as evaluation,
    sampling and `train.init_from` do; resuming training from it is refused (no optimizer)."""
    manager = ocp.CheckpointManager(Path(directory).absolute(), item_names=("state", "config"))
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave({"params": params}),
                                               config=ocp.args.JsonSave(config.to_dict())))
    manager.wait_until_finished()
    manager.close()


def describe_failure(error: BaseException) -> str:
    """One line saying what failed, from the innermost cause (tensorstore's and orbax's name the
    file and what is wrong with it)."""
    while error.__cause__ is not None:
        error = error.__cause__
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:300] if lines else 'no message'}"


def _is_leftover(unraisable) -> bool:
    """An error orbax's unfinished work prints from other threads after an operation failed:
    future callbacks on a closed event loop, never-awaited coroutines."""
    closed_loop = (isinstance(unraisable.exc_value, RuntimeError)
                   and str(unraisable.exc_value) == "Event loop is closed")
    return closed_loop or inspect.iscoroutine(unraisable.object)


@contextlib.contextmanager
def _silenced_leftovers():
    """Around an orbax operation whose failure the caller reports in one line: its unfinished
    work dies on other threads and prints tracebacks (and logs each failure again), some of
    them later. They are silenced while the operation runs and, if it failed, for the rest of
    the process."""
    loggers = [logging.getLogger(name) for name in ("asyncio", "concurrent.futures")]
    disabled = [logger.disabled for logger in loggers]
    absl = logging.getLogger("absl")
    unraisable_hook = sys.unraisablehook

    def drop_leftovers(unraisable):
        if not _is_leftover(unraisable):
            unraisable_hook(unraisable)

    for logger in loggers:
        logger.disabled = True
    absl.addFilter(_not_a_failure_raised_here)
    sys.unraisablehook = drop_leftovers
    yield  # an exception propagates, and the silence stays
    for logger, was_disabled in zip(loggers, disabled):
        logger.disabled = was_disabled
    absl.removeFilter(_not_a_failure_raised_here)
    sys.unraisablehook = unraisable_hook


def _not_a_failure_raised_here(record: logging.LogRecord) -> bool:
    """orbax logs, at ERROR, each failure of its threads that it then raises to the caller (the
    caller reports a full disk, or a damaged checkpoint, in one line)."""
    if record.levelno < logging.ERROR:
        return True
    error = record.exc_info[1] if record.exc_info else None
    return not ("raised an exception" in record.getMessage()
                or (error is not None and is_disk_full(error)))


def is_out_of_memory(error: BaseException) -> bool:
    """A restore that failed for want of memory says nothing about the checkpoint."""
    return isinstance(error, MemoryError) or ("RESOURCE_EXHAUSTED" in str(error)
                                              and not is_disk_full(error))


def is_disk_full(error: BaseException) -> bool:
    """An OSError ENOSPC, or orbax's / tensorstore's wrapping of one (which keeps only its text)."""
    while error is not None:
        if getattr(error, "errno", None) == errno.ENOSPC or "No space left on device" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def _mount_point(path: Path) -> Path:
    """The mount point of the file system holding `path` (what `df` names)."""
    path = path.resolve()
    while not os.path.ismount(path):
        path = path.parent
    return path


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
        raise CheckpointError(f"the checkpoint in {where} has another model shape ("
                          + "; ".join(diffs) + "); use its settings or another workdir")


T = TypeVar("T")


def newest_that_restores(checkpoints: Checkpointer, restore: Callable[[int], T],
                         on_broken: Callable[[int, str], None], step: int | None = None,
                         advice: str = "") -> tuple[int, T]:
    """(step, `restore(step)`) of the newest checkpoint that restores: resuming, evaluating,
    sampling, exporting and fine-tuning all start from it. Each broken one on the way (its
    `restore` raised BrokenCheckpoint) goes to `on_broken(step, reason)`, which says so (and may
    set it aside, never delete it), and the next newest is tried; any other error (another
    model's checkpoint) stops the search. With `step`, only that checkpoint is tried, and a
    broken one is an error naming it. When none restores, one error, ending in `advice`."""
    available = checkpoints.steps()
    if step is not None and step not in available:
        raise CheckpointError(f"{checkpoints.directory}: no checkpoint for step {step} "
                              f"(available: {available})")
    for candidate in available if step is None else [step]:
        try:
            return candidate, restore(candidate)
        except BrokenCheckpoint as e:
            if step is not None:
                raise CheckpointError(f"checkpoint step {step} does not restore: {e}") from None
            on_broken(candidate, str(e))
    steps = ", ".join(map(str, available))
    found = f" restores (steps {steps}: the reasons above)" if available else ""
    raise CheckpointError(f"no checkpoint in {checkpoints.directory}{found}"
                          + (f"; {advice}" if advice else ""))


@dataclasses.dataclass
class Trained:
    """A run's weights restored for evaluation, sampling or export."""

    model: GPT
    params: Any
    config: ml_collections.ConfigDict  # the run's resolved config, as checkpointed
    step: int
    mesh: Mesh


def load_trained(workdir: str | Path, step: int | None = None) -> Trained:
    """The params of `step` (default: the newest that restores) of the run in `workdir`,
    data-parallel over all devices present (8 GPUs, 1 GPU, 1 CPU), the model built from the
    checkpoint's own config. A broken newest checkpoint is reported on stderr and skipped; a
    broken `step` is an error naming it and what failed. The run is never modified."""
    directory = Path(workdir) / "checkpoints"
    if not directory.is_dir():
        raise CheckpointError(f"{workdir}: no checkpoints/ directory (not a training run?)")
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    checkpoints = Checkpointer(directory, read_only=True)
    try:
        return newest_that_restores(checkpoints, functools.partial(_restore_trained, checkpoints,
                                                                   mesh), warn_broken, step)[1]
    finally:
        checkpoints.close()


def _restore_trained(checkpoints: Checkpointer, mesh: Mesh, step: int) -> Trained:
    config = ml_collections.ConfigDict(checkpoints.saved_config(step))
    # The Pallas kernels are the run's speed choice, not part of its weights: chosen again for
    # this mesh (and absent from checkpoints older than their keys).
    for key in kernels.KERNEL_KEYS:
        config.model[key] = "auto"
    model = GPT(model_config(config, devices=mesh.size, tensor=mesh.shape["tensor"]))
    shardings = sharding.logical_sharding(param_logical_specs(model), mesh)
    params = restore_params(checkpoints.directory, step, abstract_params(model, shardings))
    return Trained(model, params, config, step, mesh)


def warn_broken(step: int, reason: str, say: Callable[[str], None] | None = None) -> None:
    """What a reader of a run (evaluation, sampling, export, fine-tuning) does with a broken
    checkpoint: says so (on stderr unless told) and leaves the run as it is."""
    line = f"checkpoint step {step} is broken ({reason}); trying the next newest"
    if say is None:
        print(line, file=sys.stderr)
    else:
        say(line)
