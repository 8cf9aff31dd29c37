"""Training throughput: the compiled step alone, or the real training loop on real data (and
with --decode, the inference engine's decode throughput: gpt2_jax/inference/bench.py).

    python -m gpt2_jax.bench --config configs/gpt2_124m.py [--config.KEY=VALUE ...]
        [--loop] [--steps 10] [--warmup 3] [--window 100]
        [--variant="--config.model.logits_dtype=float32" ...] [--jsonl benchmarks/results.jsonl]
        [--results BENCHMARKS.md] [--profile DIR] [--run_id ID]
        [--coordinator_address HOST:PORT --num_processes N --process_id I [--local_device_ids I]]

Step mode (default): the jitted train step on random tokens made on the devices, so neither the
input pipeline nor the host is measured; the timed steps are split in two halves.
Loop mode (--loop): `loop.train` itself, as users run it, on the config's data (data.source,
e.g. real token shards): input pipeline, host-to-device transfer, step, metrics read-back and
logging, with evaluation, checkpoints and samples off. After `--warmup` steps it reports every
`--window` steps, so a slowdown over the run shows (llm.c logs the same way).

With the multi-process flags (as `train` takes them) one benchmark runs over several processes
or hosts; process 0 reports. `--profile` on several devices also prints the share of the step in
which collectives run with no compute beside them (gpt2_jax/profiling.py).

Each --variant adds overrides on top of the common ones and is measured in turn in one process
(one row each). Every measurement is appended as a JSON line to --jsonl (fields: date, gpu, jax,
config, overrides, data, steps, tokens_per_step, tokens_per_sec, tokens_per_sec_last, mfu,
peak_memory_gib, compile_s, run_id, command); rows of one sitting share a run_id.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import socket
import sys
import tempfile
import time
from pathlib import Path

import jax

from gpt2_jax import metrics, profiling, sharding
from gpt2_jax.config import DEFAULT_CONFIG_PATH, load_config, model_config
from gpt2_jax.distributed import initialize
from gpt2_jax.errors import ConfigError, UserError, exits_on_user_error
from gpt2_jax.inference import bench as decode_bench
from gpt2_jax.loop import train
from gpt2_jax.model import count_params, flops_per_token
from gpt2_jax.sharding import BatchLayout
from gpt2_jax.step import build_training
from gpt2_jax.tokenizer import VOCAB_SIZE


def measure_step(c, steps: int, warmup: int, profile_dir: str | None = None) -> dict:
    """Compile and time the train step of config `c` on all devices, on device-made tokens."""
    mesh = sharding.make_mesh(c.mesh)
    layout = BatchLayout.from_config(c, mesh)
    with jax.set_mesh(mesh):
        training = build_training(c, mesh)
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


def _percent(fraction: float | None) -> str:
    return "n/a" if fraction is None else f"{100 * fraction:.1f}%"


def _gib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} GiB"


def program_memory_gib(compiled) -> float | None:
    """Device memory the compiled step needs per device (arguments + outputs + temporaries,
    donated buffers counted once): a per-variant figure, unlike the process's running peak."""
    analysis = compiled.memory_analysis()
    if analysis is None:
        return None
    total = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
             + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)
    return total / 2**30


def result_row(config_name: str, overrides: list[str], r: dict, command: str) -> str:
    """One BENCHMARKS.md row: date, GPU, jax, config + overrides, data, tokens/s (last window),
    MFU, memory, compile, command."""
    shown = " ".join(o.replace("--config.", "") for o in overrides) or "as configured"
    return (f"| {datetime.date.today()} | {r['device']} | {jax.__version__} | {config_name}: {shown} "
            f"| {r['data']} | {r['tokens_per_sec']:,.0f} ({r['tokens_per_sec_last']:,.0f}) "
            f"| {_percent(r['mfu'])} | {_gib(r['peak_memory_gib'])} | {r['compile_s']:.1f} s "
            f"| `{command}` |")


def results_record(config_name: str, overrides: list[str], r: dict, steps: int, run_id: str,
                   command: str) -> dict:
    """One benchmarks/results.jsonl object (the fields are fixed: notes/interface.md)."""
    return {"date": str(datetime.date.today()), "gpu": r["device"], "jax": jax.__version__,
            "config": config_name, "overrides": overrides, "data": r["data"], "steps": steps,
            "tokens_per_step": r["tokens_per_step"], "tokens_per_sec": round(r["tokens_per_sec"]),
            "tokens_per_sec_last": round(r["tokens_per_sec_last"]),
            "mfu": None if r["mfu"] is None else round(r["mfu"], 4),
            "peak_memory_gib": None if r["peak_memory_gib"] is None else round(r["peak_memory_gib"], 2),
            "compile_s": None if r["compile_s"] is None else round(r["compile_s"], 1),
            "run_id": run_id, "command": command,
            "mode": r["mode"], "windows": [[a, b, round(v)] for a, b, v in r["windows"]],
            "processes": jax.process_count(),
            **({"exposed_collective_share": round(r["exposed_collective_share"], 4)}
               if "exposed_collective_share" in r else {})}


