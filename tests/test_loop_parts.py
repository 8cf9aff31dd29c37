"""The trainer's parts that need no model: which checkpoint a run starts from (one routine for
resume, evaluation, sampling, export and fine-tuning) and which steps evaluate, save and log."""

from pathlib import Path

import ml_collections
import pytest

from gpt2_jax.errors import CheckpointError
from gpt2_jax.training.cadence import Cadence
from gpt2_jax.training.checkpoint import BrokenCheckpoint, newest_that_restores


class FakeCheckpoints:
    directory = Path("/run/checkpoints")

    def __init__(self, steps):
        self._steps = steps

    def steps(self):
        return sorted(self._steps, reverse=True)


def restore_unless(broken):
    def restore(step):
        if step in broken:
            raise BrokenCheckpoint(f"/run/checkpoints/{step}/state: damaged")
        return f"state {step}"
    return restore


def test_the_newest_that_restores_skips_broken_ones_newest_first_and_says_each():
    skipped = []
    found = newest_that_restores(FakeCheckpoints([3, 9, 6]), restore_unless({9, 6}),
                                 lambda step, reason: skipped.append((step, reason)))
    assert found == (3, "state 3")
    assert skipped == [(9, "/run/checkpoints/9/state: damaged"),
                       (6, "/run/checkpoints/6/state: damaged")]


def test_when_none_restores_it_is_one_error_with_the_advice():
    skipped = []
    with pytest.raises(CheckpointError, match=r"^no checkpoint in /run/checkpoints restores "
                                              r"\(steps 6, 3: the reasons above\); start over"):
        newest_that_restores(FakeCheckpoints([3, 6]), restore_unless({3, 6}),
                             lambda step, reason: skipped.append(step), advice="start over")
    assert skipped == [6, 3]
    with pytest.raises(CheckpointError, match=r"^no checkpoint in /run/checkpoints$"):
        newest_that_restores(FakeCheckpoints([]), restore_unless(set()), print)


def test_a_named_step_is_tried_alone_and_a_broken_one_is_an_error():
    def never(step, reason):
        raise AssertionError("a named step is never skipped")

    assert newest_that_restores(FakeCheckpoints([3, 6]), restore_unless({6}), never,
                                step=3) == (3, "state 3")
    with pytest.raises(CheckpointError, match=r"checkpoint step 6 does not restore: "
                                              r"/run/checkpoints/6/state: damaged"):
        newest_that_restores(FakeCheckpoints([3, 6]), restore_unless({6}), never, step=6)
    with pytest.raises(CheckpointError, match=r"no checkpoint for step 4 \(available: \[6, 3\]\)"):
        newest_that_restores(FakeCheckpoints([3, 6]), restore_unless(set()), never, step=4)


def test_another_error_stops_the_search_instead_of_skipping():
    def other_model(step):
        raise CheckpointError("another model shape")

    with pytest.raises(CheckpointError, match="another model shape"):
        newest_that_restores(FakeCheckpoints([3, 6]), other_model, lambda *a: None)


def train_settings(**every):
    return ml_collections.ConfigDict({
        "max_steps": 10, "log_every": 4, "eval_every": 5, "hellaswag_every": 0, "core_every": 3,
        "health_every": 4, "checkpoint_every": 6, **every})


def steps_where(cadence, what):
    return [s for s in range(cadence.first_step, cadence.max_steps + 1)
            if getattr(cadence.at(s), what)]


def test_evaluations_and_lines_come_at_their_cadence_and_at_the_last_step():
    cadence = Cadence.from_config(train_settings(), start_step=2, has_val_data=True)
    assert steps_where(cadence, "first") == [3]
    assert steps_where(cadence, "log") == [3, 4, 8, 10]
    assert steps_where(cadence, "val_loss") == [5, 10]
    assert steps_where(cadence, "core") == [3, 6, 9, 10]
    assert steps_where(cadence, "hellaswag") == []
    assert steps_where(cadence, "health") == [4, 8]  # not forced at the end
    assert steps_where(cadence, "save") == [6]  # the loop saves the last step itself
    assert steps_where(cadence, "pause") == [3, 4, 5, 6, 8, 9, 10]


def test_no_validation_data_means_no_validation_loss():
    cadence = Cadence.from_config(train_settings(), start_step=0, has_val_data=False)
    assert steps_where(cadence, "val_loss") == []
