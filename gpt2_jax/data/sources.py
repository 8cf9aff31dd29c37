"""Which tokens a run trains and validates on: its `data.source` (shards, the shipped Shakespeare
text, or synthetic random tokens) turned into the train iterator and validation batches."""

from __future__ import annotations

from pathlib import Path

import ml_collections

from gpt2_jax.data import pipeline
from gpt2_jax.data.shakespeare import prepare_shakespeare
from gpt2_jax.data.shards import find_shards
from gpt2_jax.parallel.sharding import BatchLayout


def data_files(c: ml_collections.ConfigDict, workdir: Path, split: str) -> list[str]:
    """Shard files of `split` ("train" or "val") for data.source = shards or shakespeare."""
    if c.data.source == "shakespeare":
        return [prepare_shakespeare(workdir / "data")[split == "val"]]
    return find_shards(c.data[f"{split}_files"])


def validation_batches(c: ml_collections.ConfigDict, files: list[str], layout: BatchLayout,
                       max_batches: int):
    """The first `max_batches` validation batches of this process, one micro-batch each."""
    return pipeline.eval_batches(files, seq_len=c.train.seq_len,
                                 local_batch=layout.local_micro_batch, max_batches=max_batches)


def make_data(c: ml_collections.ConfigDict, workdir: Path, layout: BatchLayout, say):
    """(train iterator with get_state/set_state, validation batches or None)."""
    seq_len = c.train.seq_len
    if c.data.source == "synthetic":
        say("data: SYNTHETIC random tokens (data.source=synthetic); losses measure nothing real")
        return pipeline.SyntheticBatches(seq_len=seq_len, accum_steps=layout.accum_steps,
                                         local_batch=layout.local_micro_batch,
                                         seed=c.train.seed), None
    train_files, val_files = data_files(c, workdir, "train"), data_files(c, workdir, "val")
    val_batches = validation_batches(c, val_files, layout, c.train.eval_steps)
    say(f"data: {len(train_files)} train shard(s), {len(val_files)} val shard(s)")
    train_batches = pipeline.train_batches(
        train_files, seq_len=seq_len, accum_steps=layout.accum_steps,
        local_batch=layout.local_micro_batch, seed=c.train.seed,
        num_threads=c.data.num_threads, prefetch=c.data.prefetch)
    return train_batches, val_batches
