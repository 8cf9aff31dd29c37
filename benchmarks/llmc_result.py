"""llm.c's training log -> the figures and the results.jsonl row `gpt2_jax.bench --loop` gives us.

    export BENCH_RUN_ID=ID   # the run_id of our bench rows from the same sitting
    benchmarks/llmc.sh run LLMC d12 64 65536 300 TRAIN_GLOB VAL_GLOB > llmc.log
    python benchmarks/llmc_result.py llmc.log --warmup 100 --window 100 --record

llm.c logs every step's time in ms and an EMA of tokens/s. The row's tokens/s is tokens per step
over the mean step time after `--warmup` steps, and per `--window` steps from there on, as our
loop bench reports; MFU is the mean of llm.c's own per-step figure (the formula ours uses). The
GPU, model depth and tokens per step come from llm.c's settings table, the GPU count and command
from the line benchmarks/llmc.sh writes first; flags override them. The row carries the same
`run_id` as our rows (--run_id, else $BENCH_RUN_ID), so BENCHMARKS.md can pair them.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shlex
from pathlib import Path

from gpt2_jax.bench import results
from gpt2_jax.bench.train import timed_windows

# llm.c prints -100% MFU on a GPU it has no peak figure for (H200): that MFU is unknown.
STEP = re.compile(r"step\s+(\d+)/\d+ \|.*\| ([\d.]+) ms \| (-?[\d.]+)% bf16 MFU")
MEMORY = re.compile(r"device memory usage: (\d+) MiB")
SETTING = re.compile(r"\| (total batch size|device|num_layers L)\s+\| (.*?)\s*\|$")
LAUNCH = "# "  # the first line benchmarks/llmc.sh writes: "# benchmarks/llmc.sh run ARGS"


def step_lines(lines: list[str]) -> dict[int, tuple[float, float | None]]:
    """{step: (ms, MFU fraction or None where llm.c does not know the GPU)} from its step lines."""
    steps = {}
    for line in lines:
        m = STEP.match(line)
        if m:
            mfu = float(m.group(3)) / 100
            steps[int(m.group(1))] = (float(m.group(2)), mfu if mfu >= 0 else None)
    return steps


def log_facts(lines: list[str]) -> dict:
    """What the log says of its run: gpu, config, tokens_per_step and command, where it says it."""
    settings = dict(m.groups() for m in map(SETTING.match, lines) if m)
    facts = {}
    if "num_layers L" in settings:
        facts["config"] = f"llm.c -e d{settings['num_layers L']}"
    if "total batch size" in settings:
        facts["tokens_per_step"] = int(settings["total batch size"])
    launch = next((line for line in lines if line.startswith(LAUNCH)), None)
    gpus = 1
    if launch:
        facts["command"] = launch.removeprefix(LAUNCH).strip()
        args = shlex.split(facts["command"])
        if "run" in args and len(args) > args.index("run") + 8:
            gpus = int(args[args.index("run") + 8])
    if "device" in settings:
        facts["gpu"] = f"{gpus}x {settings['device']}"
    return facts


def result(lines: list[str], tokens_per_step: int, warmup: int, window: int) -> dict:
    steps = step_lines(lines)
    if len(steps) <= warmup:
        raise SystemExit(f"llm.c logged {len(steps)} steps, not more than --warmup {warmup}")
    timed = [s for s in sorted(steps) if s > warmup]
    tokens_per_sec, parts = timed_windows({s: ms / 1000 for s, (ms, _) in steps.items()},
                                          tokens_per_step, warmup, window)
    memory = [int(m.group(1)) for m in map(MEMORY.search, lines) if m]
    mfus = [steps[s][1] for s in timed]
    return {"steps": max(steps), "tokens_per_step": tokens_per_step,
            "tokens_per_sec": round(tokens_per_sec),
            "tokens_per_sec_last": round(parts[-1][2]) if parts else None,
            "mfu": None if None in mfus else round(sum(mfus) / len(mfus), 4),
            "peak_memory_gib": round(memory[-1] / 1024, 2) if memory else None,
            "windows": [[a, b, round(v)] for a, b, v in parts]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log")
    parser.add_argument("--tokens_per_step", type=int, help="default: llm.c's total batch size")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--gpu", help='as the bench writes it, e.g. "2x NVIDIA H100 80GB HBM3" '
                        "(default: from the log)")
    parser.add_argument("--config", help='default "llm.c -e dNN", NN from the log')
    parser.add_argument("--run_id", default=os.environ.get("BENCH_RUN_ID"),
                        help="the run_id of our rows beside it ($BENCH_RUN_ID)")
    parser.add_argument("--command", help="the llm.c command that wrote the log (default: the "
                        "log's first line, as benchmarks/llmc.sh writes it)")
    parser.add_argument("--data", default="shards")
    parser.add_argument("--note", help="what ran beside it, or what the row does not show")
    parser.add_argument("--record", nargs="?", const=results.DEFAULT_PATH, metavar="FILE",
                        help=f"append the row to FILE ({results.DEFAULT_PATH})")
    args = parser.parse_args(argv)
    log = Path(args.log)
    if not log.is_file():
        raise SystemExit(f"no llm.c log at {log}: redirect `benchmarks/llmc.sh run ...` into it")
    lines = log.read_text().splitlines()
    given = {"gpu": args.gpu, "config": args.config, "tokens_per_step": args.tokens_per_step,
             "command": args.command}
    facts = {**log_facts(lines), **{k: v for k, v in given.items() if v is not None}}
    for key in ("gpu", "config", "tokens_per_step"):
        if key not in facts:
            raise SystemExit(f"{log} does not say its {key}: pass --{key}")
    if args.record and not args.run_id:
        raise SystemExit("a recorded row needs the run_id of our rows beside it: "
                         "--run_id ID or $BENCH_RUN_ID")
    row = {"date": str(datetime.date.today()), "gpu": facts["gpu"], "jax": None,
           "config": facts["config"], "overrides": [], "mode": "llm.c", "run_id": args.run_id or "",
           "command": facts.get("command", ""), "data": args.data,
           **result(lines, facts["tokens_per_step"], args.warmup, args.window), "compile_s": None,
           **({"note": args.note} if args.note else {})}
    mfu = "unknown" if row["mfu"] is None else f"{100 * row['mfu']:.1f}%"
    print(f"{row['gpu']} | {row['config']} | {row['tokens_per_sec']:,} tok/s after step "
          f"{args.warmup} | MFU {mfu} | windows {row['windows']}")
    if args.record:
        results.record(row, args.record)
        print(f"recorded in {args.record} (run_id {args.run_id})")


if __name__ == "__main__":
    main()
