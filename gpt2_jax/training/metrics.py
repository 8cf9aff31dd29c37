"""Throughput accounting (tokens/s, MFU) and the run's outputs: console lines and metrics.jsonl."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax

from gpt2_jax.util import atomic

# Dense bf16 tensor-core peaks, FLOP/s per device. llm.c uses 988.8 TFLOP/s for the H100 SXM
# (and the H200 has the same chip), so our MFU compares directly with its figures.
PEAK_BF16_FLOPS = {"H200": 988.8e12, "H100": 988.8e12, "A100": 312e12, "L40S": 362e12}


def peak_flops(device: jax.Device) -> float | None:
    """bf16 peak of one device, or None where unknown (CPUs): MFU is then not reported."""
    kind = getattr(device, "device_kind", "")
    return next((peak for name, peak in PEAK_BF16_FLOPS.items() if name in kind), None)


def mfu(flops_per_second: float, n_devices: int, device: jax.Device) -> float | None:
    peak = peak_flops(device)
    return None if peak is None else flops_per_second / (peak * n_devices)


class MetricsLog:
    """Rows to <workdir>/metrics.jsonl and, optionally, TensorBoard event files under
    <workdir>/tensorboard (tensorboardX: no TensorFlow). Only the main process writes."""

    def __init__(self, workdir: str | Path, enabled: bool = True, tensorboard: bool = True):
        self.path = Path(workdir) / "metrics.jsonl"
        self.enabled = enabled
        self.writer = None
        if enabled and tensorboard:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(str(Path(workdir) / "tensorboard"), flush_secs=30)

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        clean = _json_ready(row)
        with open(self.path, "a") as f:
            f.write(json.dumps(clean) + "\n")
        if self.writer is not None:
            for tag, value in _scalars(clean):
                self.writer.add_scalar(tag, value, clean["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_rows(path: str | Path) -> tuple[list[tuple[str, dict]], list[int]]:
    """(line, row) of each row of a metrics.jsonl, and the numbers of the lines that are not
    rows: a line torn by a kill in the middle of a write."""
    rows, torn = [], []
    for number, line in enumerate(Path(path).read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append((line, row))
        else:
            torn.append(number)
    return rows, torn


def truncate_rows(workdir: str | Path, last_step: int) -> list[int]:
    """Keep metrics.jsonl's rows up to `last_step` (a resumed run logs the later steps again)
    and drop torn lines; returns the dropped torn lines' numbers."""
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    rows, torn = read_rows(path)
    atomic.write_text(path, "".join(line + "\n" for line, row in rows if row["step"] <= last_step))
    return torn


def _json_ready(value):
    """Floats, lists and dicts JSON can hold; non-finite floats become null."""
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if hasattr(value, "tolist"):  # numpy arrays and scalars -> Python lists and numbers
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _scalars(row: dict, prefix: str = ""):
    """(tag, number) pairs of a row; lists become one tag per index (e.g. per layer)."""
    for key, value in row.items():
        if key == "step" or value is None:
            continue
        tag = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _scalars(value, tag + "/")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                if v is not None:
                    yield f"{tag}/{i:02d}", v
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield tag, value


def step_line(step: int, max_steps: int, loss: float, grad_norm: float, lr: float,
              step_ms: float, tokens_per_sec: float, mfu_value: float | None) -> str:
    """One console line per step, llm.c style: what an operator reads at a glance."""
    width = len(str(max_steps))
    mfu_text = "n/a" if mfu_value is None else f"{100 * mfu_value:.1f}%"
    return (f"step {step:{width}d}/{max_steps} | loss {loss:.4f} | norm {grad_norm:.4f} | "
            f"lr {lr:.2e} | {step_ms:.1f} ms | {tokens_per_sec:,.0f} tok/s | MFU {mfu_text}")
