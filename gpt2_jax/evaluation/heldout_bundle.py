"""Build CORE tasks from your own held-out text, so a run can watch CORE-style scores move long
before it is good enough for the real bundle.

    python -m gpt2_jax.evaluation.heldout_bundle --shards 'data/fineweb10B/*val*.bin' --out bundles/heldout

The text is the documents of token shards (`gpt2_jax.data.prepare`'s output): pass shards the model
does not train on, such as a run's validation split. Each item starts from a passage of whole,
consecutive sentences (at least `--context_words` words). Two tasks, zero-shot:
- `last_word` (language modeling, baseline 0): the continuation is the passage's last word, right
  only if greedy decoding reproduces it. As in LAMBADA, a passage is kept only if its last word
  already occurred in it, so broad context can predict it.
- `word_order` (multiple choice, baseline 25): after the passage's earlier sentences, pick its real
  last sentence over three copies with the words between its first and last shuffled (so the
  capital and the final punctuation mark none of them out). It is meant to move early in a run,
  while the last word is still out of reach.
The output is a complete bundle (core.yaml, eval_meta_data.csv, eval_data/<label>.jsonl) for
`evaluate --core --eval_bundle DIR` or `train.core_every` with `train.core_bundle=DIR`.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import random
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import yaml

from gpt2_jax import tokenizer
from gpt2_jax.data.shards import find_shards, open_shard
from gpt2_jax.errors import DataError, exits_on_user_error

SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
LAST_WORD = re.compile(r"^(.*\S)\s+([A-Za-z]{3,})[.!?\"']*$", re.DOTALL)
SHUFFLED_CHOICES = 3
SENTENCE_WORDS = (6, 40)  # a last sentence this long (in words) makes a word_order item


def shard_documents(files: list[str]) -> Iterator[str]:
    """The documents of token shards, as text (each starts at an <|endoftext|>)."""
    for path in files:
        tokens = open_shard(path)
        starts = [*np.flatnonzero(tokens == tokenizer.EOT_TOKEN), len(tokens)]
        for start, end in itertools.pairwise(starts):
            yield tokenizer.decode(tokens[start + 1:end])


def sentence_runs(documents: Iterable[str], context_words: int) -> Iterator[list[str]]:
    """Runs of consecutive sentences, each run at least `context_words` words, not overlapping."""
    for document in documents:
        run: list[str] = []
        words = 0
        for sentence in SENTENCE_END.split(" ".join(document.split())):
            run.append(sentence)
            words += len(sentence.split())
            if words >= context_words:
                yield run
                run, words = [], 0


def last_word_item(run: list[str]) -> dict | None:
    """{"context", "continuation"}: the run's last word (3+ letters, trailing punctuation dropped),
    if it occurred earlier in the run."""
    match = LAST_WORD.match(" ".join(run))
    if match and re.search(rf"\b{match[2]}\b", match[1], re.IGNORECASE):
        return {"context": match[1], "continuation": match[2]}
    return None


def word_order_item(run: list[str], seed: int) -> dict | None:
    """{"query", "choices", "gold"}: the run's last sentence among copies with its inner words
    shuffled, after the sentences before it."""
    *before, last = run
    words = last.split()
    if not before or not SENTENCE_WORDS[0] <= len(words) <= SENTENCE_WORDS[1]:
        return None
    rng = random.Random(seed)
    choices = [last]
    first, *inner, final = words  # kept in place: a capital and a full stop would give it away
    for _ in range(100 * SHUFFLED_CHOICES):  # a sentence of repeated words may have few orders
        shuffled = " ".join([first, *rng.sample(inner, len(inner)), final])
        if shuffled not in choices:
            choices.append(shuffled)
        if len(choices) > SHUFFLED_CHOICES:
            break
    else:
        return None
    gold = rng.randrange(len(choices))
    choices[0], choices[gold] = choices[gold], choices[0]
    return {"query": " ".join(before), "choices": choices, "gold": gold}


TASKS = {  # label: (icl_task_type, random baseline in percent)
    "last_word": ("language_modeling", 0),
    "word_order": ("multiple_choice", 100 / (1 + SHUFFLED_CHOICES)),
}


def build(runs: Iterable[list[str]], items: int) -> dict[str, list[dict]]:
    """Up to `items` items of each task, from the runs in order."""
    tasks: dict[str, list[dict]] = {label: [] for label in TASKS}
    for i, run in enumerate(runs):
        for label, item in (("last_word", last_word_item(run)),
                            ("word_order", word_order_item(run, seed=i))):
            if item and len(tasks[label]) < items:
                tasks[label].append(item)
        if all(len(t) == items for t in tasks.values()):
            break
    return tasks


def write_bundle(out: Path, tasks: dict[str, list[dict]]) -> None:
    """Into a new or empty directory: a bundle already there is never overwritten."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"--out {out}: exists and is not an empty directory; choose another")
    (out / "eval_data").mkdir(parents=True, exist_ok=True)
    entries = []
    for label, items in tasks.items():
        (out / "eval_data" / f"{label}.jsonl").write_text(
            "".join(json.dumps(i) + "\n" for i in items))
        entries.append({"label": label, "dataset_uri": f"{label}.jsonl", "num_fewshot": [0],
                        "icl_task_type": TASKS[label][0], "continuation_delimiter": " "})
    (out / "core.yaml").write_text(yaml.safe_dump({"icl_tasks": entries}, sort_keys=False))
    with open(out / "eval_meta_data.csv", "w", newline="") as f:
        csv.writer(f).writerows([["Eval Task", "Random baseline"],
                                 *([label, TASKS[label][1]] for label in tasks)])


@exits_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gpt2_jax.evaluation.heldout_bundle",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", required=True, help="glob of held-out token shards")
    parser.add_argument("--out", required=True, help="bundle directory to write")
    parser.add_argument("--items", type=int, default=1000, help="items per task (the first N)")
    parser.add_argument("--context_words", type=int, default=60, help="least words per passage")
    args = parser.parse_args(argv)
    if args.items < 1:
        raise DataError(f"--items {args.items}: must be at least 1")
    runs = sentence_runs(shard_documents(find_shards(args.shards)), args.context_words)
    tasks = build(runs, args.items)
    empty = [label for label, items in tasks.items() if not items]
    if empty:
        raise DataError(f"--shards {args.shards}: no passage makes an item of {', '.join(empty)} "
                        f"(too little text, or passages shorter than --context_words)")
    write_bundle(Path(args.out), tasks)
    print(f"wrote {', '.join(f'{len(v)} items of {k!r}' for k, v in tasks.items())} to {args.out}")


if __name__ == "__main__":
    main()
