"""What a run measures of its weights while it trains, beside the train loss: validation loss,
HellaSwag, CORE and the activation-health report, each a metrics.jsonl row and a console line.
Their data are found and tokenized before the first step, so a missing file fails the run at once
rather than at its first evaluation."""

from __future__ import annotations

import jax
import ml_collections
from jax.sharding import Mesh

from gpt2_jax.errors import ConfigError, EvalDataError
from gpt2_jax.evaluation import core, hellaswag
from gpt2_jax.model import GPT
from gpt2_jax.training import metrics
from gpt2_jax.training.cadence import Due
from gpt2_jax.training.health import health_line, make_health_fn
from gpt2_jax.training.step import make_evaluator


def hellaswag_examples(c: ml_collections.ConfigDict) -> list[hellaswag.Rendered]:
    """The HellaSwag examples scored every `train.hellaswag_every` steps, tokenized once."""
    if not c.train.hellaswag_every:
        return []
    try:
        path = hellaswag.find_or_download(c.train.hellaswag_file or None)
    except EvalDataError as e:
        raise ConfigError(f"train.hellaswag_every={c.train.hellaswag_every} needs HellaSwag: {e}; "
                          "or set train.hellaswag_file, or train.hellaswag_every=0") from None
    return hellaswag.load(path)


def core_tasks(c: ml_collections.ConfigDict) -> core.Prepared | None:
    """The CORE rows scored every `train.core_every` steps, tokenized once (a malformed bundle
    fails here too)."""
    if not c.train.core_every:
        return None
    try:
        tasks = core.load_bundle(core.find_or_download(c.train.core_bundle or None),
                                 c.train.core_max_per_task)
    except EvalDataError as e:
        raise ConfigError(f"train.core_every={c.train.core_every} needs the CORE eval bundle: "
                          f"{e}; or set train.core_bundle, or train.core_every=0") from None
    return core.prepare(tasks, c.model.block_size)


class Evals:
    """The evaluations of one model on one mesh over the data they score (val_batches None: no
    validation loss)."""

    def __init__(self, model: GPT, mesh: Mesh, c: ml_collections.ConfigDict, val_batches,
                 hellaswag_set: list[hellaswag.Rendered], core_set: core.Prepared | None,
                 log: metrics.MetricsLog, say):
        self.model, self.mesh, self.max_steps = model, mesh, c.train.max_steps
        self.val_batches, self.hellaswag_set, self.core_set = val_batches, hellaswag_set, core_set
        self.log, self.say = log, say
        self.validation_loss = make_evaluator(model, mesh, c.train.loss_chunk_size)
        self.health = make_health_fn(model)

    def evaluate(self, step: int, params, due: Due) -> dict:
        """The row of the evaluations `due` at `step` (written, and returned)."""
        row: dict = {"step": step}
        where = f"step {step}/{self.max_steps}"
        if due.val_loss:
            row["val_loss"] = self.validation_loss(params, self.val_batches)
            self.say(f"{where} | val loss {row['val_loss']:.4f}")
        if due.hellaswag:
            row.update(hellaswag.evaluate(self.model, params, self.hellaswag_set, self.mesh))
            self.say(f"{where} | HellaSwag acc_norm {row['hellaswag_acc']:.4f} "
                     f"({len(self.hellaswag_set)} examples)")
        if due.core:
            row.update(core.evaluate(self.model, params, self.core_set, self.mesh))
            self.say(f"{where} | CORE {row['core']:.4f} ({len(self.core_set.tasks)} tasks)")
        self.log.write(row)
        return row

    def report_health(self, step: int, params, batch) -> None:
        """Activation and parameter health on the step's batch (see health.py)."""
        report = jax.device_get(self.health(params, batch))
        self.say(health_line(step, report))
        self.log.write({"step": step, **report})
