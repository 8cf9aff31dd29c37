"""The training loop: set up the data, the starting state and the jitted step, then train, with
evaluations, checkpoints and health reports at their cadence, until `train.max_steps` or a stop
signal; the closing sample and summary.json at the end."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import time
from pathlib import Path

import jax
import ml_collections

from gpt2_jax import tokenizer
from gpt2_jax.config import RunPlan
from gpt2_jax.data.sources import make_data
from gpt2_jax.errors import TrainingDiverged
from gpt2_jax.inference import complete
from gpt2_jax.model import GPT, count_params, flops_per_token
from gpt2_jax.parallel import sharding
from gpt2_jax.parallel.sharding import BatchLayout
from gpt2_jax.training import metrics, run_history
from gpt2_jax.training.cadence import Cadence
from gpt2_jax.training.checkpoint import Checkpointer
from gpt2_jax.training.evals import Evals, core_tasks, hellaswag_examples
from gpt2_jax.training.resume import open_checkpoints, starting_state
from gpt2_jax.training.step import build_training
from gpt2_jax.training.step_log import StepLog
from gpt2_jax.training.workdir import WorkdirLock, open_workdir


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
    started = time.perf_counter()
    t = c.train
    mesh = sharding.make_mesh(c.mesh)
    plan = RunPlan.resolve(c, mesh)
    layout = plan.batch
    train_batches, val_batches = make_data(c, workdir, layout, say)
    hellaswag_set, core_set = hellaswag_examples(c), core_tasks(c)
    ckpt = open_checkpoints(c, workdir, say)
    if (ckpt.latest_step() or 0) >= t.max_steps:
        return _nothing_to_do(ckpt, t.max_steps, say)

    with jax.set_mesh(mesh):
        training = build_training(c, mesh, plan=plan)
        model, train_step = training.model, training.train_step
        start = starting_state(c, training, ckpt, train_batches, workdir, say, is_main)
        state, start_step = start.state, start.step
        n_params = count_params(state.params)
        _say_setup(say, model, n_params, mesh, layout, t)
        if is_main:
            run_history.record_config(workdir, c, start_step,
                                      ckpt.saved_config(start_step) if start_step else None, say)
        log = metrics.MetricsLog(workdir, enabled=is_main, tensorboard=t.tensorboard)
        for event in start.events:
            log.write(event)
        steps = StepLog(log, say, t.max_steps, t.total_batch_size,
                        flops_per_token(model.config, n_params, t.seq_len) * t.total_batch_size,
                        time.perf_counter())
        evals = Evals(model, mesh, c, val_batches, hellaswag_set, core_set, log, say)
        cadence = Cadence.from_config(t, start_step, has_val_data=val_batches is not None)
        batch_sharding = sharding.batch_sharding(mesh)
        step, val_loss, stopped_by = start_step, None, None

        with StopSignal() as stop, _closing(ckpt, log, steps):
            for step in range(start_step + 1, t.max_steps + 1):
                batch = sharding.to_global_array(next(train_batches), batch_sharding)
                state, step_metrics = train_step(state, batch)
                # The signal is read once a step: one arriving later is handled at the next.
                due, stopped_by = cadence.at(step), stop.received
                pause = due.pause or bool(stopped_by)
                stop_if_diverged(steps.dispatched(step, step_metrics, log_now=due.log,
                                                  read_now=due.first or pause),
                                 c.stability.max_bad_steps)
                if due.health:
                    evals.report_health(step, state.params, batch)
                if due.evaluation:
                    val_loss = evals.evaluate(step, state.params, due).get("val_loss", val_loss)
                if due.save or stopped_by:
                    save(ckpt, step, state, train_batches, c, say)
                if pause:
                    steps.pause_clock(step)
                if stopped_by:
                    break
            stop_if_diverged(steps.flush(), c.stability.max_bad_steps)
            if not stopped_by and t.checkpoint_at_end and ckpt.latest_step() != step:
                save(ckpt, step, state, train_batches, c, say)  # for evaluate, sample, init_from

        if stopped_by:
            say(f"received {stopped_by}: stopped after step {step}; checkpoint in "
                f"{ckpt.directory}/{step}; run the same command again to resume")
        elif t.sample_tokens and is_main:
            say("sample:\n" + closing_sample(model, state.params, t))

    peak_bytes = (jax.local_devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
    result = TrainResult(
        start_step=start_step, last_step=step, stopped_by=stopped_by,
        first_loss=steps.first_loss, final_loss=steps.last_loss, final_val_loss=val_loss,
        compile_seconds=steps.compile_seconds, wall_seconds=time.perf_counter() - started,
        params=n_params, peak_memory_gib=None if peak_bytes is None else peak_bytes / 2**30)
    if not stopped_by:
        say(_done_line(result))
    if is_main:
        (workdir / "summary.json").write_text(json.dumps(dataclasses.asdict(result), indent=2)
                                              + "\n")
    return result


def stop_if_diverged(read: list[dict], max_bad_steps: int) -> None:
    """Stop the run once `max_bad_steps` steps in a row had non-finite loss or gradients (the
    guard kept each of them from changing the weights, so the checkpoints stay finite)."""
    for values in read:
        if values["bad_streak"] >= max_bad_steps:
            raise TrainingDiverged(
                f"stopping at step {values['step']}: {int(values['bad_streak'])} consecutive "
                "steps with non-finite loss or gradients (stability.max_bad_steps); none of them "
                "changed the weights, and no checkpoint holds non-finite values")


def save(ckpt: Checkpointer, step: int, state, train_batches, c: ml_collections.ConfigDict,
         say) -> None:
    """Start a background checkpoint of `step`; the loop is blocked only while it is copied."""
    started = time.perf_counter()
    ckpt.save(step, state, train_batches.get_state(), c)
    say(f"checkpoint step {step}: training blocked {1000 * (time.perf_counter() - started):.0f} ms "
        "(written in the background)")


def closing_sample(model: GPT, params, t: ml_collections.ConfigDict) -> str:
    """The prompt and a top-200 continuation of it: a look at what the weights learned."""
    prompt = tokenizer.encode(t.sample_prompt) or [tokenizer.EOT_TOKEN]
    max_new = min(t.sample_tokens, model.config.block_size - len(prompt))
    sample = complete(model.config, params, prompt, max_new, top_k=200, seed=t.seed)[0]
    return tokenizer.decode(prompt + sample.tokens)


def _nothing_to_do(ckpt: Checkpointer, max_steps: int, say) -> TrainResult:
    step = ckpt.latest_step() or 0
    ckpt.close()
    say(f"nothing to do: {ckpt.directory} is at step {step} and train.max_steps is "
        f"{max_steps}; raise train.max_steps to train further")
    return TrainResult(start_step=step, last_step=step)


def _say_setup(say, model: GPT, n_params: int, mesh, layout: BatchLayout,
               t: ml_collections.ConfigDict) -> None:
    cfg = model.config
    say(f"model: {cfg.n_layer} layers, {cfg.n_head} heads, {cfg.n_embd} channels, "
        f"{n_params:,} parameters, compute {cfg.dtype}, attention {cfg.attention}, "
        f"remat {cfg.remat}")
    say(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind} "
        f"({jax.process_count()} process(es)), mesh {dict(mesh.shape)}")
    say(f"batch: {t.total_batch_size:,} tokens/step = {layout.accum_steps} micro-step(s) x "
        f"{layout.global_micro_batch} sequences x {t.seq_len} tokens")


def _done_line(result: TrainResult) -> str:
    return (f"done: steps {result.start_step + 1}-{result.last_step} in "
            f"{result.wall_seconds:.1f} s"
            + (f"; loss {result.first_loss:.4f} -> {result.final_loss:.4f}"
               if result.final_loss is not None else "")
            + (f", val loss {result.final_val_loss:.4f}"
               if result.final_val_loss is not None else "")
            + (f"; peak device memory {result.peak_memory_gib:.1f} GiB"
               if result.peak_memory_gib else ""))


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
