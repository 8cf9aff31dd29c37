"""llm.c's token shard format: a 256 x int32 header, then the tokens as uint16.

Header: magic 20240520, version 1, token count, the rest zero (little-endian). Shards written here
train llm.c, and llm.c's shards train us. Every check names the file and what is wrong with it.
"""

from __future__ import annotations

import glob
import os

import numpy as np

from gpt2_jax.util import atomic
from gpt2_jax.errors import ShardError

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4


def write_shard(path: str | os.PathLike, tokens: np.ndarray) -> None:
    """Write `tokens` as one shard, atomically: processes of one run that prepare the same shard
    on a shared disk (the shipped text, on every host) each rename a whole file into place."""
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= 2**16):
        raise ValueError(f"{path}: token ids must fit in uint16 for shard version {VERSION}")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = (MAGIC, VERSION, tokens.size)
    atomic.write_bytes(path, header.tobytes(), tokens.astype("<u2").tobytes())


def read_token_count(path: str | os.PathLike) -> int:
    """Validate a shard's header against its size and return its token count."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            header = np.frombuffer(f.read(HEADER_BYTES), dtype="<i4")
    except OSError as e:
        raise ShardError(f"{path}: cannot read shard ({e.strerror})") from e
    if header.size < HEADER_INTS:
        raise ShardError(f"{path}: file is {size} bytes, shorter than the {HEADER_BYTES}-byte header")
    if header[0] != MAGIC:
        raise ShardError(f"{path}: bad magic number {header[0]} (expected {MAGIC}); "
                         "not an llm.c token shard")
    if header[1] != VERSION:
        raise ShardError(f"{path}: unsupported shard version {header[1]} (expected {VERSION}, "
                         "uint16 GPT-2 tokens)")
    n_tokens = int(header[2])
    expected = HEADER_BYTES + 2 * n_tokens
    if n_tokens < 0 or size != expected:
        raise ShardError(f"{path}: header says {n_tokens} tokens ({expected} bytes) but the file is "
                         f"{size} bytes; truncated or corrupt")
    return n_tokens


def open_shard(path: str | os.PathLike) -> np.memmap:
    """Memory-map a validated shard's tokens (nothing is read into RAM until it is indexed)."""
    n_tokens = read_token_count(path)
    return np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(n_tokens,))


def find_shards(pattern: str) -> list[str]:
    """Sorted files matching a glob pattern; an empty match is an error naming the pattern."""
    files = sorted(glob.glob(os.path.expanduser(pattern)))
    if not files:
        raise ShardError(f"no shard files match {pattern!r}; make them with `python -m "
                         "gpt2_jax.data.prepare` (README: Data)")
    return files
