"""Reading jax.profiler traces: the busiest device kernels, kernel time by kind of work, and how
much collective time is exposed.

A trace holds, per device, the kernels each CUDA stream ran with start and duration. NCCL kernels
(all-reduce, all-gather, reduce-scatter) run on their own streams; a collective is *exposed* for
the time no compute kernel runs beside it, which is what overlap is meant to remove.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax


Kernels = dict[str, list[tuple[str, int, int]]]  # device -> [(kernel name, start ns, duration ns)]


def device_kernels(trace_dir: str) -> Kernels:
    """{device plane name: [(kernel name, start ns, duration ns), ...]} from every trace under
    `trace_dir` (stream lines only: the "XLA Ops" lines would count each kernel twice)."""
    kernels: dict[str, list] = {}
    for path in Path(trace_dir).rglob("*.xplane.pb"):
        for plane in jax.profiler.ProfileData.from_file(str(path)).planes:
            if not plane.name.startswith("/device:"):
                continue
            events = kernels.setdefault(plane.name, [])
            for line in plane.lines:
                if line.name.startswith("Stream"):
                    events.extend((e.name, e.start_ns, e.duration_ns) for e in line.events)
    return kernels


# (kind, substrings of a lower-cased kernel name), tried in order. XLA names its fusions by their
# root op (input_add_reduce_fusion, loop_convert_fusion, wrapped_transpose); cuBLAS's Hopper GEMMs
# are "nvjet_*", XLA's own Triton GEMMs "gemm_fusion_dot*", cuDNN's attention "*sdpa*"/"*fmha*".
KERNEL_KINDS = (
    ("collectives", ("nccl", "all-reduce", "all-gather", "reduce-scatter", "all-to-all")),
    ("attention (cuDNN)", ("sdpa", "fmha", "flash", "cudnn")),
    ("GEMMs", ("nvjet", "gemm", "cutlass", "xmma", "splitkreduce")),
    ("transposes", ("transpose",)),
    ("scatters", ("scatter",)),
    ("copies and memsets", ("memcpy", "memset", "copy")),
    ("reduce fusions", ("reduce",)),
    ("convert fusions", ("convert",)),
    ("other fusions", ("fusion",)),
)


def kernel_kind(kernel_name: str) -> str:
    """What kind of work a kernel is, from its name (KERNEL_KINDS)."""
    name = kernel_name.lower()
    return next((kind for kind, keys in KERNEL_KINDS if any(k in name for k in keys)), "other")


def time_summary(kernels: Kernels, by_kind: bool = False, top: int = 25) -> str:
    """Kernel time over all devices, per kernel name (the `top` busiest) or per kind of work
    (KERNEL_KINDS: where a step goes, to compare a variant with its baseline): total, share,
    count. (Which HLO instruction a kernel belongs to: dump the optimized HLO with
    XLA_FLAGS=--xla_dump_to.)"""
    totals: dict[str, list] = {}
    for events in kernels.values():
        for name, _, duration in events:
            entry = totals.setdefault(kernel_kind(name) if by_kind else name, [0, 0])
            entry[0] += duration
            entry[1] += 1
    total = sum(ns for ns, _ in totals.values())
    if not total:
        return "no device kernels in the trace"
    rows = sorted(totals.items(), key=lambda kv: -kv[1][0])[:top]
    return "\n".join([f"{'ms':>9} {'share':>6} {'count':>6}  {'kind' if by_kind else 'kernel'}"] + [
        f"{ns / 1e6:9.2f} {100 * ns / total:5.1f}% {count:6d}  {label[:110]}"
        for label, (ns, count) in rows])


def is_collective(kernel_name: str) -> bool:
    return kernel_kind(kernel_name) == "collectives"


def _union(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[list[int]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]


def _length(intervals: list[tuple[int, int]]) -> int:
    return sum(b - a for a, b in intervals)


def _minus(intervals: list[tuple[int, int]], cover: list[tuple[int, int]]) -> int:
    """Total length of `intervals` (disjoint, sorted) not covered by `cover` (disjoint, sorted)."""
    left, j = 0, 0
    for start, end in intervals:
        while j < len(cover) and cover[j][1] <= start:
            j += 1
        cursor, k = start, j
        while cursor < end and k < len(cover) and cover[k][0] < end:
            if cover[k][0] > cursor:
                left += cover[k][0] - cursor
            cursor = max(cursor, cover[k][1])
            k += 1
        left += max(0, end - cursor)
    return left


@dataclasses.dataclass(frozen=True)
class Overlap:
    """One device's collectives against its compute over a traced span."""

    device: str
    span_ms: float  # first kernel start to last kernel end
    compute_ms: float  # time some compute kernel runs
    collective_ms: float  # time some collective kernel runs
    exposed_ms: float  # collective time with no compute kernel running

    @property
    def exposed_share(self) -> float:
        return self.exposed_ms / self.span_ms if self.span_ms else 0.0


def collective_overlap(kernels: Kernels) -> list[Overlap]:
    """Per device: how much of the traced span collectives take, and how much of that nothing
    overlaps (the part a mesh's step time pays for its collectives)."""
    return [overlap_of(device, events) for device, events in sorted(kernels.items()) if events]


def overlap_of(device: str, events: list[tuple[str, int, int]]) -> Overlap:
    """The Overlap of one device's (kernel name, start ns, duration ns) events."""
    compute = _union([(s, s + d) for n, s, d in events if not is_collective(n)])
    collective = _union([(s, s + d) for n, s, d in events if is_collective(n)])
    span = max(s + d for _, s, d in events) - min(s for _, s, _ in events)
    return Overlap(device, span / 1e6, _length(compute) / 1e6, _length(collective) / 1e6,
                   _minus(collective, compute) / 1e6)


def overlap_summary(rows: list[Overlap]) -> str:
    if not rows:
        return "no device kernels in the trace"
    return "\n".join([f"{'device':<22} {'span ms':>9} {'compute':>9} {'collect.':>9} "
                      f"{'exposed':>9} {'share':>6}"] + [
        f"{r.device[:22]:<22} {r.span_ms:9.2f} {r.compute_ms:9.2f} {r.collective_ms:9.2f} "
        f"{r.exposed_ms:9.2f} {100 * r.exposed_share:5.1f}%" for r in rows])
