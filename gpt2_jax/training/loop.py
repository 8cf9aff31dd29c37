"""The training loop: data, state (fresh, resumed or fine-tuned), jitted steps, evaluation,
checkpoints, preemption, logging and the closing sample."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import queue
import signal
import threading
import time
from pathlib import Path

import jax
import ml_collections

from gpt2_jax import tokenizer
from gpt2_jax.evaluation import hellaswag
from gpt2_jax.parallel import sharding
from gpt2_jax.training import metrics, run_history
from gpt2_jax.training.checkpoint import (MODEL_SHAPE_KEYS, BrokenCheckpoint, Checkpointer,
                                 check_same_model, describe_failure, restore_params)
from gpt2_jax.config import RunPlan
from gpt2_jax.data.sources import make_data
from gpt2_jax.errors import CheckpointError, ConfigError, EvalDataError, TrainingDiverged
from gpt2_jax.training.health import health_line, make_health_fn
from gpt2_jax.inference import complete
from gpt2_jax.evaluation import core
from gpt2_jax.model import count_params, flops_per_token
from gpt2_jax.training.step import build_training, make_evaluator
from gpt2_jax.training.workdir import (WorkdirLock, open_workdir, set_aside_history,
                              set_aside_previous_run)


def hellaswag_examples(c: ml_collections.ConfigDict) -> list[hellaswag.Rendered]:
    """The HellaSwag examples scored every `train.hellaswag_every` steps, tokenized once (and
    found before training starts, so a missing file fails the run at once)."""
    if not c.train.hellaswag_every:
        return []
    try:
        path = hellaswag.find_or_download(c.train.hellaswag_file or None)
    except EvalDataError as e:
        raise ConfigError(f"train.hellaswag_every={c.train.hellaswag_every} needs HellaSwag: {e}; "
                          "or set train.hellaswag_file, or train.hellaswag_every=0") from None
    return hellaswag.load(path)


def core_tasks(c: ml_collections.ConfigDict) -> core.Prepared | None:
    """The CORE rows scored every `train.core_every` steps, tokenized once (and found before
    training starts, so a missing or malformed bundle fails the run at once)."""
    if not c.train.core_every:
        return None
    try:
        tasks = core.load_bundle(core.find_or_download(c.train.core_bundle or None),
                                 c.train.core_max_per_task)
    except EvalDataError as e:
        raise ConfigError(f"train.core_every={c.train.core_every} needs the CORE eval bundle: "
                          f"{e}; or set train.core_bundle, or train.core_every=0") from None
    return core.prepare(tasks, c.model.block_size)


def restore_params_from(path: str, abstract_params, c: ml_collections.ConfigDict):
    """Params of the newest checkpoint of another run (a workdir or its checkpoints/)."""
    directory = Path(path)
    if (directory / "checkpoints").is_dir():
        directory = directory / "checkpoints"
    source = Checkpointer(directory, read_only=True)
    try:
        step = source.latest_step()
        if step is None:
            raise CheckpointError(f"train.init_from: no checkpoint in {directory}")
        check_same_model(source.saved_config(step), c, str(directory), MODEL_SHAPE_KEYS)
    finally:
        source.close()
    return restore_params(directory, step, abstract_params), f"{directory} step {step}"


class ReadyClock:
    """When each watched step finished on the device, as seen by a thread that does nothing but
    wait for it. The loop itself is often busy when a step finishes (reading the next batch,
    dispatching the next step), and a step's time must not include that."""

    def __init__(self):
        self._watched: queue.SimpleQueue = queue.SimpleQueue()
        self._finished: dict[int, float] = {}
        self._changed = threading.Condition()
        threading.Thread(target=self._wait_for_steps, daemon=True, name="ready-clock").start()

    @staticmethod
    def now() -> float:
        return time.perf_counter()

    def watch(self, step: int, arrays) -> None:
        self._watched.put((step, arrays))

    def finished_at(self, step: int) -> float:
        with self._changed:
            self._changed.wait_for(lambda: step in self._finished)
            return self._finished.pop(step)

    def stop(self) -> None:
        self._watched.put(None)

    def _wait_for_steps(self) -> None:
        while (watched := self._watched.get()) is not None:
            step, arrays = watched
            try:
                jax.block_until_ready(arrays)
            except Exception:  # noqa: BLE001 - the loop's own read of the step reports the error
                pass
            with self._changed:
                self._finished[step] = time.perf_counter()
                self._changed.notify_all()


