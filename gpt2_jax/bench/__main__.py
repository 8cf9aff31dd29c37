"""`python -m gpt2_jax.bench`: training throughput of a config, the compiled step alone or the
real training loop on real data; with --decode, the inference engine (bench/decode.py).

    python -m gpt2_jax.bench --config configs/gpt2_124m.py [--config.KEY=VALUE ...]
        [--loop] [--steps 10] [--warmup 3] [--window 100]
        [--variant="--config.model.logits_dtype=float32" ...] [--record [FILE]]
        [--profile DIR] [--run_id ID]
        [--coordinator_address HOST:PORT --num_processes N --process_id I [--local_device_ids I]]

Step mode (default) times the jitted train step on device-made tokens; loop mode (--loop) times
`loop.train` on the config's data, with evaluation, checkpoints and samples off, reporting every
`--window` steps after `--warmup` (llm.c logs the same way). With the multi-process flags one
benchmark runs over several processes or hosts; process 0 reports. `--profile` also prints the
busiest kernels and, on several devices, the collectives' exposed time (bench/profiling.py).

Each --variant adds overrides on top of the common ones and is measured in turn in one process.
Results are printed; `--record` appends them as rows (schema: bench/results.py) to FILE, by
default benchmarks/results.jsonl. Nothing is written without it.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import jax

from gpt2_jax.bench import decode, profiling, results
from gpt2_jax.bench.train import measure_loop, measure_step
from gpt2_jax.config import DEFAULT_CONFIG_PATH, load_config
from gpt2_jax.errors import exits_on_user_error
from gpt2_jax.parallel.distributed import initialize


def _percent(fraction: float | None) -> str:
    return "n/a" if fraction is None else f"{100 * fraction:.1f}%"


def _gib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} GiB"


@exits_on_user_error
def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if "--decode" in argv:  # the inference engine's throughput: bench/decode.py
        return decode.main(argv)
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
    parser.add_argument("--record", nargs="?", const=results.DEFAULT_PATH, metavar="FILE",
                        help=f"append one row per measurement to FILE ({results.DEFAULT_PATH})")
    parser.add_argument("--run_id", default=results.default_run_id(),
                        help="shared by the rows measured in one call on one machine ($BENCH_RUN_ID)")
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
    for index, variant in enumerate(args.variant or [""]):
        variant_overrides = [*overrides, *shlex.split(variant)]
        config = load_config(args.config, variant_overrides)
        if args.loop:
            r = measure_loop(config, args.steps, args.warmup, args.window)
        else:
            # A new directory per run: the summary sums every trace under it.
            profile_dir = args.profile and str(
                Path(args.profile) / f"{time.strftime('%Y%m%d-%H%M%S')}-variant{index}")
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
        command = " ".join(["python -m gpt2_jax.bench --config", args.config,
                            *(["--loop"] if args.loop else []), *variant_overrides,
                            f"--steps {args.steps} --warmup {args.warmup}",
                            *([f"--window {args.window}"] if args.loop else [])])
        for first, last, rate in r["windows"]:
            print(f"steps {first}-{last}: {rate:,.0f} tok/s", flush=True)
        print(f"{r['device']} | {' '.join(variant_overrides) or 'as configured'} | {r['data']} | "
              f"{r['step_ms']:.1f} ms/step | {r['tokens_per_sec']:,.0f} tok/s (last "
              f"{'window' if args.loop else 'half'}: {r['tokens_per_sec_last']:,.0f}) | MFU "
              f"{_percent(r['mfu'])} | peak {_gib(r['peak_memory_gib'])} | "
              f"compile {r['compile_s']:.1f} s | loss {r['loss']:.3f}", flush=True)
        if args.record:
            row = _row(results.common_fields(config_name, variant_overrides,
                                             "loop" if args.loop else "step", args.run_id, command),
                       r, args.steps, config.train.total_batch_size)
            results.record(row, args.record)
            print(f"recorded in {args.record}", flush=True)


def _row(common: dict, r: dict, steps: int, tokens_per_step: int) -> dict:
    def rounded(key, digits):
        return None if r[key] is None else round(r[key], digits)
    return {**common, "data": r["data"], "steps": steps, "tokens_per_step": tokens_per_step,
            "tokens_per_sec": round(r["tokens_per_sec"]),
            "tokens_per_sec_last": round(r["tokens_per_sec_last"]), "mfu": rounded("mfu", 4),
            "peak_memory_gib": rounded("peak_memory_gib", 2), "compile_s": rounded("compile_s", 1),
            "windows": [[a, b, round(v)] for a, b, v in r["windows"]],
            "processes": jax.process_count(),
            **({"exposed_collective_share": round(r["exposed_collective_share"], 4)}
               if "exposed_collective_share" in r else {})}


if __name__ == "__main__":
    main()
