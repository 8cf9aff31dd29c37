"""The DCLM CORE metric (arXiv:2406.11794) with the semantics of nanochat's core_eval.py.

An eval bundle holds `core.yaml` (the tasks: label, icl_task_type, num_fewshot,
continuation_delimiter, dataset_uri), `eval_meta_data.csv` (each task's random baseline, in
percent) and `eval_data/*.jsonl`. Each task's items are shuffled with `random.Random(1337)` and
cut to `max_per_task`; item `idx` gets `num_fewshot` examples drawn by `random.Random(1234 + idx)`
from the others. Prompts are rendered as nanochat's Jinja templates render them, tokenized with
<|endoftext|> prepended and kept to their last `block_size` tokens. Multiple-choice and schema
items pick the option of lowest mean continuation loss (the continuation being what the options
do not share: their common token prefix, or suffix for schema); a language-modeling item is right
only if greedy argmax reproduces every continuation token. Each task's accuracy is centered on its
baseline, `(acc - b/100) / (1 - b/100)`, and CORE is the mean of the centered accuracies.

Unlike the reference, which runs one item at a time, every row of every task goes through one
batched, sharded scorer (gpt2_jax.evaluation.scoring).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import random
import shutil
import tempfile
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import yaml
from jax.sharding import Mesh

from gpt2_jax import tokenizer
from gpt2_jax.errors import EvalDataError
from gpt2_jax.evaluation import scoring
from gpt2_jax.evaluation.hellaswag import CACHE
from gpt2_jax.model import GPT

URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip"  # nanochat's
TASK_TYPES = ("multiple_choice", "schema", "language_modeling")
# Fields each item of a task type needs.
ITEM_FIELDS = {"multiple_choice": ("query", "choices", "gold"),
               "schema": ("context_options", "continuation", "gold"),
               "language_modeling": ("context", "continuation")}


@dataclasses.dataclass(frozen=True)
class Task:
    label: str
    task_type: str
    num_fewshot: int
    delimiter: str
    baseline: float  # random-guess accuracy, in percent (eval_meta_data.csv)
    items: list[dict]  # in evaluation order: shuffled, then cut to max_per_task


def find_or_download(path: str | None = None) -> Path:
    """The eval bundle's directory: `path`, the cache, or a one-time download of nanochat's
    eval_bundle.zip (unpacked into the cache)."""
    if path:
        if not Path(path).is_dir():
            raise EvalDataError(f"--eval_bundle {path}: no such directory")
        return Path(path)
    cached = CACHE / "eval_bundle"
    if cached.is_dir():
        return cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cached.parent) as scratch:
        archive = Path(scratch) / "eval_bundle.zip"
        try:
            with urllib.request.urlopen(URL, timeout=60) as response, open(archive, "wb") as f:
                shutil.copyfileobj(response, f)
        except OSError as e:
            raise EvalDataError(
                f"cannot download {URL} ({e}); offline, pass --eval_bundle PATH to an unpacked "
                f"copy (core.yaml, eval_meta_data.csv, eval_data/) or place one at {cached}"
            ) from None
        with zipfile.ZipFile(archive) as z:
            z.extractall(scratch)
        Path(scratch, "eval_bundle").rename(cached)  # complete, or absent
    return cached


def _read_baselines(path: Path) -> dict[str, float]:
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise EvalDataError(f"{path}: cannot read ({e.strerror})") from None
    try:
        return {row["Eval Task"]: float(row["Random baseline"]) for row in rows}
    except (KeyError, TypeError, ValueError) as e:
        raise EvalDataError(f"{path}: needs 'Eval Task' and numeric 'Random baseline' columns "
                            f"({type(e).__name__}: {e})") from None


def _read_items(path: Path, task_type: str) -> list[dict]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise EvalDataError(f"{path}: cannot read ({e.strerror})") from None
    items = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise EvalDataError(f"{path}:{number}: not a JSON object ({e.msg})") from None
        missing = [k for k in ITEM_FIELDS[task_type] if not isinstance(item, dict) or k not in item]
        if missing:
            raise EvalDataError(f"{path}:{number}: a {task_type} item needs "
                                f"{', '.join(map(repr, missing))}")
        items.append(item)
    return items


def load_bundle(directory: str | Path, max_per_task: int = 0) -> list[Task]:
    """The bundle's tasks in core.yaml's order, each with at most `max_per_task` items (0 = all)."""
    directory = Path(directory)
    config_path = directory / "core.yaml"
    try:
        config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except OSError as e:
        raise EvalDataError(f"{config_path}: cannot read ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise EvalDataError(f"{config_path}: not YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(config, dict) or not isinstance(config.get("icl_tasks"), list):
        raise EvalDataError(f"{config_path}: no 'icl_tasks' list")
    baselines = _read_baselines(directory / "eval_meta_data.csv")
    tasks = []
    for spec in config["icl_tasks"]:
        try:
            label, task_type = spec["label"], spec["icl_task_type"]
            num_fewshot, uri = spec["num_fewshot"][0], spec["dataset_uri"]
        except (KeyError, TypeError, IndexError):
            raise EvalDataError(f"{config_path}: each task needs label, icl_task_type, "
                                f"dataset_uri and a num_fewshot list (got {spec!r})") from None
        if task_type not in TASK_TYPES:
            raise EvalDataError(f"{config_path}: task {label}: icl_task_type {task_type!r} is "
                                f"none of {', '.join(TASK_TYPES)}")
        if label not in baselines:
            raise EvalDataError(f"{directory / 'eval_meta_data.csv'}: no random baseline for "
                                f"task {label!r}")
        items = _read_items(directory / "eval_data" / uri, task_type)
        random.Random(1337).shuffle(items)
        tasks.append(Task(label, task_type, int(num_fewshot), spec.get("continuation_delimiter", " "),
                          baselines[label], items[:max_per_task] if max_per_task > 0 else items))
    return tasks


def fewshot_examples(items: list[dict], idx: int, k: int) -> list[dict]:
    """`k` other items of the task, drawn as the reference draws them (seeded by the index)."""
    if k == 0:
        return []
    others = [i for i in range(len(items)) if i != idx]
    return [items[i] for i in random.Random(1234 + idx).sample(others, k)]


def render(task: Task, idx: int) -> list[str]:
    """The prompts of item `idx`, as nanochat's templates render them: one per option for
    multiple choice and schema; for language modeling, the prompt without the continuation
    (stripped) and with it."""
    item, d = task.items[idx], task.delimiter
    shots = fewshot_examples(task.items, idx, task.num_fewshot)
    if task.task_type == "multiple_choice":
        prefix = "".join(f"{s['query']}{d}{s['choices'][s['gold']]}\n\n" for s in shots)
        return [f"{prefix}{item['query']}{d}{choice}" for choice in item["choices"]]
    if task.task_type == "schema":
        prefix = "".join(f"{s['context_options'][s['gold']]}{d}{s['continuation']}\n\n"
                         for s in shots)
        return [f"{prefix}{option}{d}{item['continuation']}" for option in item["context_options"]]
    prefix = "".join(f"{str(s['context']).strip()}{d}{s['continuation']}\n\n" for s in shots)
    without = f"{prefix}{str(item['context']).strip()}{d}"
    return [without.strip(), f"{without}{item['continuation']}"]


def _common_length(rows: list[list[int]], from_end: bool) -> int:
    """Length of the token prefix (or suffix) all rows share."""
    n = 0
    for column in zip(*(reversed(r) if from_end else r for r in rows)):
        if any(token != column[0] for token in column):
            break
        n += 1
    return n


def item_rows(task: Task, tokens: list[list[int]], max_tokens: int) -> list[scoring.Row]:
    """The scored rows of one item from its tokenized prompts (<|endoftext|> first): the
    continuation is what the options do not share, or for language modeling what the prompt
    without it lacks."""
    if task.task_type == "multiple_choice":
        start = _common_length(tokens, from_end=False)
        spans = [(start, len(t)) for t in tokens]
    elif task.task_type == "schema":
        suffix = _common_length(tokens, from_end=True)
        spans = [(len(t) - suffix, len(t)) for t in tokens]
    else:
        without, with_ = tokens
        if not (len(without) < len(with_) and with_[:len(without)] == without):
            raise EvalDataError(f"task {task.label}: an item's prompt without its continuation "
                                f"does not tokenize to a prefix of the prompt with it")
        tokens, spans = [with_], [(len(without), len(with_))]
    return [scoring.cropped(t, start, end, max_tokens) for t, (start, end) in zip(tokens, spans)]


@dataclasses.dataclass(frozen=True)
class Prepared:
    """The bundle's tasks tokenized once (a training run scores the same rows every
    `train.core_every` steps): every task's rows in order, and which task each belongs to."""

    tasks: list[Task]
    rows: list[scoring.Row]
    task_of_row: np.ndarray


