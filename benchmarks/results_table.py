"""Rows of benchmarks/results.jsonl -> the markdown results table BENCHMARKS.md shows per sitting.

    python benchmarks/results_table.py h100-20261126-aq h200x2-20261126-ar [--jsonl FILE]

One table row per JSON row whose run_id is named, in file order: date, GPU, jax, run (the run_id's
last part), config and overrides, data and steps, tokens/s (last window or half), MFU, peak memory,
the row's note (which code ran, what ran beside it) and the command.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

COLUMNS = ("date", "GPU", "jax", "run", "config, overrides", "data, steps", "tok/s (last)", "MFU",
           "memory", "note", "command")
HEADER = "| " + " | ".join(COLUMNS) + " |\n" + "|---" * len(COLUMNS) + "|"


def table_row(r: dict) -> str:
    overrides = " ".join(o.removeprefix("--config.") for o in r.get("overrides") or []) or "-"
    rate, last = r["tokens_per_sec"], r.get("tokens_per_sec_last")
    rate = f"{rate:,.0f}" + (f" ({last:,.0f})" if last and last != rate else "")
    mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else ""
    memory = f"{r['peak_memory_gib']:.1f} GiB" if r.get("peak_memory_gib") else ""
    cells = [r["date"], r["gpu"], r.get("jax") or "-", r["run_id"].rsplit("-", 1)[-1],
             f"{r['config']}: {overrides}", f"{r['data']}, {r['steps']}", rate, mfu, memory,
             r.get("note", ""), f"`{r['command']}`"]
    return "| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_ids", nargs="+")
    parser.add_argument("--jsonl", default=str(Path(__file__).with_name("results.jsonl")))
    args = parser.parse_args(argv)
    rows = [json.loads(line) for line in open(args.jsonl) if line.strip()]
    print(HEADER)
    print("\n".join(table_row(r) for r in rows if r["run_id"] in args.run_ids))


if __name__ == "__main__":
    main()
