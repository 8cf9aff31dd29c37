"""Text to llm.c token shards: FineWeb from the Hugging Face hub, or local .txt/.jsonl/.parquet.

    python -m gpt2_jax.data.prepare fineweb --sample 10BT --out data/fineweb10B
    python -m gpt2_jax.data.prepare fineweb --edu --sample 100BT --out data/edu_fineweb100B
    python -m gpt2_jax.data.prepare files --input 'corpus/*.jsonl' --out data/corpus

Like llm.c's dev/data/fineweb.py: every document is <|endoftext|> followed by its tokens, shards hold
`--shard_size` tokens (documents continue across shard boundaries), and the first shard is the
validation split (`<name>_val_000000.bin`, then `<name>_train_000001.bin`, ...). Tokenization runs
in a process pool. After each shard, `prepare_state.json` records where the next shard starts, so
an interrupted run restarts without redoing finished shards.
"""

from __future__ import annotations

import argparse
import glob
import itertools
import json
import multiprocessing
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from gpt2_jax import tokenizer
from gpt2_jax.util import atomic
from gpt2_jax.data.shards import write_shard
from gpt2_jax.errors import DataError, UserError, exits_on_user_error
from gpt2_jax.util.progress import progress

STATE_FILE = "prepare_state.json"
# Approximate GPT-2 token counts of FineWeb's samples (for the progress bar's ETA).
FINEWEB_SAMPLE_TOKENS = {"10BT": 10e9, "100BT": 100e9, "350BT": 350e9}


def read_local_documents(files: list[str], text_field: str = "text") -> Iterator[str]:
    """Documents of local files in order: a .txt file is one document, a .jsonl line or a
    .parquet row is one (its `text_field`). Anything that is not text (a binary file, a JSON line
    that is not an object, a `text_field` that is not a string) is an error naming the file and
    line (or row), raised here rather than deep in a tokenizer process."""
    for path in files:
        suffix = Path(path).suffix
        if suffix == ".txt":
            try:
                yield Path(path).read_text(encoding="utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}: not UTF-8 text (byte {e.start}); a binary "
                                "file?") from None
        elif suffix == ".jsonl":
            yield from _jsonl_documents(path, text_field)
        elif suffix == ".parquet":
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise UserError("reading .parquet needs pyarrow: pip install pyarrow") from None
            table = pq.read_table(path, columns=[text_field])
            for row, text in enumerate(table.column(text_field).to_pylist()):
                yield _text(text, f"{path}: row {row}", text_field)
        else:
            raise DataError(f"{path}: unsupported file type {suffix!r} (use .txt, .jsonl or .parquet)")


def _jsonl_documents(path: str, text_field: str) -> Iterator[str]:
    with open(path, "rb") as f:
        for line_number, raw in enumerate(f, 1):
            where = f"{path}:{line_number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{where}: not UTF-8 text (byte {e.start} of the line); a "
                                "binary file?") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: not a JSON object with a {text_field!r} field "
                                f"({e})") from None
            if not isinstance(row, dict) or text_field not in row:
                keys = f" with keys {sorted(row)[:5]}" if isinstance(row, dict) else ""
                raise DataError(f"{where}: not a JSON object with a {text_field!r} field "
                                f"(a {type(row).__name__}{keys})")
            yield _text(row[text_field], where, text_field)


