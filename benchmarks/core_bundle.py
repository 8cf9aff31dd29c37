"""Time the CORE evaluator on a generated bundle of the real one's shape.

The real eval bundle cannot be downloaded everywhere, and its timing depends only on its shape:
22 tasks of the three types, each task's few-shot count, delimiter, option count and prompt
lengths like DCLM's core.yaml tasks, 1,000 items each. The text is random words of the shipped
Shakespeare, so the scores mean nothing; the forward passes are the real workload.

    python benchmarks/core_bundle.py --out /tmp/core_bundle                 # generate only
    python benchmarks/core_bundle.py --out /tmp/core_bundle \\
        --time configs/gpt2_124m.py [--passes 1] [--record benchmarks/results.jsonl]

Timing uses randomly initialized weights of each config's model, rows split over all devices.
Each config is scored `--passes` times (default 2): the first pass includes compilation, the
last is reported.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import time
from pathlib import Path

import jax
import yaml

from gpt2_jax import tokenizer
from gpt2_jax.bench import results
from gpt2_jax.parallel import sharding
from gpt2_jax.config import load_config, model_config
from gpt2_jax.evaluation import core
from gpt2_jax.model import GPT, init_params, param_logical_specs

# label: (type, few-shot, delimiter, words of query/context, options, words per option or
# continuation); the shapes follow the DCLM CORE tasks of the same labels.
TASKS = {
    "hellaswag_zeroshot": ("multiple_choice", 0, " ", 40, 4, 20),
    "jeopardy": ("language_modeling", 10, "\nAnswer: ", 25, 1, 3),
    "bigbench_qa_wikidata": ("language_modeling", 10, " ", 10, 1, 2),
    "arc_easy": ("multiple_choice", 10, "\nAnswer: ", 25, 4, 5),
    "arc_challenge": ("multiple_choice", 10, "\nAnswer: ", 30, 4, 6),
    "copa": ("multiple_choice", 0, " ", 12, 2, 8),
    "commonsense_qa": ("multiple_choice", 10, "\nAnswer: ", 15, 5, 2),
    "piqa": ("multiple_choice", 10, "\nAnswer: ", 12, 2, 20),
    "openbook_qa": ("multiple_choice", 0, " ", 15, 4, 5),
    "lambada_openai": ("language_modeling", 0, " ", 70, 1, 1),
    "hellaswag": ("multiple_choice", 10, " ", 40, 4, 20),
    "winograd": ("schema", 0, " ", 10, 2, 8),
    "winogrande": ("schema", 0, " ", 15, 2, 6),
    "bigbench_dyck_languages": ("language_modeling", 10, " ", 30, 1, 5),
    "agi_eval_lsat_ar": ("multiple_choice", 3, " ", 150, 5, 15),
    "bigbench_cs_algorithms": ("language_modeling", 10, " ", 30, 1, 3),
    "bigbench_operators": ("language_modeling", 10, " ", 15, 1, 2),
    "bigbench_repeat_copy_logic": ("language_modeling", 10, " ", 20, 1, 10),
    "squad": ("language_modeling", 10, " ", 150, 1, 3),
    "coqa": ("language_modeling", 0, " ", 300, 1, 3),
    "boolq": ("multiple_choice", 10, "\nAnswer: ", 100, 2, 1),
    "bigbench_language_identification": ("multiple_choice", 10, " ", 30, 11, 1),
}
BASELINES = {"multiple_choice": 25.0, "schema": 50.0, "language_modeling": 0.0}


def generate_bundle(out: Path, items: int, seed: int = 0) -> None:
    """core.yaml, eval_meta_data.csv and eval_data/<label>.jsonl of TASKS' shapes."""
    words = tokenizer.shipped_text().split()
    rng = random.Random(seed)

    def text(n: int) -> str:
        start = rng.randrange(len(words) - n)
        return " ".join(words[start:start + n])

    (out / "eval_data").mkdir(parents=True, exist_ok=True)
    specs = []
    for label, (task_type, shots, delimiter, query, options, answer) in TASKS.items():
        rows = []
        for _ in range(items):
            if task_type == "multiple_choice":
                rows.append({"query": text(query), "choices": [text(answer) for _ in range(options)],
                             "gold": rng.randrange(options)})
            elif task_type == "schema":
                rows.append({"context_options": [text(query) for _ in range(options)],
                             "continuation": text(answer), "gold": rng.randrange(options)})
            else:
                rows.append({"context": text(query), "continuation": text(answer)})
        (out / "eval_data" / f"{label}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows))
        specs.append({"label": label, "dataset_uri": f"{label}.jsonl", "num_fewshot": [shots],
                      "icl_task_type": task_type, "continuation_delimiter": delimiter})
    (out / "core.yaml").write_text(yaml.safe_dump({"icl_tasks": specs}, sort_keys=False))
    with open(out / "eval_meta_data.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Eval Task", "Random baseline"])
        writer.writerows([label, BASELINES[spec[0]]] for label, spec in TASKS.items())


