"""HellaSwag scored as llm.c's dev/data/hellaswag.py does (completion style).

Each example is a context and four endings. Every ending is scored by the model's loss on the
ending's tokens given the context: `acc` picks the smallest summed loss, `acc_norm` the smallest
mean loss per token (the figure llm.c and our baselines report). The 10,042 validation examples
come from the HellaSwag repository's data/hellaswag_val.jsonl.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from gpt2_jax import tokenizer
from gpt2_jax.parallel import sharding
from gpt2_jax.util import atomic
from gpt2_jax.errors import EvalDataError
from gpt2_jax.model import GPT, GPTConfig
from gpt2_jax.util.progress import progress

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


@functools.cache  # one jitted function per model shape: periodic evals reuse its compilations
def _ending_losses_fn(config: GPTConfig):
    """(params, tokens[R, L], ending mask[R, L]) -> (summed, mean) ending loss per row."""
    model = GPT(config)

    @jax.jit
    def losses(params, tokens_RxL, mask_RxL):
        with sharding.axis_rules():
            logits_RxLxV = model.apply({"params": params}, tokens_RxL[:, :-1])
        log_probs = jax.nn.log_softmax(logits_RxLxV, axis=-1)
        token_loss_RxL = -jnp.take_along_axis(log_probs, tokens_RxL[:, 1:, None], axis=-1)[..., 0]
        mask_RxL = mask_RxL[:, 1:]  # a token is scored where it is the *target*
        summed_R = jnp.sum(token_loss_RxL * mask_RxL, axis=1)
        return summed_R, summed_R / jnp.sum(mask_RxL, axis=1)

    return losses


def score(model: GPT, params, examples: list[Rendered],
          batch_examples: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Summed and mean ending loss, each (examples, 4). Rows are padded to the batch's longest
    in buckets of 32 tokens, so only a few shapes compile. Each batch is read back only after
    the next one is dispatched, so the device never waits for the host's padding work."""
    losses = _ending_losses_fn(model.config)
    summed_all, mean_all = [], []

    def read_back(n_examples: int, result) -> None:
        summed, mean = jax.device_get(result)
        summed_all.append(summed[:4 * n_examples].reshape(-1, 4))
        mean_all.append(mean[:4 * n_examples].reshape(-1, 4))

    in_flight = None
    starts = range(0, len(examples), batch_examples)
    for start in progress(starts, desc="HellaSwag", unit="batch", disable=len(starts) < 10):
        batch = examples[start:start + batch_examples]
        longest = max(len(row) for rows, _, _ in batch for row in rows)
        length = min(-(-longest // 32) * 32, model.config.block_size + 1)
        tokens = np.zeros((4 * batch_examples, length), np.int32)
        mask = np.zeros((4 * batch_examples, length), np.float32)
        mask[len(batch) * 4:, -1] = 1.0  # unused padding rows: keep their mean finite
        for i, (rows, context_len, _) in enumerate(batch):
            for j, row in enumerate(rows):
                cut = max(len(row) - length, 0)  # over-long rows keep their ending
                tokens[4 * i + j, :len(row) - cut] = row[cut:]
                mask[4 * i + j, max(context_len - cut, 1):len(row) - cut] = 1.0
        dispatched = (len(batch), losses(params, tokens, mask))
        if in_flight is not None:
            read_back(*in_flight)
        in_flight = dispatched
    read_back(*in_flight)
    return np.concatenate(summed_all), np.concatenate(mean_all)


def evaluate(model: GPT, params, examples: list[Rendered], batch_examples: int = 16) -> dict:
    """acc_norm (as `hellaswag_acc`, the figure llm.c reports) and acc over `examples`."""
    summed, mean = score(model, params, examples, batch_examples)
    labels = np.array([label for _, _, label in examples])
    return {"hellaswag_acc": float(np.mean(np.argmin(mean, axis=1) == labels)),
            "hellaswag_acc_unnormalized": float(np.mean(np.argmin(summed, axis=1) == labels)),
            "hellaswag_examples": len(examples)}