def _text(value, where: str, text_field: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{where}: {text_field!r} is a {type(value).__name__}, not a string")
    return value


def read_fineweb_documents(sample: str, edu: bool) -> Iterator[str]:
    """Stream FineWeb (or FineWeb-Edu) `sample-<sample>` from the hub, in the dataset's order."""
    try:
        import datasets
    except ImportError:
        raise UserError("streaming FineWeb needs the `datasets` library: "
                         "pip install -e '.[prepare]'") from None
    repo = "HuggingFaceFW/fineweb-edu" if edu else "HuggingFaceFW/fineweb"
    rows = datasets.load_dataset(repo, name=f"sample-{sample}", split="train", streaming=True)
    return (row["text"] for row in rows)


class ShardWriter:
    """Packs token arrays into fixed-size shards and records, after each shard, where to resume."""

    def __init__(self, out_dir: Path, name: str, shard_size: int, state: dict):
        self.out_dir, self.name, self.shard_size = out_dir, name, shard_size
        self.state = state  # shards written; the next shard starts at token `offset` of doc `next_doc`
        self.buffer = np.empty(shard_size, dtype=np.uint16)
        self.filled = 0

    def shard_path(self, index: int) -> Path:
        split = "val" if index == 0 else "train"
        return self.out_dir / f"{self.name}_{split}_{index:06d}.bin"

    def add(self, doc_index: int, tokens: np.ndarray, doc_offset: int = 0) -> None:
        """Append document `doc_index`'s tokens from position `doc_offset` on."""
        start = 0
        while start < len(tokens):
            take = min(self.shard_size - self.filled, len(tokens) - start)
            self.buffer[self.filled:self.filled + take] = tokens[start:start + take]
            self.filled += take
            start += take
            if self.filled == self.shard_size:
                ends_here = start == len(tokens)
                self._flush(next_doc=doc_index + 1 if ends_here else doc_index,
                            offset=0 if ends_here else doc_offset + start)

    def close(self) -> None:
        """Write the last, partial shard and mark the run complete. An input that fits in one
        shard would leave only the val shard, and nothing to train on: its first tenth becomes
        the val shard and the rest a train shard, with a warning."""
        if self.filled and self.state["shards"] == 0:
            n_val = max(1, self.filled // 10)
            print(f"warning: the input holds {self.filled:,} tokens, less than one --shard_size "
                  f"({self.shard_size:,}): wrote the first {n_val:,} as the val shard and the "
                  f"other {self.filled - n_val:,} as one train shard (a smaller --shard_size "
                  "makes more shards)", file=sys.stderr)
            write_shard(self.shard_path(0), self.buffer[:n_val])
            self.buffer[:self.filled - n_val] = self.buffer[n_val:self.filled].copy()
            self.filled -= n_val
            self.state["shards"] = 1
        if self.filled:
            self._flush(next_doc=None, offset=0)
        self.state["complete"] = True
        self._save_state()

    def _flush(self, next_doc, offset: int) -> None:
        write_shard(self.shard_path(self.state["shards"]), self.buffer[:self.filled])
        self.state.update(shards=self.state["shards"] + 1, next_doc=next_doc, offset=offset)
        self.filled = 0
        self._save_state()

    def _save_state(self) -> None:
        atomic.write_text(self.out_dir / STATE_FILE, json.dumps(self.state, indent=2) + "\n")


def load_state(out_dir: Path, source: dict) -> dict:
    """The resume state of a previous run into `out_dir`, or a fresh one.

    A previous run with different arguments is an error: mixing them would corrupt the shards.
    """
    path = out_dir / STATE_FILE
    if not path.exists():
        return {"source": source, "shards": 0, "next_doc": 0, "offset": 0, "complete": False}
    state = json.loads(path.read_text())
    if state["source"] != source:
        raise DataError(f"{out_dir} holds shards prepared with {state['source']}, not {source}; "
                         "use another --out directory or delete it")
    return state


def prepare(documents: Iterable[str], out_dir: str | Path, name: str, source: dict,
            shard_size: int = 100_000_000, workers: int | None = None,
            progress_total: float | None = None, progress_unit: str = "tokens") -> dict:
    """Tokenize `documents` into shards under `out_dir`, resuming a previous interrupted run.

    The progress bar counts `progress_unit` ("tokens" or input "bytes") out of `progress_total`.
    Returns the final state (shards written, complete).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = load_state(out_dir, {**source, "shard_size": shard_size})
    if state["complete"]:
        print(f"{out_dir}: all {state['shards']} shards already prepared", file=sys.stderr)
        return state
    if state["shards"]:
        print(f"{out_dir}: resuming after {state['shards']} finished shards "
              f"(document {state['next_doc']})", file=sys.stderr)
    writer = ShardWriter(out_dir, name, shard_size, state)
    first_doc, first_offset = state["next_doc"], state["offset"]
    texts = itertools.islice(documents, first_doc, None)
    workers = workers or max(1, (os.cpu_count() or 2) - 1)
    bar = progress(total=progress_total, unit=progress_unit, desc=name)
    n_tokens = n_docs = 0
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        docs = pool.imap(_tokenize_and_measure, texts, chunksize=16)
        for doc_index, (n_bytes, tokens) in enumerate(docs, start=first_doc):
            offset = first_offset if doc_index == first_doc else 0
            writer.add(doc_index, tokens[offset:], doc_offset=offset)
            n_tokens += len(tokens) - offset
            n_docs += 1
            bar.update(n_bytes if progress_unit == "bytes" else len(tokens) - offset)
            bar.set_postfix(docs=doc_index + 1, tokens=f"{n_tokens:,}", shards=state["shards"],
                            refresh=False)
    if not state["shards"] and n_tokens == n_docs:  # <|endoftext|> per document, and nothing else
        bar.close()
        raise DataError(f"no text to tokenize in {source.get('files', source)} "
                        f"({n_docs} document(s), all empty); nothing written")
    writer.close()
    bar.total = bar.n  # the input's size was an estimate (JSON/parquet overhead): end at 100%
    bar.close()
    print(f"{out_dir}: {state['shards']} shards", file=sys.stderr)
    return state


def _tokenize_and_measure(text: str) -> tuple[int, np.ndarray]:
    return len(text.encode("utf-8")), tokenizer.tokenize_document(text)


@exits_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gpt2_jax.data.prepare",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="source", required=True)
    hub = sub.add_parser("fineweb", help="stream FineWeb or FineWeb-Edu from the Hugging Face hub")
    hub.add_argument("--sample", default="10BT", choices=sorted(FINEWEB_SAMPLE_TOKENS))
    hub.add_argument("--edu", action="store_true", help="FineWeb-Edu instead of FineWeb")
    files = sub.add_parser("files", help="local .txt / .jsonl / .parquet files")
    files.add_argument("--input", required=True, help="glob pattern of input files")
    files.add_argument("--text_field", default="text", help="JSON/parquet field holding the text")
    files.add_argument("--name", default=None, help="shard file prefix (default: the --out name)")
    for p in (hub, files):
        p.add_argument("--out", required=True, help="output directory")
        p.add_argument("--shard_size", type=int, default=100_000_000, help="tokens per shard")
        p.add_argument("--workers", type=int, default=None, help="tokenizer processes")
    args = parser.parse_args(argv)

    if args.source == "fineweb":
        name = "edu_fineweb" if args.edu else "fineweb"
        source = {"dataset": name, "sample": args.sample}
        documents = read_fineweb_documents(args.sample, args.edu)
        total, unit = FINEWEB_SAMPLE_TOKENS[args.sample], "tokens"
    else:
        paths = sorted(glob.glob(os.path.expanduser(args.input)))
        if not paths:
            parser.error(f"no files match {args.input!r}")
        name = args.name or Path(args.out).name
        source = {"files": paths, "text_field": args.text_field}
        documents = read_local_documents(paths, args.text_field)
        total, unit = sum(os.path.getsize(p) for p in paths), "bytes"
    try:
        prepare(documents, args.out, name, source, shard_size=args.shard_size,
                workers=args.workers, progress_total=total, progress_unit=unit)
    except DataError as e:  # unreadable input: name the file and line, keep finished shards
        if not any(Path(args.out).glob("*.bin")):
            raise
        raise DataError(f"{e}; shards finished so far are kept, and a rerun resumes after "
                        "them") from None


if __name__ == "__main__":
    main()
