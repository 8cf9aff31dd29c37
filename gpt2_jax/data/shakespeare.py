"""Shards of the Tiny Shakespeare text the package ships: the default run's data, no download."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gpt2_jax import tokenizer
from gpt2_jax.data.shards import write_shard

VAL_TOKENS = 32768  # llm.c's tinyshakespeare.py: the first 32,768 tokens are validation


def prepare_shakespeare(out_dir: str | Path) -> tuple[str, str]:
    """Tokenize the shipped text once into train/val shards under `out_dir`; return both paths.

    Like llm.c, each blank-line-separated passage is a document preceded by <|endoftext|>.
    """
    out_dir = Path(out_dir)
    train_path, val_path = out_dir / "shakespeare_train.bin", out_dir / "shakespeare_val.bin"
    if not (train_path.exists() and val_path.exists()):
        out_dir.mkdir(parents=True, exist_ok=True)
        tokens = np.concatenate([tokenizer.tokenize_document(passage + "\n\n")
                                 for passage in tokenizer.shipped_text().split("\n\n")])
        write_shard(val_path, tokens[:VAL_TOKENS])
        write_shard(train_path, tokens[VAL_TOKENS:])
    return str(train_path), str(val_path)
