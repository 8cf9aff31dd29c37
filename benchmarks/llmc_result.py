"""llm.c's training log -> the figures and JSON row that `gpt2_jax.bench --loop` gives us.

    benchmarks/llmc.sh run LLMC d12 64 65536 300 TRAIN_GLOB VAL_GLOB > llmc.log
    python benchmarks/llmc_result.py llmc.log --tokens_per_step 65536 --warmup 100 --window 100 \
        --gpu "1x NVIDIA H100 80GB HBM3" --run_id ID --command "benchmarks/llmc.sh run ..." \
        --jsonl benchmarks/results.jsonl

llm.c logs every step's time in ms and an EMA of tokens/s. The row's tokens/s is tokens per step
over the mean step time after `--warmup` steps, and per `--window` steps from there on, as our
loop bench reports; MFU is the mean of llm.c's own per-step figure (the formula ours uses).
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
from pathlib import Path

from gpt2_jax.bench.train import timed_windows

# llm.c prints -100% MFU on a GPU it has no peak figure for (H200): that MFU is unknown.
STEP = re.compile(r"step\s+(\d+)/\d+ \|.*\| ([\d.]+) ms \| (-?[\d.]+)% bf16 MFU")
MEMORY = re.compile(r"device memory usage: (\d+) MiB")


def step_lines(lines: list[str]) -> dict[int, tuple[float, float | None]]:
    """{step: (ms, MFU fraction, None where llm.c does not know the GPU)} from llm.c's step lines."""
    steps = {}
    for line in lines:
        m = STEP.match(line)
        if m:
            mfu = float(m.group(3)) / 100
            steps[int(m.group(1))] = (float(m.group(2)), mfu if mfu >= 0 else None)
    return steps


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
    parser.add_argument("--tokens_per_step", type=int, required=True)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--gpu", required=True, help='as the bench writes it, e.g. "2x NVIDIA H100 80GB HBM3"')
    parser.add_argument("--config", default="llm.c", help='e.g. "llm.c -e d12"')
    parser.add_argument("--run_id", default="")
    parser.add_argument("--command", default="", help="the llm.c command that wrote the log")
    parser.add_argument("--data", default="shards")
    parser.add_argument("--jsonl", default="", help="append the row here")
    args = parser.parse_args(argv)
    log = Path(args.log)
    if not log.is_file():
        raise SystemExit(f"no llm.c log at {log}: redirect `benchmarks/llmc.sh run ...` into it")
    row = {"date": str(datetime.date.today()), "gpu": args.gpu, "jax": None, "config": args.config,
           "overrides": [], "data": args.data,
           **result(log.read_text().splitlines(), args.tokens_per_step, args.warmup,
                    args.window),
           "compile_s": None, "run_id": args.run_id, "command": args.command, "mode": "llm.c"}
    mfu = "unknown" if row["mfu"] is None else f"{100 * row['mfu']:.1f}%"
    print(f"{args.gpu} | {args.config} | {row['tokens_per_sec']:,} tok/s after step "
          f"{args.warmup} | MFU {mfu} | windows {row['windows']}")
    if args.jsonl:
        with open(args.jsonl, "a") as out:
            out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