@exits_on_user_error
def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if "--decode" in argv:
        return decode_bench.main(argv)
    parser = argparse.ArgumentParser(prog="python -m gpt2_jax.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--config", default=DEFAULT_CONFIG_PATH)
    parser.add_argument("--loop", action="store_true",
                        help="time the training loop on the config's data, not the step alone")
    parser.add_argument("--variant", action="append", default=[],
                        help="extra overrides measured as one row (repeatable)")
    parser.add_argument("--steps", type=int, default=10, help="steps in all (loop) / timed steps")
    parser.add_argument("--warmup", type=int, default=3,
                        help="steps before the timing starts (the first includes compilation)")
    parser.add_argument("--window", type=int, default=100, help="loop mode: steps per window")
    parser.add_argument("--jsonl", default="benchmarks/results.jsonl",
                        help="append one JSON object per measurement here ('' = nowhere)")
    parser.add_argument("--run_id", default=os.environ.get("BENCH_RUN_ID") or
                        f"{time.strftime('%Y%m%d-%H%M%S')}-{socket.gethostname()}",
                        help="shared by the rows of one sitting on one machine ($BENCH_RUN_ID)")
    parser.add_argument("--results", help="append markdown table rows to this file")
    parser.add_argument("--profile", help="step mode: also trace 2 steps into this directory and "
                        "print the busiest device kernels and the collectives' exposed time")
    parser.add_argument("--coordinator_address", help="HOST:PORT of process 0, when several "
                        "processes (hosts) run one benchmark")
    parser.add_argument("--num_processes", type=int)
    parser.add_argument("--process_id", type=int)
    parser.add_argument("--local_device_ids", help="comma-separated GPUs this process drives "
                        "(default: all it sees)")
    args, overrides = parser.parse_known_args(argv)
    initialize(args.coordinator_address, args.num_processes, args.process_id,
               args.local_device_ids)
    is_main = jax.process_index() == 0
    config_name = Path(args.config).stem
    rows = []
    for variant in args.variant or [""]:
        variant_overrides = [*overrides, *shlex.split(variant)]
        config = load_config(args.config, variant_overrides)
        if args.loop:
            r = measure_loop(config, args.steps, args.warmup, args.window)
        else:
            # A new directory per run: the summary sums every trace under it.
            profile_dir = args.profile and str(
                Path(args.profile) / f"{time.strftime('%Y%m%d-%H%M%S')}-variant{len(rows)}")
            r = measure_step(config, args.steps, args.warmup, profile_dir)
            if profile_dir and is_main:
                kernels = profiling.device_kernels(profile_dir)
                overlaps = profiling.collective_overlap(kernels)
                print(profiling.time_summary(kernels), profiling.time_summary(kernels, by_kind=True),
                      profiling.overlap_summary(overlaps), sep="\n", flush=True)
                if jax.device_count() > 1 and overlaps:
                    r["exposed_collective_share"] = max(o.exposed_share for o in overlaps)
        if r is None or not is_main:
            continue
        r.update(mode="loop" if args.loop else "step", tokens_per_step=config.train.total_batch_size)
        command = " ".join(["python -m gpt2_jax.bench --config", args.config,
                            *(["--loop"] if args.loop else []), *variant_overrides,
                            f"--steps {args.steps} --warmup {args.warmup}",
                            *([f"--window {args.window}"] if args.loop else [])])
        rows.append(result_row(config_name, variant_overrides, r, command))
        for first, last, rate in r["windows"]:
            print(f"steps {first}-{last}: {rate:,.0f} tok/s", flush=True)
        print(f"{r['device']} | {' '.join(variant_overrides) or 'as configured'} | {r['data']} | "
              f"{r['step_ms']:.1f} ms/step | {r['tokens_per_sec']:,.0f} tok/s (last "
              f"{'window' if args.loop else 'half'}: {r['tokens_per_sec_last']:,.0f}) | MFU "
              f"{_percent(r['mfu'])} | peak {_gib(r['peak_memory_gib'])} | "
              f"compile {r['compile_s']:.1f} s | loss {r['loss']:.3f}", flush=True)
        if args.jsonl:
            Path(args.jsonl).parent.mkdir(parents=True, exist_ok=True)
            with open(args.jsonl, "a") as f:
                f.write(json.dumps(results_record(config_name, variant_overrides, r, args.steps,
                                                  args.run_id, command)) + "\n")
    if not is_main:
        return
    print("\n".join(rows))
    if args.results:
        with open(args.results, "a") as f:
            f.write("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