def prepare(tasks: list[Task], max_tokens: int) -> Prepared:
    """Every task's items rendered, tokenized and cut to rows of at most `max_tokens` tokens."""
    encoder = tokenizer.get_tokenizer()
    rows, task_of_row = [], []
    for t, task in enumerate(tasks):
        prompts = [render(task, i) for i in range(len(task.items))]
        flat = encoder.encode_ordinary_batch([p for ps in prompts for p in ps])
        offset = 0
        for ps in prompts:
            tokens = [[tokenizer.EOT_TOKEN, *ids] for ids in flat[offset:offset + len(ps)]]
            offset += len(ps)
            item = item_rows(task, tokens, max_tokens)
            rows += item
            task_of_row += [t] * len(item)
    return Prepared(tasks, rows, np.array(task_of_row, dtype=np.int64))


def correct(task: Task, scores: scoring.Scores) -> np.ndarray:
    """Per item of `task` (given its rows' scores, in order), whether the model got it right."""
    if task.task_type == "language_modeling":
        return scores.greedy
    picked, offset = [], 0
    for item in task.items:
        n = len(item["choices" if task.task_type == "multiple_choice" else "context_options"])
        picked.append(int(np.argmin(scores.mean[offset:offset + n])) == item["gold"])
        offset += n
    return np.array(picked)


