"""Where a run starts: its own newest checkpoint that restores (a resume), or fresh weights from the
seed or from another run's checkpoint (`train.init_from`, fine-tuning). A checkpoint that does not
restore is set aside and the one before it tried; a checkpoint of another model is refused."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import ml_collections

from gpt2_jax.errors import CheckpointError
from gpt2_jax.training import metrics, run_history
from gpt2_jax.training.checkpoint import (MODEL_SHAPE_KEYS, BrokenCheckpoint, Checkpointer,
                                          check_same_model, describe_failure,
                                          newest_that_restores, restore_params, warn_broken)
from gpt2_jax.training.step import Training, TrainState
from gpt2_jax.training.workdir import set_aside_history, set_aside_previous_run


@dataclasses.dataclass
class Start:
    step: int  # the checkpoint step resumed from (0: a fresh start)
    state: TrainState
    events: list[dict]  # metrics.jsonl rows of what happened on the way (checkpoints set aside)


def open_checkpoints(c: ml_collections.ConfigDict, workdir: Path, say) -> Checkpointer:
    """The run's checkpoints (an earlier run's set aside first, with train.resume=False); what
    a kill left half-written, and broken ones set aside earlier, are said."""
    t = c.train
    if not t.resume:
        set_aside_previous_run(workdir, say)
    ckpt = Checkpointer(workdir / "checkpoints", keep=t.keep_checkpoints,
                        keep_period=t.keep_checkpoint_every)
    for path in ckpt.skipped:
        say(f"skipping incomplete checkpoint {path} (interrupted while being written)")
    run_history.report_broken(workdir, say)
    return ckpt


def starting_state(c: ml_collections.ConfigDict, training: Training, ckpt: Checkpointer,
                   train_batches, workdir: Path, say, is_main: bool) -> Start:
    """The state step 1 (or the step after the resumed one) trains from; a resume also sets
    the data iterator to the checkpoint's position and drops the later metrics rows."""
    if ckpt.latest_step() is not None:
        start = resume(ckpt, c, training.abstract_state(), train_batches, workdir, say)
        for line in metrics.truncate_rows(workdir, start.step):
            say(f"dropped line {line} of {workdir / 'metrics.jsonl'}: not a complete row "
                "(torn by a kill mid-write)")
        say(f"resumed from checkpoint step {start.step} in {ckpt.directory}")
        return start
    broken = run_history.broken_checkpoints(workdir)  # train.resume=False moved them aside
    if broken:  # every checkpoint was set aside: asked before, ask again
        ckpt.close()
        raise CheckpointError(
            f"no checkpoint in {ckpt.directory} restores: all {len(broken)} were set aside as "
            f"broken-*; to train from scratch, pass --config.train.resume=False, which moves "
            f"this run's checkpoints and metrics aside")
    if is_main:
        set_aside_history(workdir, say)
    state = training.init_state(c.train.seed)
    if c.train.init_from:
        params, source = weights_of(c.train.init_from, training.abstract_state().params, c, say)
        state = state.replace(params=params)
        say(f"initialized weights from {source} (fresh optimizer state)")
    return Start(0, state, [])


def resume(ckpt: Checkpointer, c: ml_collections.ConfigDict, abstract_state: TrainState,
           train_batches, workdir: Path, say) -> Start:
    """The newest checkpoint of this run that restores. When none does, the run stops rather
    than start over on its own: the user says so with train.resume=False."""
    set_aside = SetAside(ckpt, say)
    try:
        step, state = newest_that_restores(
            ckpt, functools.partial(_restore_for_resume, ckpt, c, abstract_state, train_batches,
                                    workdir),
            set_aside, advice="each is set aside as broken-*; to train from scratch, pass "
            "--config.train.resume=False, which moves this run's checkpoints and metrics aside")
    except CheckpointError:
        ckpt.close()
        raise
    return Start(step, state, set_aside.events)


def _restore_for_resume(ckpt: Checkpointer, c: ml_collections.ConfigDict, abstract_state,
                        train_batches, workdir: Path, step: int) -> TrainState:
    """The train state of `step`, with the data iterator set to where that step left it."""
    if step == 0:
        raise CheckpointError(f"{ckpt.directory} holds imported weights (a step-0 checkpoint "
                              f"without optimizer state); train from them with "
                              f"--config.train.init_from={workdir} and another --workdir")
    check_same_model(ckpt.saved_config(step), c, str(ckpt.directory))
    state, data_state = ckpt.restore(step, abstract_state)
    try:
        train_batches.set_state(data_state)
    except Exception as e:  # noqa: BLE001 - valid JSON, but not an iterator position
        raise BrokenCheckpoint(f"{ckpt.directory / str(step) / 'data'}: "
                               f"{describe_failure(e)}") from e
    return state


@dataclasses.dataclass
class SetAside:
    """What resuming does with a broken checkpoint: moves it aside (never deletes it), says so,
    and keeps an event row for metrics.jsonl."""

    ckpt: Checkpointer
    say: Any
    events: list[dict] = dataclasses.field(default_factory=list)

    def __call__(self, step: int, reason: str) -> None:
        moved = self.ckpt.set_aside(step)
        self.say(f"checkpoint step {step} is broken ({reason}); moved it to {moved}, resuming "
                 "from the newest checkpoint before it")
        self.events.append({"step": step, "event": "broken_checkpoint", "reason": reason,
                            "moved_to": str(moved)})


def weights_of(path: str, abstract_params, c: ml_collections.ConfigDict, say) -> tuple[Any, str]:
    """(params, which checkpoint) of the newest checkpoint that restores of another run (a
    workdir or its checkpoints/), whose model must have this config's shapes; its optimizer
    state is not read."""
    directory = Path(path)
    if (directory / "checkpoints").is_dir():
        directory = directory / "checkpoints"
    try:
        source = Checkpointer(directory, read_only=True)
        try:
            step, params = newest_that_restores(
                source, functools.partial(_restore_weights, source, c, abstract_params),
                functools.partial(warn_broken, say=say))
        finally:
            source.close()
    except CheckpointError as e:
        raise CheckpointError(f"train.init_from={path}: {e}") from None
    return params, f"{directory} step {step}"


def _restore_weights(source: Checkpointer, c: ml_collections.ConfigDict, abstract_params,
                     step: int):
    check_same_model(source.saved_config(step), c, str(source.directory), MODEL_SHAPE_KEYS)
    return restore_params(source.directory, step, abstract_params)
