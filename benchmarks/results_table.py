"""benchmarks/results.jsonl -> BENCHMARKS.md: the current figures per GPU kind, llm.c beside them,
and the levers measured; also README's performance table.

    python benchmarks/results_table.py --write      # rewrite BENCHMARKS.md and README's table
    python benchmarks/results_table.py              # print BENCHMARKS.md
    python benchmarks/results_table.py --check      # exit 1 if either is not current

Every figure in the output comes from a row of results.jsonl (schema: gpt2_jax/bench/results.py).
Which rows two levers compare, and which rows ran code other than the project's (a baseline run
from an older commit, a variant never committed), cannot be read from a row's fields: rows of one
`run_id` ran different code, named only in their free-text notes. benchmarks/levers.json keeps that
by hand, naming rows as `RUN_ID#N` (the N-th row with that run_id, in file order; rows are only
ever appended).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gpt2_jax.bench.results import FIELDS

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.jsonl"
LEVERS = HERE / "levers.json"
OUTPUT = HERE.parent / "BENCHMARKS.md"
README = HERE.parent / "README.md"
# README's performance table sits between these lines; --write replaces what is between them.
README_START = "<!-- one H100 beside llm.c: results_table.py --write fills this table -->"
README_END = "<!-- end of the generated table -->"

GPUS = ("1x NVIDIA H100 80GB HBM3", "1x NVIDIA H200", "2x NVIDIA H100 80GB HBM3", "2x NVIDIA H200")
README_GPU = GPUS[0]
SIZES = ("gpt2_124m", "gpt2_350m", "gpt2_774m", "gpt2_1558m")
LLMC_DEPTH = dict(zip(SIZES, ("d12", "d24", "d36", "d48")))  # llm.c's -e for each of our configs
# Overrides that say how a config was run (batch, mesh, data, FP8) rather than change the code path
# under test; a row with any other override measured a lever and is not a config's current figure.
SETUP_KEYS = {"train.total_batch_size", "train.micro_batch_size", "mesh.data", "mesh.fsdp",
              "mesh.tensor", "mesh.zero1", "data.source", "data.train_files", "data.val_files",
              "optim.warmup_steps", "train.max_steps", "train.log_every", "model.fp8"}


def load_rows(path: str | Path = RESULTS) -> list[dict]:
    """The rows of results.jsonl, each with its `ref` (RUN_ID#N) added."""
    rows, seen = [], {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            seen[row["run_id"]] = seen.get(row["run_id"], 0) + 1
            rows.append({**row, "ref": f"{row['run_id']}#{seen[row['run_id']]}"})
    return rows


def overrides(row: dict) -> dict[str, str]:
    """The row's `--config.KEY=VALUE` overrides as {KEY: VALUE}."""
    pairs = (o.removeprefix("--config.").split("=", 1) for o in row.get("overrides") or []
             if o.startswith("--config."))
    return dict(pairs)


def layout(row: dict) -> str:
    """How the row's config spread over its GPUs: '' on one GPU, else the mesh's kind."""
    if row["gpu"].startswith("1x"):
        return ""
    o = overrides(row)
    if o.get("mesh.fsdp", "1") != "1":
        return "FSDP"
    if o.get("mesh.tensor", "1") != "1":
        return "tensor parallel"
    return "ZeRO-1" if o.get("mesh.zero1") == "True" else "data parallel"


def run_as(row: dict) -> str:
    """'step bench' or 'training loop' (with the data it read), FP8 or not."""
    kind = {"step": "step bench", "loop": "training loop"}[row["mode"]]
    if row["mode"] == "loop":
        kind += f" ({row['data']})"
    return kind + (", FP8" if overrides(row).get("model.fp8") == "True" else "")


def llmc_rows(row: dict, rows: list[dict]) -> list[dict]:
    """llm.c's rows measured beside `row`: the same run_id, GPUs, model size and tokens per step."""
    depth = LLMC_DEPTH.get(row["config"])
    return [r for r in rows if r["mode"] == "llm.c" and r["run_id"] == row["run_id"]
            and r["config"] == f"llm.c -e {depth}" and r["gpu"] == row["gpu"]
            and r["tokens_per_step"] == row["tokens_per_step"]]


def current_rows(rows: list[dict], not_current: set[str]) -> list[dict]:
    """The newest row of each config, way of running it and setup (step size, mesh) on each GPU
    kind; rows that measured a lever or ran other code are skipped."""
    newest = {}
    for r in rows:
        if (r["mode"] in ("step", "loop") and r["ref"] not in not_current
                and set(overrides(r)) <= SETUP_KEYS):
            newest[(r["gpu"], r["config"], run_as(r), r["tokens_per_step"], layout(r))] = r
    order = {c: i for i, c in enumerate(SIZES)}
    return sorted(newest.values(), key=lambda r: (order.get(r["config"], len(order)), r["config"],
                                                  r["tokens_per_step"], layout(r), run_as(r)))


def percent(new: float, old: float) -> str:
    return f"{100 * (new / old - 1):+.1f}%"


def number(value: float | None, digits: int = 0) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def cells(values: list) -> str:
    return "| " + " | ".join(str(v).replace("|", "/") for v in values) + " |"


def header(*columns: str) -> list[str]:
    return [cells(list(columns)), "|---" * len(columns) + "|"]


def training_table(rows: list[dict], current: list[dict]) -> list[str]:
    lines = header("config", "steps", "run as", "tok/s", "MFU", "memory", "llm.c tok/s", "vs llm.c",
                   "run", "command")
    for r in current:
        beside = llmc_rows(r, rows)
        lines.append(cells([
            r["config"],
            f"{r['tokens_per_step']:,} tokens" + (f", {layout(r)}" if layout(r) else ""),
            run_as(r), number(r["tokens_per_sec"]),
            f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "",
            f"{r['peak_memory_gib']:.1f} GiB" if r.get("peak_memory_gib") else "",
            " / ".join(number(b["tokens_per_sec"]) for b in beside),
            " / ".join(f"**{percent(r['tokens_per_sec'], b['tokens_per_sec'])}**" for b in beside),
            f"{r['run_id']} ({r['date']})", f"`{r['command']}`"]))
    return lines


def decode_table(rows: list[dict], gpu: str) -> list[str]:
    """The engine's newest decode rows, the fastest transformers mode of the same run beside.
    Rows decoded with `--xla_only` (an A/B's baseline) are left to the dated notes."""
    newest = {}
    for r in rows:
        if (r["mode"] == "decode" and r["gpu"] == gpu and r["engine"] == "gpt2_jax"
                and not r.get("xla_only")):
            newest[(r["config"], r["batch"], r["prompt_tokens"], r["new_tokens"])] = r
    if not newest:
        return []
    lines = header("config", "batch", "prompt + new tokens", "tok/s", "ms per step", "first token",
                   "transformers tok/s (fastest mode, same run)", "ratio", "run", "command")
    order = {c: i for i, c in enumerate(SIZES)}
    for key in sorted(newest, key=lambda k: (order.get(k[0], len(order)), k[1:])):
        r = newest[key]
        theirs = [t for t in rows if t["mode"] == "decode" and t["run_id"] == r["run_id"]
                  and t["engine"].startswith("transformers")
                  and (t["config"], t["batch"], t["prompt_tokens"], t["new_tokens"]) == key]
        best = max(theirs, key=lambda t: t["tokens_per_sec"], default=None)
        lines.append(cells([
            r["config"], r["batch"], f"{r['prompt_tokens']} + {r['new_tokens']}",
            number(r["tokens_per_sec"]), number(r.get("ms_per_step"), 2),
            f"{r['ttft_ms']:.1f} ms" if r.get("ttft_ms") else "",
            f"{number(best['tokens_per_sec'])} ({best['engine']})" if best else "",
            f"{r['tokens_per_sec'] / best['tokens_per_sec']:.1f}x" if best else "",
            f"{r['run_id']} ({r['date']})", f"`{r['command']}`"]))
    return lines


def serve_table(rows: list[dict], gpu: str) -> list[str]:
    newest = {}
    for r in rows:
        if r["mode"] == "serve" and r["gpu"] == gpu:
            newest[(r["config"], r["clients"])] = r
    if not newest:
        return []
    lines = header("config", "concurrent clients", "tok/s", "p50 latency", "p99 latency", "run",
                   "command")
    for r in newest.values():
        lines.append(cells([r["config"], r["clients"], number(r["tokens_per_sec"]),
                            f"{r['p50_latency_ms']:,.0f} ms", f"{r['p99_latency_ms']:,.0f} ms",
                            f"{r['run_id']} ({r['date']})", f"`{r['command']}`"]))
    return lines


def eval_table(rows: list[dict], gpu: str) -> list[str]:
    """The newest evaluation timing of each config (mode eval)."""
    newest = {r["config"]: r for r in rows if r["mode"] == "eval" and r["gpu"] == gpu}
    if not newest:
        return []
    lines = header("config", "data", "items", "seconds", "items/s", "tok/s", "run", "command")
    for r in newest.values():
        lines.append(cells([r["config"], r["data"], number(r["items"]), number(r["seconds"], 1),
                            number(r["items_per_sec"]), number(r["tokens_per_sec"]),
                            f"{r['run_id']} ({r['date']})", f"`{r['command']}`"]))
    return lines


def quality_table(rows: list[dict], gpu: str) -> list[str]:
    """Training runs kept for their loss (mode quality; the first ones were recorded as train)."""
    runs = [r for r in rows if r["mode"] in ("quality", "train") and r["gpu"] == gpu
            and final_val_loss(r) is not None]
    if not runs:
        return []
    lines = header("config", "overrides", "steps", "tokens", "final val loss", "run", "command")
    for r in runs:
        shown = [f"{k}={v}" for k, v in overrides(r).items() if k not in SETUP_KEYS - {"model.fp8"}]
        lines.append(cells([r["config"], " ".join(shown) or "-", r["steps"],
                            number(r.get("tokens")), f"{final_val_loss(r):.4f}",
                            f"{r['run_id']} ({r['date']})", f"`{r['command']}`"]))
    return lines


def final_val_loss(row: dict) -> float | None:
    """A quality row's last validation loss (`val_loss` is a number or {step: loss})."""
    loss = row.get("val_loss")
    if isinstance(loss, dict):
        return loss[max(loss, key=int)] if loss else None
    return loss


def resolve(refs: list[str], by_ref: dict[str, dict]) -> list[dict]:
    missing = [ref for ref in refs if ref not in by_ref]
    if missing:
        raise SystemExit(f"levers.json names rows results.jsonl does not hold: {missing}")
    return [by_ref[ref] for ref in refs]


def levers_table(rows: list[dict], levers: list[dict]) -> list[str]:
    """One line per lever: the mean tok/s of its `before` and `after` rows, memory, loss."""
    by_ref = {r["ref"]: r for r in rows}
    lines = header("lever", "what changes", "config", "GPU", "before tok/s", "after tok/s",
                   "change", "memory", "final val loss", "rows")
    for lever in levers:
        before, after = resolve(lever["before"], by_ref), resolve(lever["after"], by_ref)
        mean = [sum(r["tokens_per_sec"] for r in side) / len(side) for side in (before, after)]
        memory = [side[0].get("peak_memory_gib") for side in (before, after)]
        losses = [final_val_loss(side[0]) for side in (before, after)]
        lines.append(cells([
            f"`{lever['lever']}`", lever["what"], after[0]["config"], after[0]["gpu"],
            number(mean[0]), number(mean[1]), f"**{percent(mean[1], mean[0])}**",
            f"{memory[0]:.1f} -> {memory[1]:.1f} GiB" if None not in memory else "",
            f"{losses[0]:.4f} -> {losses[1]:.4f}" if None not in losses else "",
            ", ".join(lever["before"]) + " -> " + ", ".join(lever["after"])]))
    return lines


def current(rows: list[dict], curation: dict) -> list[dict]:
    not_current = {ref for entry in curation["not_current"] for ref in entry["rows"]}
    resolve(sorted(not_current), {r["ref"]: r for r in rows})
    return current_rows(rows, not_current)


def readme_table(rows: list[dict], curation: dict) -> str:
    """README's one performance table: each config's current figures on one GPU beside llm.c."""
    lines = header("one H100 80GB", "steps", "run as", "gpt2_jax tok/s", "llm.c tok/s",
                   "vs llm.c")
    for r in current(rows, curation):
        beside = llmc_rows(r, rows)
        if r["gpu"] == README_GPU and beside:
            lines.append(cells([
                r["config"], f"{r['tokens_per_step']:,} tokens", run_as(r),
                number(r["tokens_per_sec"]),
                " / ".join(number(b["tokens_per_sec"]) for b in beside),
                " / ".join(f"**{percent(r['tokens_per_sec'], b['tokens_per_sec'])}**"
                           for b in beside)]))
    return "\n".join(lines)


def with_readme_table(readme: str, table: str) -> str:
    """`readme` with the text between README_START and README_END replaced by `table`."""
    head, start, rest = readme.partition(README_START)
    _, end, tail = rest.partition(README_END)
    if not (start and end):
        raise SystemExit(f"README.md lacks the lines {README_START!r} ... {README_END!r}")
    return f"{head}{start}\n{table}\n{end}{tail}"


INTRO = """# Benchmarks

Generated from [benchmarks/results.jsonl](benchmarks/results.jsonl) by
`python benchmarks/results_table.py --write`; do not edit by hand. To add a measurement, run
`python -m gpt2_jax.bench ... --record` (for inference, `bench --decode ... --record FILE`) and,
for llm.c beside it, `benchmarks/llmc.sh run ...` and `python benchmarks/llmc_result.py LOG
--record` with the same run_id (`$BENCH_RUN_ID`), then regenerate. How the figures were reached
is in the dated notes of [docs/benchmarks/](docs/benchmarks/README.md).

Each row of results.jsonl is one measurement; rows measured in one call on one machine share a
`run_id`, and only rows of one `run_id` are compared here (llm.c beside ours, a lever's before and
after). Throughput is tokens per optimizer step over the mean steady-state step time; MFU is
llm.c's formula against the GPU's dense bf16 peak; memory is what the compiled step needs (step
bench) or the run's peak (loop). The fields a row may carry (`FIELDS` in
`gpt2_jax/bench/results.py`; `mode` says which apply) are at the end.

The tables show, per GPU kind, the newest row of each config and way of running it (the step bench
on device-made tokens; the training loop, `bench --loop`, on real-text shards; FP8 is
`--config.model.fp8=True`), with llm.c's row from the same `run_id` and our gap to it. Rows that
measured a lever, and rows that ran code other than the project's (`not_current` in
[benchmarks/levers.json](benchmarks/levers.json)), are left out.
"""

LEVERS_INTRO = """## Levers

What each lever gave, measured in one `run_id` before and after it: the mean of the rows named on
each side (`RUN_ID#N` is the N-th row of that run_id in results.jsonl). The rows are chosen in
[benchmarks/levers.json](benchmarks/levers.json); the figures come from results.jsonl.
"""


def render(rows: list[dict], curation: dict) -> str:
    current_ = current(rows, curation)
    out = [INTRO.rstrip()]
    for gpu in GPUS:
        ours = [r for r in current_ if r["gpu"] == gpu]
        decode, serve = decode_table(rows, gpu), serve_table(rows, gpu)
        quality, evals = quality_table(rows, gpu), eval_table(rows, gpu)
        if not (ours or decode or serve or quality or evals):
            continue
        out += ["", f"## {gpu}"]
        if ours:
            out += ["", "### Training", "", *training_table(rows, ours)]
        if quality:
            out += ["", "### Quality (training runs on real text)", "", *quality]
        if decode:
            out += ["", "### Decoding (`bench --decode`)", "", *decode]
        if serve:
            out += ["", "### Serving (the OpenAI-compatible server under concurrent clients)", "",
                    *serve]
        if evals:
            out += ["", "### Evaluation (the CORE scorer, `benchmarks/core_bundle.py`)", "",
                    *evals]
    out += ["", LEVERS_INTRO.rstrip(), "", *levers_table(rows, curation["levers"])]
    out += ["", "## Row schema", "", *header("field", "meaning"),
            *(cells([f"`{name}`", meaning]) for name, meaning in FIELDS.items())]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(RESULTS), help="the rows (results.jsonl)")
    parser.add_argument("--levers", default=str(LEVERS), help="levers and rows left out")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", action="store_true",
                       help=f"write {OUTPUT.name} and the table in {README.name}")
    group.add_argument("--check", action="store_true",
                       help=f"exit 1 if {OUTPUT.name} or {README.name}'s table is not current")
    args = parser.parse_args(argv)
    rows, curation = load_rows(args.results), json.loads(Path(args.levers).read_text())
    outputs = {OUTPUT: render(rows, curation),
               README: with_readme_table(README.read_text(), readme_table(rows, curation))}
    if args.write:
        for path, text in outputs.items():
            path.write_text(text)
    elif args.check:
        stale = [p.name for p, text in outputs.items() if not p.exists() or p.read_text() != text]
        if stale:
            raise SystemExit(f"{', '.join(stale)} not what results.jsonl gives: "
                             "run python benchmarks/results_table.py --write")
    else:
        sys.stdout.write(outputs[OUTPUT])


if __name__ == "__main__":
    main()
