"""The schema of a benchmark result row, and the one way rows are written: appended as JSON lines
to a file the user names (`--record`). BENCHMARKS.md is generated from those rows
(benchmarks/results_table.py), so every figure it shows has its command beside it."""

from __future__ import annotations

import datetime
import json
import os
import socket
import time
from pathlib import Path

import jax

DEFAULT_PATH = "benchmarks/results.jsonl"

# Every field a row may carry, and what it means. `mode` says which group applies.
FIELDS = {
    # Every row
    "date": "YYYY-MM-DD of the measurement",
    "gpu": 'device count and kind, e.g. "1x NVIDIA H200"',
    "jax": "jax version (llm.c rows: null)",
    "config": 'config file stem, or "llm.c -e dNN" for llm.c rows',
    "overrides": "--config.KEY=VALUE overrides on top of the config",
    "mode": "step | loop | llm.c | decode | serve | eval | quality",
    "run_id": "shared by the rows measured in one call on one machine (pairs are compared within it)",
    "command": "the command that produced the row",
    "note": "optional: what ran beside it, or what the row does not show",
    # Training throughput (step, loop, llm.c)
    "data": "synthetic | shards",
    "steps": "optimizer steps run (timed: steps minus warmup)",
    "tokens_per_step": "tokens per optimizer step",
    "tokens_per_sec": "mean tokens/s over the timed steps",
    "tokens_per_sec_last": "tokens/s of the last window (loop) or half (step)",
    "windows": "loop mode: [first step, last step, tokens/s] per window",
    "mfu": "model FLOPs utilization against the GPU's dense bf16 peak (llm.c's formula)",
    "peak_memory_gib": "device memory the compiled step needs (step) or the run's peak (loop)",
    "compile_s": "seconds to compile the step (loop: the first step, compilation included)",
    "processes": "JAX processes",
    "exposed_collective_share": "share of the step in which collectives run with no compute",
    # Decoding and serving
    "batch": "decode: rows decoded together; serve: concurrent clients",
    "prompt_tokens": "tokens of each prompt",
    "new_tokens": "tokens generated per row",
    "ms_per_step": "decode: milliseconds per decode step",
    "ttft_ms": "time to first token (serve: median over clients)",
    "p50_latency_ms": "serve: median request latency",
    "p99_latency_ms": "serve: 99th-percentile request latency",
    "clients": "serve: concurrent clients",
    "top_k": "decode: top-k of the sampling",
    "chunk_steps": "decode: decode steps per compiled loop call",
    "decode_kernels": "decode: the engine's Pallas kernels in use ([] = XLA's kernels only)",
    "xla_only": "decode: run with --xla_only (the kernels turned off: an A/B's baseline)",
    "bandwidth_gb_per_s": "decode: device-to-device copy bandwidth measured in the same run",
    "fraction_of_bound": "decode: tokens_per_sec / bound_tokens_per_sec",
    "transformers": "decode: transformers version (its rows)",
    "torch": "decode: torch version (transformers rows)",
    "bound_tokens_per_sec": "decode: the memory-bandwidth bound at this batch",
    "engine": "decode: gpt2_jax | transformers (and its mode)",
    # Evaluation and quality
    "items_per_sec": "eval: items scored per second",
    "items": "eval: items scored",
    "seconds": "eval: wall-clock seconds of the whole evaluation",
    "val_loss": "quality: final validation loss",
    "tokens": "quality: tokens trained on",
}


def default_run_id() -> str:
    """$BENCH_RUN_ID, else the time and host: shared by every row measured in one call."""
    return os.environ.get("BENCH_RUN_ID") or f"{time.strftime('%Y%m%d-%H%M%S')}-{socket.gethostname()}"


def common_fields(config: str, overrides: list[str], mode: str, run_id: str, command: str) -> dict:
    """The fields every row of this process carries."""
    device = jax.local_devices()[0]
    return {"date": str(datetime.date.today()), "gpu": f"{jax.device_count()}x {device.device_kind}",
            "jax": jax.__version__, "config": config, "overrides": list(overrides), "mode": mode,
            "run_id": run_id, "command": command}


def record(row: dict, path: str | Path) -> None:
    """Append `row` to the JSON-lines file `path`; a field outside the schema is a bug."""
    unknown = set(row) - set(FIELDS)
    if unknown:
        raise ValueError(f"result row fields outside bench/results.py's schema: {sorted(unknown)}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
