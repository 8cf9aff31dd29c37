"""HellaSwag scored as llm.c's dev/data/hellaswag.py does (completion style).

Each example is a context and four endings. Every ending is scored by the model's loss on the
ending's tokens given the context (gpt2_jax.evaluation.scoring, the scorer CORE shares): `acc`
picks the smallest summed loss, `acc_norm` the smallest mean loss per token (the figure llm.c and
our baselines report). The 10,042 validation examples
come from the HellaSwag repository's data/hellaswag_val.jsonl.
"""

from __future__ import annotations

import itertools
import json
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from jax.sharding import Mesh

from gpt2_jax import tokenizer
from gpt2_jax.util import atomic
from gpt2_jax.errors import EvalDataError
from gpt2_jax.evaluation import scoring
from gpt2_jax.model import GPT

URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
CACHE = Path(os.environ.get("GPT2_JAX_CACHE", "~/.cache/gpt2_jax")).expanduser()


def find_or_download(path: str | None = None) -> Path:
    """A local copy of hellaswag_val.jsonl: `path`, the cache, or a one-time download."""
    if path:
        if not Path(path).is_file():
            raise EvalDataError(f"--hellaswag {path}: no such file")
        return Path(path)
    cached = CACHE / "hellaswag_val.jsonl"
    if not cached.exists():
        cached.parent.mkdir(parents=True, exist_ok=True)
        try:
            with urllib.request.urlopen(URL, timeout=30) as response:
                data = response.read()
        except OSError as e:
            raise EvalDataError(
                f"cannot download {URL} ({e}); offline, pass --hellaswag PATH to a copy of "
                f"hellaswag_val.jsonl or place one at {cached}") from None
        atomic.write_bytes(cached, data)
    return cached


def read_examples(path: Path) -> Iterator[dict]:
    """The examples of a hellaswag_val.jsonl; a line that is not one is an error naming it."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                example = json.loads(line)
            except json.JSONDecodeError as e:
                raise EvalDataError(f"{path}:{number}: not a JSON object ({e.msg})") from None
            if not isinstance(example, dict):
                raise EvalDataError(f"{path}:{number}: not a JSON object")
            missing = [key for key in ("ctx", "endings", "label") if key not in example]
            if missing:
                raise EvalDataError(f"{path}:{number}: no {', '.join(map(repr, missing))} field")
            if not isinstance(example["endings"], list) or len(example["endings"]) != 4:
                raise EvalDataError(f"{path}:{number}: 'endings' must be a list of 4 strings")
            yield example


# One example, tokenized: (4 token rows: context + ending, the context length, the correct ending).
Rendered = tuple[list[list[int]], int, int]


def render(example: dict) -> Rendered:
    context = tokenizer.encode(example["ctx"])
    rows = [context + tokenizer.encode(" " + ending) for ending in example["endings"]]
    return rows, len(context), int(example["label"])


def load(path: Path, limit: int | None = None) -> list[Rendered]:
    """The first `limit` (default: all) examples of a hellaswag_val.jsonl, tokenized once (a
    training run scores the same set every `train.hellaswag_every` steps)."""
    return [render(example) for example in itertools.islice(read_examples(path), limit)]


def rows(examples: list[Rendered], block_size: int) -> list[scoring.Row]:
    """Each example's 4 rows for the shared scorer: the ending's tokens are the scored span, and
    an over-long row keeps its ending (the model sees its last `block_size` inputs)."""
    return [scoring.cropped(row, context_len, len(row), block_size + 1)
            for endings, context_len, _ in examples for row in endings]


def score(model: GPT, params, examples: list[Rendered],
          mesh: Mesh | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Summed and mean ending loss, each (examples, 4)."""
    scores = scoring.score_rows(model, params, rows(examples, model.config.block_size), mesh,
                                desc="HellaSwag")
    return scores.summed.reshape(-1, 4), scores.mean.reshape(-1, 4)


def evaluate(model: GPT, params, examples: list[Rendered], mesh: Mesh | None = None) -> dict:
    """acc_norm (as `hellaswag_acc`, the figure llm.c reports) and acc over `examples`."""
    summed, mean = score(model, params, examples, mesh)
    labels = np.array([label for _, _, label in examples])
    return {"hellaswag_acc": float(np.mean(np.argmin(mean, axis=1) == labels)),
            "hellaswag_acc_unnormalized": float(np.mean(np.argmin(summed, axis=1) == labels)),
            "hellaswag_examples": len(examples)}
