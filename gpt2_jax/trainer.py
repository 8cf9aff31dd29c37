"""The training loop: data, state, jitted step, evaluation, logging and the closing sample."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np

from gpt2_jax import metrics, sharding, tokenizer
from gpt2_jax.config import ConfigError, model_config
from gpt2_jax.data import pipeline
from gpt2_jax.data.shakespeare import prepare_shakespeare
from gpt2_jax.data.shards import find_shards
from gpt2_jax.model import GPT, flops_per_token
from gpt2_jax.optim import lr_schedule, make_optimizer
from gpt2_jax.sampling import generate
from gpt2_jax.train_step import create_train_state, jit_train_step, make_eval_step, make_train_step


@dataclasses.dataclass(frozen=True)
class BatchLayout:
    """How `train.total_batch_size` tokens per step split over devices and micro-steps."""

    accum_steps: int  # micro-steps accumulated per optimizer step
    global_micro_batch: int  # sequences per micro-step, all devices
    local_micro_batch: int  # sequences per micro-step fed by this process

    @classmethod
    def from_config(cls, c: ml_collections.ConfigDict, mesh) -> "BatchLayout":
        t = c.train
        global_micro = t.micro_batch_size * sharding.batch_parallelism(mesh)
        micro_tokens = global_micro * t.seq_len
        if t.total_batch_size % micro_tokens:
            raise ConfigError(
                f"train.total_batch_size ({t.total_batch_size}) must be a multiple of "
                f"train.micro_batch_size x data-parallel devices x train.seq_len = "
                f"{t.micro_batch_size} x {sharding.batch_parallelism(mesh)} x {t.seq_len} = "
                f"{micro_tokens}")
        return cls(accum_steps=t.total_batch_size // micro_tokens, global_micro_batch=global_micro,
                   local_micro_batch=global_micro // jax.process_count())


def data_files(c: ml_collections.ConfigDict, workdir: Path) -> tuple[list[str], list[str]]:
    """Train and validation shard files for data.source = shards or shakespeare."""
    if c.data.source == "shakespeare":
        train_path, val_path = prepare_shakespeare(workdir / "data")
        return [train_path], [val_path]
    return find_shards(c.data.train_files), find_shards(c.data.val_files)


def train(c: ml_collections.ConfigDict, workdir: str | Path) -> dict:
    """Train as configured, writing metrics.jsonl and config.json to `workdir`.

    Returns a summary: first and last training loss, last validation loss, wall time.
    """
    start_time = time.perf_counter()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    is_main = jax.process_index() == 0
    say = print if is_main else (lambda *_, **__: None)

    mesh = sharding.make_mesh(c.mesh)
    layout = BatchLayout.from_config(c, mesh)
    model = GPT(model_config(c))
    schedule = lr_schedule(c.optim, c.train.max_steps)
    tx = make_optimizer(c.optim, c.train.max_steps)
    seq_len, max_steps = c.train.seq_len, c.train.max_steps

    if c.data.source == "synthetic":
        say("data: SYNTHETIC random tokens (data.source=synthetic); losses measure nothing real")
        train_batches = pipeline.SyntheticBatches(
            seq_len=seq_len, accum_steps=layout.accum_steps, local_batch=layout.local_micro_batch,
            seed=c.train.seed)
        val_batches = None
    else:
        train_files, val_files = data_files(c, workdir)
        train_batches = pipeline.train_batches(
            train_files, seq_len=seq_len, accum_steps=layout.accum_steps,
            local_batch=layout.local_micro_batch, seed=c.train.seed,
            num_threads=c.data.num_threads, prefetch=c.data.prefetch)
        val_batches = pipeline.eval_batches(val_files, seq_len=seq_len,
                                            local_batch=layout.local_micro_batch,
                                            max_batches=c.train.eval_steps)
        say(f"data: {len(train_files)} train shard(s), {len(val_files)} val shard(s)")

    with jax.set_mesh(mesh):
        compile_start = time.perf_counter()
        state, shardings = create_train_state(model, tx, mesh, c.train.seed)
        n_params = sum(math.prod(p.shape) for p in jax.tree.leaves(state.params))
        train_step = jit_train_step(
            make_train_step(model, tx, schedule, c.train.loss_chunk_size), shardings, mesh)
        eval_step = make_eval_step(model, mesh, c.train.loss_chunk_size)

        tokens_per_step = c.train.total_batch_size
        flops_per_step = flops_per_token(model.config, n_params, seq_len) * tokens_per_step
        device = jax.devices()[0]
        say(f"model: {model.config.n_layer} layers, {model.config.n_head} heads, "
            f"{model.config.n_embd} channels, {n_params:,} parameters, compute "
            f"{model.config.dtype}, attention {model.config.attention}, remat {model.config.remat}")
        say(f"devices: {jax.device_count()} x {device.device_kind} ({jax.process_count()} "
            f"process(es)), mesh {dict(mesh.shape)}")
        say(f"batch: {tokens_per_step:,} tokens/step = {layout.accum_steps} micro-step(s) x "
            f"{layout.global_micro_batch} sequences x {seq_len} tokens")
        if is_main:
            (workdir / "config.json").write_text(c.to_json_best_effort(indent=2) + "\n")
        log = metrics.MetricsLog(workdir, enabled=is_main)
        batch_sharding = sharding.batch_sharding(mesh)
        eval_sharding = sharding.eval_batch_sharding(mesh)

        def evaluate(step: int) -> float:
            losses = [eval_step(state.params, sharding.to_global_array(b, eval_sharding))
                      for b in val_batches]
            val_loss = float(np.mean(jax.device_get(losses)))
            say(f"step {step}/{max_steps} | val loss {val_loss:.4f}")
            log.write({"step": step, "val_loss": val_loss})
            return val_loss

        first_loss = last_loss = val_loss = None
        pending = None  # (step, metrics) dispatched but not yet read back
        last_read_step, last_read_time = 0, None

        def read_back(step: int, step_metrics) -> None:
            """Fetch a finished step's metrics (this waits for it) and log them."""
            nonlocal first_loss, last_loss, last_read_step, last_read_time
            values = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
            now = time.perf_counter()
            if last_read_time is None:  # the first step: compilation dominates, report it as such
                say(f"compiled and ran step 1 in {now - compile_start:.1f} s")
                step_seconds = float("nan")
            else:
                step_seconds = (now - last_read_time) / (step - last_read_step)
            last_read_step, last_read_time = step, now
            first_loss = values["loss"] if first_loss is None else first_loss
            last_loss = values["loss"]
            tokens_per_sec = tokens_per_step / step_seconds
            mfu = metrics.mfu(flops_per_step / step_seconds, jax.device_count(), device)
            if math.isfinite(step_seconds):
                say(metrics.step_line(step, max_steps, values["loss"], values["grad_norm"],
                                      values["lr"], 1000 * step_seconds, tokens_per_sec, mfu))
            log.write({"step": step, "loss": values["loss"], "lr": values["lr"],
                       "grad_norm": values["grad_norm"], "tokens_per_sec": tokens_per_sec,
                       "mfu": mfu})

        for step in range(1, max_steps + 1):
            batch = sharding.to_global_array(next(train_batches), batch_sharding)
            state, step_metrics = train_step(state, batch)
            # Read the previous step back only now, so the device always has the next step queued.
            if pending is not None:
                read_back(*pending)
                pending = None
            if step == 1 or step % c.train.log_every == 0 or step == max_steps:
                pending = (step, step_metrics)
            if step == 1:  # report compile time on its own, not inside a step time
                read_back(*pending)
                pending = None
            eval_due = c.train.eval_every and (step % c.train.eval_every == 0 or step == max_steps)
            if val_batches is not None and eval_due:
                if pending is not None:
                    read_back(*pending)
                    pending = None
                val_loss = evaluate(step)
                last_read_time = time.perf_counter()  # evaluation time is not step time
        if pending is not None:
            read_back(*pending)

        if c.train.sample_tokens and is_main:
            prompt = tokenizer.encode(c.train.sample_prompt) or [tokenizer.EOT_TOKEN]
            max_new = min(c.train.sample_tokens, model.config.block_size - len(prompt))
            params = jax.device_get(state.params)
            sample = generate(model, params, prompt, max_new, top_k=200, seed=c.train.seed)
            say("sample:\n" + tokenizer.decode(np.asarray(sample[0])))

    peak_bytes = (device.memory_stats() or {}).get("peak_bytes_in_use")
    summary = {"first_loss": first_loss, "final_loss": last_loss, "final_val_loss": val_loss,
               "wall_seconds": time.perf_counter() - start_time, "params": n_params,
               "peak_memory_gib": None if peak_bytes is None else peak_bytes / 2**30}
    say(f"done: {max_steps} steps in {summary['wall_seconds']:.1f} s; "
        f"loss {first_loss:.4f} -> {last_loss:.4f}"
        + (f", val loss {val_loss:.4f}" if val_loss is not None else "")
        + (f"; peak device memory {summary['peak_memory_gib']:.1f} GiB" if peak_bytes else ""))
    if is_main:
        (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