def centered(accuracy: float, baseline: float) -> float:
    return (accuracy - 0.01 * baseline) / (1.0 - 0.01 * baseline)


def evaluate(model: GPT, params, prepared: Prepared, mesh: Mesh | None = None,
             batch_tokens: int = 2**15) -> dict:
    """`core` (the mean centered accuracy), `core/<label>` (each task's centered accuracy) and
    `core_accuracy/<label>`; all tasks' rows are scored in one pass."""
    scores = scoring.score_rows(model, params, prepared.rows, mesh, batch_tokens, desc="CORE")
    results: dict = {}
    for t, task in enumerate(prepared.tasks):
        mine = prepared.task_of_row == t
        accuracy = float(np.mean(correct(task, scoring.Scores(
            scores.summed[mine], scores.mean[mine], scores.greedy[mine])))) if task.items else 0.0
        results[f"core_accuracy/{task.label}"] = accuracy
        results[f"core/{task.label}"] = centered(accuracy, task.baseline)
    results["core"] = float(np.mean([results[f"core/{t.label}"] for t in prepared.tasks]))
    return results


def table(results: dict, tasks: list[Task]) -> str:
    """The per-task table and the CORE figure, as text."""
    width = max([len(t.label) for t in tasks] + [4])
    lines = [f"{'task':<{width}}  {'accuracy':>8}  {'centered':>8}"]
    lines += [f"{t.label:<{width}}  {results[f'core_accuracy/{t.label}']:>8.4f}  "
              f"{results[f'core/{t.label}']:>8.4f}" for t in tasks]
    lines.append(f"{'CORE':<{width}}  {'':>8}  {results['core']:>8.4f}")
    return "\n".join(lines)
