"""The grain input pipeline: (seq_len + 1)-token windows of memory-mapped shards, in batches.

Ordering semantics (what a resumed or multi-host run relies on):
- Window i of an epoch is tokens [i*T, i*T + T + 1) of one shard (T = seq_len); windows never cross
  shards, consecutive windows share one token, so every token is a target once per epoch.
- Each epoch is a fresh seeded permutation of all windows of all shards (grain's shuffle, reseeded
  per epoch by the repeat), so the order depends only on `train.seed` and the files.
- Global batch s holds permuted windows [s*G, (s+1)*G), G = accum x global micro-batch. Process p
  of P reads every P-th of them (its rows of the data-parallel batch) and nothing else.
- The iterator's state is one index (grain's get_state/set_state): restoring it replays exactly
  the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import grain
import jax
import numpy as np

from gpt2_jax.data.shards import HEADER_BYTES, read_token_count
from gpt2_jax.errors import ShardError
from gpt2_jax.tokenizer import VOCAB_SIZE


class WindowSource:
    """Random access to every (seq_len + 1)-token window of a list of shards.

    A window is read with pread, not through a memory map: a shard truncated under a running
    trainer (a copy still in progress, a file replaced) is then a short read, an error naming
    the shard, where a memory map would kill the process with SIGBUS and no message."""

    def __init__(self, files: list[str], seq_len: int):
        self._fds: list[int] | None = None  # opened lazily, once per process
        self.files = list(files)
        self.seq_len = seq_len
        windows = []
        for path in self.files:
            n_tokens = read_token_count(path)
            if n_tokens < seq_len + 1:
                raise ShardError(f"{path}: {n_tokens} tokens, fewer than one window of "
                                 f"seq_len + 1 = {seq_len + 1}")
            windows.append((n_tokens - 1) // seq_len)
        self._first_window = np.cumsum([0] + windows)

    def __len__(self) -> int:
        return int(self._first_window[-1])

    def __getitem__(self, index: int) -> np.ndarray:
        if self._fds is None:
            self._fds = [os.open(path, os.O_RDONLY) for path in self.files]
        shard = int(np.searchsorted(self._first_window, index, side="right")) - 1
        start = (int(index) - int(self._first_window[shard])) * self.seq_len
        n_bytes, offset = 2 * (self.seq_len + 1), HEADER_BYTES + 2 * start
        data = os.pread(self._fds[shard], n_bytes, offset)
        if len(data) != n_bytes:
            path = self.files[shard]
            raise ShardError(f"{path}: {os.path.getsize(path)} bytes now, but window {index} "
                             f"needs bytes {offset}-{offset + n_bytes}: the shard shrank while "
                             "this run read it (replaced or truncated?)")
        return np.frombuffer(data, dtype="<u2").astype(np.int32)

    def __getstate__(self):  # file descriptors do not travel to worker processes; they reopen
        return {**self.__dict__, "_fds": None}

    def __del__(self):
        for fd in self._fds or ():
            os.close(fd)


def train_batches(files: list[str], *, seq_len: int, accum_steps: int, local_batch: int,
                  seed: int, num_threads: int = 8, prefetch: int = 16,
                  process_index: int | None = None, process_count: int | None = None):
    """Endless iterator of this process's (accum, local_batch, seq_len + 1) int32 batches.

    Returns a grain DatasetIterator: `get_state()` / `set_state()` checkpoint its position.
    """
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    ds = grain.MapDataset.source(WindowSource(files, seq_len)).shuffle(seed=seed).repeat()
    ds = ds[process_index::process_count].batch(accum_steps * local_batch, drop_remainder=True)
    ds = ds.map(lambda b: b.reshape(accum_steps, local_batch, seq_len + 1))
    options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
    return iter(ds.to_iter_dataset(options))


def eval_batches(files: list[str], *, seq_len: int, local_batch: int, max_batches: int,
                 process_index: int | None = None,
                 process_count: int | None = None) -> grain.MapDataset:
    """The first `max_batches` (local_batch, seq_len + 1) batches of the shards, in file order."""
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    source = WindowSource(files, seq_len)
    ds = grain.MapDataset.source(source)[process_index::process_count]
    ds = ds.batch(local_batch, drop_remainder=True)
    if len(ds) == 0:
        raise ShardError(f"validation shards {files} hold {len(source)} windows of "
                         f"{seq_len + 1} tokens, fewer than one batch of {local_batch * process_count}")
    return ds[:max_batches]


class SyntheticBatches(Iterator):
    """Uniformly random tokens, for benchmarks and for running a config before its data exists.

    Checkpointable like the grain iterator (its state is the step count).
    """

    def __init__(self, *, seq_len: int, accum_steps: int, local_batch: int, seed: int):
        self.shape = (accum_steps, local_batch, seq_len + 1)
        self.seed = seed
        self.step = 0

    def __next__(self) -> np.ndarray:
        rng = np.random.default_rng((self.seed, jax.process_index(), self.step))
        self.step += 1
        return rng.integers(0, VOCAB_SIZE, size=self.shape, dtype=np.int32)

    def get_state(self) -> dict:
        return {"step": self.step}

    def set_state(self, state: dict) -> None:
        self.step = int(state["step"])