class StepLog:
    """Reads step metrics back from the device one step late, so the device always has the next
    step queued, and turns them into console lines and metrics.jsonl rows. Each line's step time
    is the mean over the steps since the previous line (or since the last pause)."""

    def __init__(self, log: metrics.MetricsLog, say, max_steps: int, tokens_per_step: int,
                 flops_per_step: float, start_time: float, max_bad_steps: int,
                 clock: ReadyClock | None = None):
        self.log, self.say, self.max_steps = log, say, max_steps
        self.max_bad_steps, self.skipped = max_bad_steps, 0
        self.tokens_per_step, self.flops_per_step = tokens_per_step, flops_per_step
        self.device, self.n_devices = jax.local_devices()[0], jax.device_count()
        self.clock = clock or ReadyClock()
        self.pending = None  # (step, metrics) dispatched but not yet read
        self.last_step, self.last_time = None, start_time  # the step the next line's time starts at
        self.first_loss = self.last_loss = self.compile_seconds = None

    def dispatched(self, step: int, step_metrics, log_now: bool) -> None:
        self.flush()
        if log_now:
            self.clock.watch(step, step_metrics)
            self.pending = (step, step_metrics)

    def flush(self) -> None:
        """Read back the pending step (this waits for it to finish)."""
        if self.pending is None:
            return
        step, step_metrics = self.pending
        self.pending = None
        values = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
        finished = self.clock.finished_at(step)
        first = self.last_step is None
        if first:  # compilation dominates the first step: report it as such
            self.compile_seconds = finished - self.last_time
            self.say(f"compiled and ran step {step} in {self.compile_seconds:.1f} s")
            step_seconds = float("nan")
        else:
            step_seconds = (finished - self.last_time) / (step - self.last_step)
        self.last_step, self.last_time = step, finished
        self.first_loss = values["loss"] if self.first_loss is None else self.first_loss
        self.last_loss = values["loss"]
        tokens_per_sec = self.tokens_per_step / step_seconds
        mfu = metrics.mfu(self.flops_per_step / step_seconds, self.n_devices, self.device)
        if not first:
            self.say(metrics.step_line(step, self.max_steps, values["loss"], values["grad_norm"],
                                       values["lr"], 1000 * step_seconds, tokens_per_sec, mfu))
        self.log.write({"step": step, "loss": values["loss"], "lr": values["lr"],
                        "grad_norm": values["grad_norm"], "tokens_per_sec": tokens_per_sec,
                        "mfu": mfu, "skipped": int(values["skipped"]),
                        "loss_zscore": values["loss_zscore"], "grad_zscore": values["grad_zscore"]})
        if values["skipped"] > self.skipped:
            self.say(f"step {step}: the guard skipped {int(values['skipped']) - self.skipped} "
                     f"update(s) since the last line (loss or grad-norm z-score over its threshold, "
                     f"or non-finite); {int(values['skipped'])} in all")
            self.skipped = int(values["skipped"])
        if values["bad_streak"] >= self.max_bad_steps:
            raise TrainingDiverged(
                f"stopping at step {step}: {int(values['bad_streak'])} consecutive steps with "
                "non-finite loss or gradients (stability.max_bad_steps); none of them changed the "
                "weights, and no checkpoint holds non-finite values")

    def pause_clock(self, step: int) -> None:
        """Exclude time spent outside train steps (evaluation, checkpoints) from step times: the
        next line's time starts now, at `step` (finished, since the pause waited for it)."""
        self.last_step, self.last_time = step, self.clock.now()


