"""Training throughput, measured two ways: the compiled step alone on device-made tokens (neither
the input pipeline nor the host is in it), and `loop.train` itself as users run it, timed from its
own log rows in windows so that a slowdown over the run shows."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import jax

from gpt2_jax.config import RunPlan, model_config
from gpt2_jax.errors import ConfigError, UserError
from gpt2_jax.model import count_params, flops_per_token
from gpt2_jax.parallel import sharding
from gpt2_jax.tokenizer import VOCAB_SIZE
from gpt2_jax.training import metrics
from gpt2_jax.training.loop import train
from gpt2_jax.training.step import build_training


def measure_step(c, steps: int, warmup: int, profile_dir: str | None = None) -> dict:
    """Compile and time the train step of config `c` on all devices, on device-made tokens."""
    mesh = sharding.make_mesh(c.mesh)
    plan = RunPlan.resolve(c, mesh)
    layout = plan.batch
    with jax.set_mesh(mesh):
        training = build_training(c, mesh, plan=plan)
        model = training.model
        state = training.init_state(c.train.seed)
        shape = (layout.accum_steps, layout.global_micro_batch, c.train.seq_len + 1)
        batch = jax.jit(lambda key: jax.random.randint(key, shape, 0, VOCAB_SIZE),
                        out_shardings=sharding.batch_sharding(mesh))(jax.random.key(1))
        started = time.perf_counter()
        compiled = training.train_step.lower(state, batch).compile()
        compile_seconds = time.perf_counter() - started
        for _ in range(warmup):
            state, _ = compiled(state, batch)
        jax.block_until_ready(state)
        halves = []
        for n in filter(None, (steps // 2, steps - steps // 2)):
            started = time.perf_counter()
            for _ in range(n):
                state, step_metrics = compiled(state, batch)
            jax.block_until_ready((state, step_metrics))
            halves.append((n, time.perf_counter() - started))
        if profile_dir:
            with jax.profiler.trace(profile_dir):
                for _ in range(2):
                    state, step_metrics = compiled(state, batch)
                jax.block_until_ready((state, step_metrics))
    n_params = count_params(state.params)
    tokens = c.train.total_batch_size
    return _figures(c, model.config, n_params, tokens_per_sec=tokens * steps / sum(
        t for _, t in halves), tokens_per_sec_last=tokens * halves[-1][0] / halves[-1][1],
        peak_memory_gib=program_memory_gib(compiled), compile_s=compile_seconds,
        loss=float(step_metrics["loss"]), data="synthetic", windows=[])

def measure_loop(c, steps: int, warmup: int, window: int) -> dict | None:
    """Run `loop.train` for `steps` steps in a scratch workdir and time it from its own log
    rows: the mean after `warmup` steps, and each `window` steps from there on."""
    log_every = c.train.log_every
    if warmup % log_every or window % log_every or (steps - warmup) % window or warmup >= steps:
        raise ConfigError(f"--warmup ({warmup}) and --window ({window}) must be multiples of "
                          f"train.log_every ({log_every}), and --steps ({steps}) must be --warmup "
                          "plus whole windows")
    with c.unlocked():
        c.train.max_steps = steps
        for key in ("eval_every", "hellaswag_every", "health_every", "sample_tokens",
                    "checkpoint_every"):
            c.train[key] = 0
        c.train.checkpoint_at_end = c.train.tensorboard = c.train.resume = False
    with tempfile.TemporaryDirectory(prefix="bench-loop-") as workdir:
        result = train(c, workdir)
        if jax.process_index() != 0:  # only the first process logs rows; it reports
            return None
        rows = [row for _, row in metrics.read_rows(Path(workdir) / "metrics.jsonl")[0]
                if "loss" in row]
    if result.last_step < steps:
        raise UserError(f"the loop stopped at step {result.last_step} of {steps} "
                        f"({result.stopped_by}); nothing is reported for a partial run")
    # Each row's tokens_per_sec is the mean since the previous row: turn rows back into seconds.
    tokens = c.train.total_batch_size
    seconds_at = {row["step"]: tokens * (row["step"] - before["step"]) / row["tokens_per_sec"]
                  for before, row in zip(rows, rows[1:])}
    tokens_per_sec, windows = timed_windows(seconds_at, tokens, warmup, window)
    return _figures(c, model_config(c), result.params, tokens_per_sec=tokens_per_sec,
                    tokens_per_sec_last=windows[-1][2], peak_memory_gib=result.peak_memory_gib,
                    compile_s=result.compile_seconds, loss=result.final_loss,
                    data=c.data.source, windows=windows)

def timed_windows(seconds_at: dict[int, float], tokens_per_step: int, warmup: int,
                  window: int) -> tuple[float, list[tuple[int, int, float]]]:
    """Tokens/s after `warmup` steps, and (first, last, tokens/s) of each whole `window` from
    there, from the seconds logged at steps (each the time since the previous logged step)."""
    last = max(seconds_at)
    timed = sum(t for s, t in seconds_at.items() if s > warmup)
    windows = [(start + 1, start + window, tokens_per_step * window /
                sum(t for s, t in seconds_at.items() if start < s <= start + window))
               for start in range(warmup, last - window + 1, window)]
    return tokens_per_step * (last - warmup) / timed, windows

def _figures(c, gpt_config, n_params: int, **figures) -> dict:
    device = jax.local_devices()[0]
    flops = flops_per_token(gpt_config, n_params, c.train.seq_len) * figures["tokens_per_sec"]
    return {**figures, "step_ms": 1000 * c.train.total_batch_size / figures["tokens_per_sec"],
            "mfu": metrics.mfu(flops, jax.device_count(), device),
            "device": f"{jax.device_count()}x {device.device_kind}"}

def program_memory_gib(compiled) -> float | None:
    """Device memory the compiled step needs per device (arguments + outputs + temporaries,
    donated buffers counted once): a per-variant figure, unlike the process's running peak."""
    analysis = compiled.memory_analysis()
    if analysis is None:
        return None
    total = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
             + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)
    return total / 2**30
