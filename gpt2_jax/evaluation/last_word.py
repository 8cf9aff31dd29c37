"""Build a LAMBADA-style last-word task, in the CORE bundle's format, from held-out text.

    python -m gpt2_jax.evaluation.last_word --shards 'data/fineweb10B/*val*.bin' --out bundles/last_word

Each item is a passage of whole sentences (at least `--context_words` words) from the text; the
continuation is its last word, and the model is right only if greedy decoding reproduces it (a
CORE language-modeling task, zero-shot). As in LAMBADA, a passage is kept only if its last word
already occurred in it, so broad context can predict it. The output is a complete bundle
(core.yaml, eval_meta_data.csv with a baseline of 0, eval_data/<label>.jsonl) for `evaluate
--core --eval_bundle DIR` or `train.core_every` with `train.core_bundle=DIR`. The text is the
documents of token shards (`gpt2_jax.data.prepare`'s output): pass shards the model does not
train on, such as a run's validation split.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
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


def shard_documents(files: list[str]) -> Iterator[str]:
    """The documents of token shards, as text (each starts at an <|endoftext|>)."""
    for path in files:
        tokens = open_shard(path)
        starts = [*np.flatnonzero(tokens == tokenizer.EOT_TOKEN), len(tokens)]
        for start, end in itertools.pairwise(starts):
            yield tokenizer.decode(tokens[start + 1:end])


def passages(documents: Iterable[str], context_words: int) -> Iterator[dict]:
    """{"context", "continuation"} items: runs of consecutive sentences of at least
    `context_words` words whose last word (3+ letters, trailing punctuation dropped) occurred
    earlier in the run."""
    for document in documents:
        run: list[str] = []
        for sentence in SENTENCE_END.split(" ".join(document.split())):
            run.append(sentence)
            text = " ".join(run)
            if len(text.split()) < context_words:
                continue
            run = []
            match = LAST_WORD.match(text)
            if match and re.search(rf"\b{match[2]}\b", match[1], re.IGNORECASE):
                yield {"context": match[1], "continuation": match[2]}


def write_bundle(out: Path, items: list[dict], label: str) -> None:
    (out / "eval_data").mkdir(parents=True, exist_ok=True)
    (out / "eval_data" / f"{label}.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    task = {"label": label, "dataset_uri": f"{label}.jsonl", "num_fewshot": [0],
            "icl_task_type": "language_modeling", "continuation_delimiter": " "}
    (out / "core.yaml").write_text(yaml.safe_dump({"icl_tasks": [task]}, sort_keys=False))
    with open(out / "eval_meta_data.csv", "w", newline="") as f:
        csv.writer(f).writerows([["Eval Task", "Random baseline"], [label, 0]])


@exits_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gpt2_jax.evaluation.last_word",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", required=True, help="glob of held-out token shards")
    parser.add_argument("--out", required=True, help="bundle directory to write")
    parser.add_argument("--items", type=int, default=1000, help="passages to keep (the first N)")
    parser.add_argument("--context_words", type=int, default=60, help="least words per passage")
    parser.add_argument("--label", default="last_word", help="the task's label")
    args = parser.parse_args(argv)
    documents = shard_documents(find_shards(args.shards))
    items = list(itertools.islice(passages(documents, args.context_words), args.items))
    if not items:
        raise DataError(f"--shards {args.shards}: no passage qualifies (too short, or no last "
                        f"word that occurs earlier in its passage)")
    write_bundle(Path(args.out), items, args.label)
    print(f"wrote {len(items)} items of task {args.label!r} to {args.out}")


if __name__ == "__main__":
    main()
