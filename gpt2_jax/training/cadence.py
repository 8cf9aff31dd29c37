"""Which steps do more than train: a log line, an evaluation, a checkpoint, a health report. The
line and the evaluations also come at the last step, so that every run ends measured."""

from __future__ import annotations

import dataclasses

import ml_collections


@dataclasses.dataclass(frozen=True)
class Due:
    """What one step does beside training."""

    first: bool  # the run's first step: its line reports the compilation on its own
    log: bool
    val_loss: bool
    hellaswag: bool
    core: bool
    health: bool
    save: bool

    @property
    def evaluation(self) -> bool:
        return self.val_loss or self.hellaswag or self.core

    @property
    def pause(self) -> bool:
        """The loop waits for this step and works off the device's clock (evaluates, saves)."""
        return self.evaluation or self.health or self.save


@dataclasses.dataclass(frozen=True)
class Cadence:
    """The `train.*_every` settings of one run (0: never), from its first step to its last."""

    first_step: int
    max_steps: int
    log_every: int
    eval_every: int  # 0 as well where the run has no validation data
    hellaswag_every: int
    core_every: int
    health_every: int
    checkpoint_every: int

    @classmethod
    def from_config(cls, t: ml_collections.ConfigDict, start_step: int,
                    has_val_data: bool) -> Cadence:
        return cls(first_step=start_step + 1, max_steps=t.max_steps, log_every=t.log_every,
                   eval_every=t.eval_every if has_val_data else 0,
                   hellaswag_every=t.hellaswag_every, core_every=t.core_every,
                   health_every=t.health_every, checkpoint_every=t.checkpoint_every)

    def at(self, step: int) -> Due:
        def every(n: int) -> bool:
            return bool(n) and step % n == 0

        def every_and_last(n: int) -> bool:
            return every(n) or (bool(n) and step == self.max_steps)

        return Due(first=step == self.first_step,
                   log=step == self.first_step or every_and_last(self.log_every),
                   val_loss=every_and_last(self.eval_every),
                   hellaswag=every_and_last(self.hellaswag_every),
                   core=every_and_last(self.core_every),
                   health=every(self.health_every), save=every(self.checkpoint_every))