@contextlib.contextmanager
def _closing(ckpt: Checkpointer, log: metrics.MetricsLog, steps: StepLog):
    """Finish pending checkpoint writes and flush the logs, whatever ends the loop."""
    try:
        yield
    finally:
        ckpt.wait()
        ckpt.close()
        log.close()
        steps.clock.stop()


class StopSignal:
    """SIGTERM / SIGINT (a scheduler's preemption notice, Ctrl-C) ask the loop to stop cleanly."""

    def __init__(self):
        self.received = None

    def __enter__(self):
        self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


@dataclasses.dataclass
class TrainResult:
    """What one call of `train` did; also written to <workdir>/summary.json."""

    start_step: int  # the checkpoint step it resumed from (0: a fresh start)
    last_step: int  # the last step trained (start_step: there was nothing to do)
    stopped_by: str | None = None  # SIGTERM / SIGINT if a signal stopped it before max_steps
    first_loss: float | None = None
    final_loss: float | None = None
    final_val_loss: float | None = None
    compile_seconds: float | None = None  # the first step, compilation included
    wall_seconds: float = 0.0
    params: int | None = None
    peak_memory_gib: float | None = None


def resume_newest_good(ckpt: Checkpointer, c: ml_collections.ConfigDict, abstract_state,
                       train_batches, say) -> tuple[int, object, list[dict]]:
    """(step, state, events) of the newest checkpoint that restores, the data iterator set to its
    position. Each broken one on the way is moved aside, said in one line and returned as an
    event row; a checkpoint of another model is refused, not skipped. When none restores, the
    run stops rather than start over on its own: the user says so with train.resume=False."""
    events = []
    while step := ckpt.latest_step():
        try:
            check_same_model(ckpt.saved_config(step), c, str(ckpt.directory))
            state, data_state = ckpt.restore(step, abstract_state)
            try:
                train_batches.set_state(data_state)
            except Exception as e:  # noqa: BLE001 - valid JSON, but not an iterator position
                raise BrokenCheckpoint(f"{ckpt.directory / str(step) / 'data'}: "
                                       f"{describe_failure(e)}") from e
            return step, state, events
        except BrokenCheckpoint as e:
            reason = str(e)
        moved = ckpt.set_aside(step)
        say(f"checkpoint step {step} is broken ({reason}); moved it to {moved}, resuming from "
            "the newest checkpoint before it")
        events.append({"step": step, "event": "broken_checkpoint", "reason": reason,
                       "moved_to": str(moved)})
    ckpt.close()
    raise CheckpointError(f"no checkpoint in {ckpt.directory} restores (each is set aside as "
                          "broken-*, the reasons above); to train from scratch, pass "
                          "--config.train.resume=False, which moves this run's checkpoints and "
                          "metrics aside")


def train(c: ml_collections.ConfigDict, workdir: str | Path) -> TrainResult:
    """Train as configured in `workdir`, resuming from its newest good checkpoint if it has one.

    Writes metrics.jsonl, config.json, checkpoints/ and summary.json. The workdir is checked
    before any work and locked for the run (process 0 holds the lock for all processes).
    """
    is_main = jax.process_index() == 0
    say = (lambda *a: print(*a, flush=True)) if is_main else (lambda *a: None)
    workdir = open_workdir(workdir) if is_main else Path(workdir)
    say(f"workdir: {workdir.absolute()}")
    with WorkdirLock(workdir, say) if is_main else contextlib.nullcontext():
        return _train(c, workdir, say, is_main)