def random_model(config_path: str, mesh):
    """A config's model and randomly initialized params laid out on `mesh` as a run lays them."""
    c = load_config(config_path)
    model = GPT(model_config(c, devices=mesh.size, tensor=mesh.shape["tensor"]))
    shardings = sharding.logical_sharding(param_logical_specs(model), mesh)
    params = jax.jit(lambda key: init_params(model, key), out_shardings=shardings)(
        jax.random.key(0))
    return model, params


def time_config(config_path: str, bundle: Path, batch_tokens: int, passes: int) -> dict:
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    with jax.set_mesh(mesh):
        model, params = random_model(config_path, mesh)
        started = time.perf_counter()
        tasks = core.load_bundle(bundle)
        prepared = core.prepare(tasks, model.config.block_size)
        prepare_s = time.perf_counter() - started
        seconds = []
        for _ in range(passes):  # the first compiles; the others are the steady state
            started = time.perf_counter()
            result = core.evaluate(model, params, prepared, mesh, batch_tokens)
            seconds.append(time.perf_counter() - started)
    items = sum(len(t.items) for t in tasks)
    tokens = sum(len(r.tokens) for r in prepared.rows)
    device = jax.devices()[0]
    return {"gpu": f"{jax.device_count()}x {device.device_kind}", "items": items,
            "rows": len(prepared.rows), "tokens": tokens, "prepare_s": prepare_s,
            "seconds": seconds[-1], "cold_s": seconds[0], "items_per_sec": items / seconds[-1],
            "tokens_per_sec": tokens / seconds[-1], "core": result["core"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="bundle directory (generated if absent)")
    parser.add_argument("--items", type=int, default=1000, help="items per task")
    parser.add_argument("--time", nargs="*", default=[], metavar="CONFIG",
                        help="config files whose (random) models score the bundle")
    parser.add_argument("--batch_tokens", type=int, default=2**15,
                        help="tokens per device per forward")
    parser.add_argument("--passes", type=int, default=2,
                        help="passes over the bundle per config; the last one is reported (1: "
                             "the first pass, compilation included, as a user's evaluate runs)")
    parser.add_argument("--record", help="append a mode 'eval' row per config to this JSONL file")
    parser.add_argument("--run_id", default=results.default_run_id())
    args = parser.parse_args(argv)
    if args.passes < 1:
        parser.error(f"--passes must be at least 1, not {args.passes}")
    bundle = Path(args.out)
    if not (bundle / "core.yaml").exists():
        generate_bundle(bundle, args.items)
        print(f"wrote a {len(TASKS)}-task bundle of {args.items} items each to {bundle}")
    for config_path in args.time:
        r = time_config(config_path, bundle, args.batch_tokens, args.passes)
        print(f"{Path(config_path).stem} | {r['gpu']} | {r['items']:,} items, {r['rows']:,} rows, "
              f"{r['tokens']:,} tokens | tokenize {r['prepare_s']:.1f} s | first pass "
              f"{r['cold_s']:.1f} s (compiles) | pass {args.passes}: {r['seconds']:.1f} s = "
              f"{r['items_per_sec']:,.0f} items/s, {r['tokens_per_sec']:,.0f} tok/s", flush=True)
        if args.record and jax.process_index() == 0:
            row = {**results.common_fields(Path(config_path).stem, [], "eval", args.run_id,
                                           " ".join(["python", *sys.argv])),
                   "data": "generated CORE bundle",
                   "note": f"{r['rows']:,} rows, {r['tokens']:,} tokens; batch_tokens "
                           f"{args.batch_tokens}; pass {args.passes} of {args.passes} (the "
                           f"first, compilation included: {r['cold_s']:.1f} s)",
                   **{k: round(r[k], 2) for k in ("seconds", "items_per_sec", "tokens_per_sec")},
                   "items": r["items"]}
            results.record(row, args.record)


if __name__ == "__main__":
    main()
