"""Train-step throughput on random tokens: steady-state step time, tokens/s, MFU, memory, compile.

    python -m gpt2_jax.bench --config configs/gpt2_124m.py [--config.KEY=VALUE ...]
        [--variant="--config.model.remat=full" ...] [--steps 10] [--warmup 3]
        [--results BENCHMARKS.md] [--profile DIR]

Each --variant adds overrides on top of the common ones and is measured in turn in one process
(one row each); without --variant the config is measured as given. The tokens are made on the
devices once, so the input pipeline is not measured (`gpt2_jax.data.bench` measures that).
"""

from __future__ import annotations

import argparse
import datetime
import math
import shlex
import time
from pathlib import Path

import jax

from gpt2_jax import metrics, sharding
from gpt2_jax.config import DEFAULT_CONFIG_PATH, load_config
from gpt2_jax.model import flops_per_token
from gpt2_jax.tokenizer import VOCAB_SIZE
from gpt2_jax.train_step import build_training
from gpt2_jax.trainer import BatchLayout


def kernel_summary(trace_dir: str, top: int = 25) -> str:
    """The device's busiest kernels in a jax.profiler trace: total time, share, count, name.
    (Which HLO instruction a kernel belongs to: dump the optimized HLO with XLA_FLAGS=--xla_dump_to.)
    """
    totals: dict[str, list] = {}
    for path in Path(trace_dir).rglob("*.xplane.pb"):
        for plane in jax.profiler.ProfileData.from_file(str(path)).planes:
            if not plane.name.startswith("/device:"):
                continue
            for line in plane.lines:
                if not line.name.startswith("Stream"):  # kernels; "XLA Ops" would count twice
                    continue
                for event in line.events:
                    entry = totals.setdefault(event.name, [0.0, 0])
                    entry[0] += event.duration_ns
                    entry[1] += 1
    if not totals:
        return "no device kernels in the trace"
    total = sum(ns for ns, _ in totals.values())
    rows = sorted(totals.items(), key=lambda kv: -kv[1][0])[:top]
    return "\n".join([f"{'ms':>9} {'share':>6} {'count':>6}  kernel"] + [
        f"{ns / 1e6:9.2f} {100 * ns / total:5.1f}% {count:6d}  {name[:110]}"
        for name, (ns, count) in rows])


def measure(c, steps: int, warmup: int, profile_dir: str | None = None) -> dict:
    """Compile and time the train step of config `c` on all devices."""
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
        started = time.perf_counter()
        for _ in range(steps):
            state, step_metrics = compiled(state, batch)
        jax.block_until_ready((state, step_metrics))
        step_seconds = (time.perf_counter() - started) / steps
        if profile_dir:
            with jax.profiler.trace(profile_dir):
                for _ in range(2):
                    state, step_metrics = compiled(state, batch)
                jax.block_until_ready((state, step_metrics))
    n_params = sum(math.prod(p.shape) for p in jax.tree.leaves(state.params))
    tokens_per_sec = c.train.total_batch_size / step_seconds
    flops = flops_per_token(model.config, n_params, c.train.seq_len) * tokens_per_sec
    device = jax.local_devices()[0]
    return {"step_ms": 1000 * step_seconds, "tokens_per_sec": tokens_per_sec,
            "mfu": metrics.mfu(flops, jax.device_count(), device),
            "peak_memory_gib": program_memory_gib(compiled),
            "compile_s": compile_seconds, "loss": float(step_metrics["loss"]),
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
    """One BENCHMARKS.md row: date, GPU, jax, config + overrides, tokens/s, MFU, memory, compile."""
    mfu = _percent(r["mfu"])
    memory = _gib(r["peak_memory_gib"])
    shown = " ".join(o.replace("--config.", "") for o in overrides) or "as configured"
    return (f"| {datetime.date.today()} | {r['device']} | {jax.__version__} | {config_name}: {shown} "
            f"| {r['tokens_per_sec']:,.0f} | {mfu} | {memory} | {r['compile_s']:.1f} s | `{command}` |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gpt2_jax.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--config", default=DEFAULT_CONFIG_PATH)
    parser.add_argument("--variant", action="append", default=[],
                        help="extra overrides measured as one row (repeatable)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps after compiling")
    parser.add_argument("--results", help="append the rows to this markdown file")
    parser.add_argument("--profile", help="also trace 2 steps into this directory and print the "
                        "busiest device kernels")
    args, overrides = parser.parse_known_args(argv)
    rows = []
    for variant in args.variant or [""]:
        variant_overrides = [*overrides, *shlex.split(variant)]
        config = load_config(args.config, variant_overrides)
        # A new directory per run: the summary sums every trace under it, and an older run's
        # traces in the same place would be counted too.
        profile_dir = args.profile and str(
            Path(args.profile) / f"{time.strftime('%Y%m%d-%H%M%S')}-variant{len(rows)}")
        r = measure(config, args.steps, args.warmup, profile_dir)
        if profile_dir:
            print(kernel_summary(profile_dir), flush=True)
        command = " ".join(["python -m gpt2_jax.bench --config", args.config, *variant_overrides,
                            f"--steps {args.steps} --warmup {args.warmup}"])
        rows.append(result_row(args.config.split("/")[-1].removesuffix(".py"),
                               variant_overrides, r, command))
        print(f"{r['device']} | {' '.join(variant_overrides) or 'as configured'} | "
              f"{r['step_ms']:.1f} ms/step | {r['tokens_per_sec']:,.0f} tok/s | MFU "
              f"{_percent(r['mfu'])} | peak {_gib(r['peak_memory_gib'])} | "
              f"compile {r['compile_s']:.1f} s | loss {r['loss']:.3f}", flush=True)
    print("\n".join(rows))
    if args.results:
        with open(args.results, "a") as f:
            f.write("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
