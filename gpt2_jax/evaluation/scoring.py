"""One batched scorer for every likelihood task: the loss and greedy match of a span of tokens.

A task turns each example into rows (token ids with a span `[start, end)` of scored targets); the
scorer returns, per row, the summed and mean loss of those tokens and whether greedy argmax
reproduces all of them. Rows are sorted by length and padded to a few length buckets, so only a
few shapes compile; each batch's rows are split over the mesh's batch axes, and a batch is read
back only after the next one is dispatched, so the devices never wait for the host's padding.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from gpt2_jax.parallel import sharding
from gpt2_jax.model import GPT, GPTConfig
from gpt2_jax.util.progress import progress

MIN_BUCKET = 64  # shortest padded length; the buckets double from here up to the block


@dataclasses.dataclass(frozen=True)
class Row:
    """Token ids and the span of them that is scored: targets `tokens[start:end]`, each predicted
    from the tokens before it (so `start >= 1`)."""

    tokens: np.ndarray
    start: int
    end: int


def cropped(tokens: Sequence[int], start: int, end: int, max_tokens: int) -> Row:
    """A row kept to its last `max_tokens` tokens (the scored span shifted with them): long
    few-shot prompts lose their oldest context, never the continuation."""
    cut = max(len(tokens) - max_tokens, 0)
    return Row(np.asarray(tokens[cut:], np.int32), max(start - cut, 1), end - cut)


@dataclasses.dataclass(frozen=True)
class Scores:
    """Per row: the summed and mean loss (nats) of the scored span, and whether the model's
    argmax predicted every one of its tokens."""

    summed: np.ndarray
    mean: np.ndarray
    greedy: np.ndarray


def bucket_length(n_inputs: int, block_size: int) -> int:
    """The padded input length of a row with `n_inputs` inputs: a power of two from MIN_BUCKET,
    capped at the block."""
    length = MIN_BUCKET
    while length < n_inputs:
        length *= 2
    return min(length, block_size)


@functools.cache  # one jitted function per model and mesh: periodic evals reuse its compilations
def _span_scores_fn(config: GPTConfig, mesh: Mesh | None):
    """(params, tokens[B, L + 1], start[B], end[B]) -> (summed, mean, greedy) per row."""
    model = GPT(config)
    if mesh is None:
        shardings = {}
    else:
        rows = P(("data", "fsdp"))
        shardings = dict(in_shardings=(None, NamedSharding(mesh, P(*rows, None)),
                                       NamedSharding(mesh, rows), NamedSharding(mesh, rows)),
                         out_shardings=NamedSharding(mesh, P()))

    @functools.partial(jax.jit, **shardings)
    def scores(params, tokens_BxL1, start_B, end_B):
        with sharding.axis_rules():
            logits_BxLxV = model.apply({"params": params}, tokens_BxL1[:, :-1])
        targets_BxL = tokens_BxL1[:, 1:]
        target_index_L = jnp.arange(1, tokens_BxL1.shape[1])
        scored_BxL = ((target_index_L >= start_B[:, None]) & (target_index_L < end_B[:, None]))
        target_logit_BxL = jnp.take_along_axis(logits_BxLxV, targets_BxL[..., None], axis=-1)[..., 0]
        loss_BxL = jax.nn.logsumexp(logits_BxLxV, axis=-1) - target_logit_BxL
        summed_B = jnp.sum(jnp.where(scored_BxL, loss_BxL, 0.0), axis=1)
        mean_B = summed_B / jnp.maximum(jnp.sum(scored_BxL, axis=1), 1)
        hit_BxL = jnp.argmax(logits_BxLxV, axis=-1) == targets_BxL
        greedy_B = jnp.all(hit_BxL | ~scored_BxL, axis=1)
        return summed_B, mean_B, greedy_B

    return scores


def _batches(rows: Sequence[Row], block_size: int, parallelism: int, batch_tokens: int):
    """(row indices, padded input length, batch rows) per batch: rows in order of length, each
    batch of one bucket, its row count a multiple of `parallelism` holding about `batch_tokens`
    per device; a bucket's last batch is cut to a power of two times `parallelism`."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].tokens))
    start = 0
    while start < len(order):
        length = bucket_length(len(rows[order[start]].tokens) - 1, block_size)
        chunk = [i for i in order[start:start + parallelism * max(1, batch_tokens // length)]
                 if len(rows[i].tokens) - 1 <= length]  # a prefix: the rows are sorted
        per_device = 1
        while per_device * parallelism < len(chunk):
            per_device *= 2
        yield chunk, length, per_device * parallelism
        start += len(chunk)


def score_rows(model: GPT, params, rows: Sequence[Row], mesh: Mesh | None = None,
               batch_tokens: int = 2**15, desc: str = "scoring") -> Scores:
    """Scores of `rows` (each at most `block_size + 1` tokens), in the order given. With `mesh`,
    each batch's rows are split over its batch axes (every process holds all rows and feeds its
    own slice); without, the jit's default device runs them."""
    block_size = model.config.block_size
    too_long = [len(r.tokens) for r in rows if len(r.tokens) > block_size + 1]
    if too_long:
        raise ValueError(f"a row of {too_long[0]} tokens exceeds block_size + 1 = {block_size + 1}")
    scores_fn = _span_scores_fn(model.config, mesh)
    parallelism = 1 if mesh is None else sharding.batch_parallelism(mesh)
    summed, mean = np.zeros(len(rows), np.float32), np.zeros(len(rows), np.float32)
    greedy = np.zeros(len(rows), bool)

    def dispatch(indices: list[int], length: int, n_rows: int):
        tokens = np.zeros((n_rows, length + 1), np.int32)
        span = np.zeros((2, n_rows), np.int32)  # padding rows score nothing
        for k, i in enumerate(indices):
            row = rows[i]
            tokens[k, :len(row.tokens)] = row.tokens
            span[:, k] = row.start, row.end
        operands = (tokens, span[0], span[1])
        if mesh is not None:
            per_process = n_rows // jax.process_count()
            local = slice(jax.process_index() * per_process, (jax.process_index() + 1) * per_process)
            operands = tuple(sharding.to_global_array(x[local], NamedSharding(
                mesh, P(("data", "fsdp"), *([None] * (x.ndim - 1))))) for x in operands)
        return indices, scores_fn(params, *operands)

    def read_back(indices: list[int], result) -> None:
        s, m, g = jax.device_get(result)
        summed[indices], mean[indices], greedy[indices] = (s[:len(indices)], m[:len(indices)],
                                                           g[:len(indices)])

    batches = list(_batches(rows, block_size, parallelism, batch_tokens))
    in_flight = None
    for batch in progress(batches, desc=desc, unit="batch", disable=len(batches) < 10):
        dispatched = dispatch(*batch)
        if in_flight is not None:
            read_back(*in_flight)
        in_flight = dispatched
    if in_flight is not None:
        read_back(*in_flight)
    return Scores(summed, mean, greedy)