def _train(c: ml_collections.ConfigDict, workdir: Path, say, is_main: bool) -> TrainResult:
    start_time = time.perf_counter()
    t = c.train

    mesh = sharding.make_mesh(c.mesh)
    plan = RunPlan.resolve(c, mesh)
    layout = plan.batch
    train_batches, val_batches = make_data(c, workdir, layout, say)
    hellaswag_set = hellaswag_examples(c)
    core_set = core_tasks(c)

    if not t.resume:
        set_aside_previous_run(workdir, say)
    ckpt = Checkpointer(workdir / "checkpoints", keep=t.keep_checkpoints,
                        keep_period=t.keep_checkpoint_every)
    for path in ckpt.skipped:
        say(f"skipping incomplete checkpoint {path} (interrupted while being written)")
    run_history.report_broken(workdir, say)
    if ckpt.latest_step() == 0:
        ckpt.close()
        raise CheckpointError(f"{ckpt.directory} holds imported weights (a step-0 checkpoint "
                              f"without optimizer state); train from them with "
                              f"--config.train.init_from={workdir} and another --workdir")

    start_step = ckpt.latest_step() or 0
    if start_step >= t.max_steps:
        ckpt.close()
        say(f"nothing to do: {ckpt.directory} is at step {start_step} and train.max_steps is "
            f"{t.max_steps}; raise train.max_steps to train further")
        return TrainResult(start_step=start_step, last_step=start_step)

    with jax.set_mesh(mesh):
        training = build_training(c, mesh, plan=plan)
        model, train_step = training.model, training.train_step
        abstract_state = training.abstract_state()
        events = []
        if start_step:
            start_step, state, events = resume_newest_good(ckpt, c, abstract_state,
                                                           train_batches, say)
            for line in metrics.truncate_rows(workdir, start_step):
                say(f"dropped line {line} of {workdir / 'metrics.jsonl'}: not a complete row "
                    "(torn by a kill mid-write)")
            say(f"resumed from checkpoint step {start_step} in {ckpt.directory}")
        elif is_main:
            set_aside_history(workdir, say)
        if not start_step:
            state = training.init_state(t.seed)
            if t.init_from:
                params, source = restore_params_from(t.init_from, abstract_state.params, c)
                state = state.replace(params=params)
                say(f"initialized weights from {source} (fresh optimizer state)")

        n_params = count_params(state.params)
        health = make_health_fn(model)
        validation_loss = make_evaluator(model, mesh, t.loss_chunk_size)
        say(f"model: {model.config.n_layer} layers, {model.config.n_head} heads, "
            f"{model.config.n_embd} channels, {n_params:,} parameters, compute "
            f"{model.config.dtype}, attention {model.config.attention}, remat {model.config.remat}")
        say(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind} "
            f"({jax.process_count()} process(es)), mesh {dict(mesh.shape)}")
        say(f"batch: {t.total_batch_size:,} tokens/step = {layout.accum_steps} micro-step(s) x "
            f"{layout.global_micro_batch} sequences x {t.seq_len} tokens")
        if is_main:
            run_history.record_config(workdir, c, start_step,
                                      ckpt.saved_config(start_step) if start_step else None, say)

        log = metrics.MetricsLog(workdir, enabled=is_main, tensorboard=t.tensorboard)
        for event in events:
            log.write(event)
        flops_per_step = flops_per_token(model.config, n_params, t.seq_len) * t.total_batch_size
        steps = StepLog(log, say, t.max_steps, t.total_batch_size, flops_per_step,
                        time.perf_counter(), c.stability.max_bad_steps)
        batch_sharding = sharding.batch_sharding(mesh)
        val_loss = None

        def evaluate(step: int, loss_due: bool, hellaswag_due: bool, core_due: bool) -> dict:
            """One eval row: validation loss, HellaSwag and/or CORE of the current weights."""
            row: dict = {"step": step}
            if loss_due:
                row["val_loss"] = validation_loss(state.params, val_batches)
                say(f"step {step}/{t.max_steps} | val loss {row['val_loss']:.4f}")
            if hellaswag_due:
                row.update(hellaswag.evaluate(model, state.params, hellaswag_set, mesh))
                say(f"step {step}/{t.max_steps} | HellaSwag acc_norm {row['hellaswag_acc']:.4f} "
                    f"({len(hellaswag_set)} examples)")
            if core_due:
                row.update(core.evaluate(model, state.params, core_set, mesh))
                say(f"step {step}/{t.max_steps} | CORE {row['core']:.4f} "
                    f"({len(core_set.tasks)} tasks)")
            log.write(row)
            return row

        def save(step: int) -> None:
            started = time.perf_counter()
            ckpt.save(step, state, train_batches.get_state(), c)
            say(f"checkpoint step {step}: training blocked {1000 * (time.perf_counter() - started):.0f} ms "
                "(written in the background)")

        def report_health(step: int, batch) -> None:
            report = jax.device_get(health(state.params, batch))
            say(health_line(step, report))
            log.write({"step": step, **report})

        step = start_step
        with StopSignal() as stop, _closing(ckpt, log, steps):
            for step in range(start_step + 1, t.max_steps + 1):
                batch = sharding.to_global_array(next(train_batches), batch_sharding)
                state, step_metrics = train_step(state, batch)
                steps.dispatched(step, step_metrics, log_now=(
                    step == start_step + 1 or step % t.log_every == 0 or step == t.max_steps))
                if step == start_step + 1:
                    steps.flush()  # compile time on its own line, not inside a step time
                eval_due = val_batches is not None and t.eval_every and (
                    step % t.eval_every == 0 or step == t.max_steps)
                save_due = t.checkpoint_every and step % t.checkpoint_every == 0
                health_due = t.health_every and step % t.health_every == 0
                hellaswag_due = t.hellaswag_every and (step % t.hellaswag_every == 0
                                                       or step == t.max_steps)
                core_due = t.core_every and (step % t.core_every == 0 or step == t.max_steps)
                if (eval_due or hellaswag_due or core_due or save_due or health_due
                        or stop.received):
                    steps.flush()
                    if health_due:
                        report_health(step, batch)
                    if eval_due or hellaswag_due or core_due:
                        val_loss = evaluate(step, eval_due, hellaswag_due, core_due).get(
                            "val_loss", val_loss)
                    if save_due or stop.received:
                        save(step)
                    steps.pause_clock(step)
                if stop.received:
                    break
            steps.flush()
            if (not stop.received and step == t.max_steps and t.checkpoint_at_end
                    and ckpt.latest_step() != step):
                save(step)  # the final weights, for evaluate / sample / fine-tuning
        if stop.received:
            say(f"received {stop.received}: stopped after step {step}; checkpoint in "
                f"{ckpt.directory}/{step}; run the same command again to resume")
        elif t.sample_tokens and is_main:
            prompt = tokenizer.encode(t.sample_prompt) or [tokenizer.EOT_TOKEN]
            max_new = min(t.sample_tokens, model.config.block_size - len(prompt))
            sample = complete(model.config, state.params, prompt, max_new, top_k=200,
                              seed=t.seed)[0]
            say("sample:\n" + tokenizer.decode(prompt + sample.tokens))

    peak_bytes = (jax.local_devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
    result = TrainResult(
        start_step=start_step, last_step=step, stopped_by=stop.received,
        first_loss=steps.first_loss, final_loss=steps.last_loss, final_val_loss=val_loss,
        compile_seconds=steps.compile_seconds, wall_seconds=time.perf_counter() - start_time,
        params=n_params, peak_memory_gib=None if peak_bytes is None else peak_bytes / 2**30)
    if not stop.received:
        say(f"done: steps {start_step + 1}-{step} in {result.wall_seconds:.1f} s"
            + (f"; loss {result.first_loss:.4f} -> {result.final_loss:.4f}"
               if result.final_loss is not None else "")
            + (f", val loss {val_loss:.4f}" if val_loss is not None else "")
            + (f"; peak device memory {result.peak_memory_gib:.1f} GiB" if peak_bytes else ""))
    if is_main:
        (workdir / "summary.json").write_text(json.dumps(dataclasses.asdict(result), indent=2)
                                              + "\n")
    return result
