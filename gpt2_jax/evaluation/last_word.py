"""Build CORE tasks from held-out text: a LAMBADA-style last word, and a next-sentence choice.

    python -m gpt2_jax.evaluation.last_word --shards 'data/fineweb10B/*val*.bin' --out bundles/last_word

Each item comes from a passage of whole sentences (at least `--context_words` words) of the text.
`last_word` (a CORE language-modeling task, zero-shot): the continuation is the passage's last
word, and the model is right only if greedy decoding reproduces it; as in LAMBADA, a passage is
kept only if its last word already occurred in it, so broad context can predict it. A hard task:
small models score near 0 for a long time. `next_sentence` (multiple choice, zero-shot, random
baseline 25%): the passage without its last sentence, and four endings, its own and the last
sentences of three other passages; a model that has learnt anything of the text's topics and
syntax scores above chance early, so the metric moves during short runs. The output is a complete
bundle (core.yaml, eval_meta_data.csv, eval_data/<label>.jsonl) for `evaluate --core
--eval_bundle DIR` or `train.core_every` with `train.core_bundle=DIR`. The text is the documents
of token shards (`gpt2_jax.data.prepare`'s output): pass shards the model does not train on, such
as a run's validation split.
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


def shard_documents(files: list[str]) -> Iterator[str]:
    """The documents of token shards, as text (each starts at an <|endoftext|>)."""
    for path in files:
        tokens = open_shard(path)
        starts = [*np.flatnonzero(tokens == tokenizer.EOT_TOKEN), len(tokens)]
        for start, end in itertools.pairwise(starts):
            yield tokenizer.decode(tokens[start + 1:end])


def sentence_runs(documents: Iterable[str], context_words: int) -> Iterator[list[str]]:
    """Runs of consecutive sentences of at least `context_words` words, each document's in
    order, none overlapping."""
    for document in documents:
        run: list[str] = []
        for sentence in SENTENCE_END.split(" ".join(document.split())):
            run.append(sentence)
            if len(" ".join(run).split()) >= context_words:
                yield run
                run = []


def last_word_item(run: list[str]) -> dict | None:
    """{"context", "continuation"} if the run's last word (3+ letters, trailing punctuation
    dropped) occurred earlier in it, else None."""
    match = LAST_WORD.match(" ".join(run))
    if match and re.search(rf"\b{match[2]}\b", match[1], re.IGNORECASE):
        return {"context": match[1], "continuation": match[2]}
    return None


def next_sentence_items(runs: list[list[str]], options: int = 4, seed: int = 0) -> list[dict]:
    """{"query", "choices", "gold"} per run of two or more sentences: the run without its last
    sentence, and that sentence among the last sentences of `options - 1` other runs."""
    rng = random.Random(seed)
    endings = list(dict.fromkeys(run[-1] for run in runs))
    items = []
    for run in runs:
        others = [e for e in endings if e != run[-1]]
        if len(run) < 2 or len(others) < options - 1:
            continue
        choices = [run[-1], *rng.sample(others, options - 1)]
        rng.shuffle(choices)
        items.append({"query": " ".join(run[:-1]), "choices": choices,
                      "gold": choices.index(run[-1])})
    return items


def write_bundle(out: Path, tasks: dict[str, tuple[str, float, list[dict]]]) -> None:
    """`tasks`: label -> (icl_task_type, random baseline in percent, items), all zero-shot."""
    (out / "eval_data").mkdir(parents=True, exist_ok=True)
    for label, (_, _, items) in tasks.items():
        (out / "eval_data" / f"{label}.jsonl").write_text(
            "".join(json.dumps(i) + "\n" for i in items))
    specs = [{"label": label, "dataset_uri": f"{label}.jsonl", "num_fewshot": [0],
              "icl_task_type": kind, "continuation_delimiter": " "}
             for label, (kind, _, _) in tasks.items()]
    (out / "core.yaml").write_text(yaml.safe_dump({"icl_tasks": specs}, sort_keys=False))
    with open(out / "eval_meta_data.csv", "w", newline="") as f:
        csv.writer(f).writerows([["Eval Task", "Random baseline"],
                                 *([label, baseline] for label, (_, baseline, _) in tasks.items())])


@exits_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gpt2_jax.evaluation.last_word",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", required=True, help="glob of held-out token shards")
    parser.add_argument("--out", required=True, help="bundle directory to write")
    parser.add_argument("--items", type=int, default=1000, help="items per task (the first N)")
    parser.add_argument("--context_words", type=int, default=60, help="least words per passage")
    parser.add_argument("--label", default="last_word", help="the last-word task's label")
    args = parser.parse_args(argv)
    runs = sentence_runs(shard_documents(find_shards(args.shards)), args.context_words)
    last_words, kept_runs = [], []
    for run in runs:
        if len(last_words) >= args.items and len(kept_runs) >= args.items:
            break
        item = last_word_item(run)
        if item and len(last_words) < args.items:
            last_words.append(item)
        if len(run) >= 2:
            kept_runs.append(run)
    next_sentences = next_sentence_items(kept_runs)[:args.items]
    if not last_words or not next_sentences:
        raise DataError(f"--shards {args.shards}: too few passages qualify (too short, of one "
                        f"sentence, or with no last word that occurs earlier in its passage)")
    write_bundle(Path(args.out), {args.label: ("language_modeling", 0, last_words),
                                  "next_sentence": ("multiple_choice", 25, next_sentences)})
    print(f"wrote {len(last_words)} items of task {args.label!r} and {len(next_sentences)} of "
          f"'next_sentence' to {args.out}")

if __name__ == "__main__":
    main()
