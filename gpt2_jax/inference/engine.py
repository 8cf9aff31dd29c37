"""The decode engine: a fixed number of slots (rows of one batch), continuous batching over them.

The JetStream pattern: a new request is prefilled (its prompt run once, compiled per prompt-length
bucket so a new length does not recompile) and inserted into a free slot of the KV cache, then
decoded with every other live slot by `generate`, a compiled loop of `chunk_steps` tokens with no
host round trip per token. Between chunks the host admits waiting requests into free slots,
checks stop strings, streams text and frees the slots of finished requests. Prefill and insert
are one compiled call here, so a prompt's keys and values never leave the device.

Each slot carries its own prompt length, position, sampling settings, seed and stop conditions;
a slot stops on device at <|endoftext|> or after max_tokens, and the host stops it at a stop
string. Weights are cast to the compute dtype once (bfloat16 on GPU), the cache is preallocated
in it and donated to every call. On a GPU the attention kernel reads each row's filled cache
positions only; elsewhere attention reads a bucket of positions covering the live rows
(multiples of `cache_bucket`).

Meshes: the engine runs on one device. Parameters on a mesh (data-parallel, FSDP or tensor-split,
addressable by this process) are gathered onto its first device. Tensor-parallel decoding is not
implemented, since GPT-2's largest size fits one GPU with the cache of many rows in bfloat16; a
model whose weights and cache do not fit one device is refused with an error saying so. Not
thread-safe: one owner calls it (the server runs it on one thread).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import threading
from collections import Counter, deque
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from gpt2_jax import tokenizer
from gpt2_jax.errors import RequestError, UserError
from gpt2_jax.inference import forward, sampling
from gpt2_jax.model import GPTConfig


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How one sequence is continued. temperature 0 is greedy; top_k 0 and top_p 1 restrict
    nothing; `stop` strings end the text before them; `stop_at_eot` ends it at <|endoftext|>."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    stop_at_eot: bool = True

    def check(self, prompt_tokens: int, block_size: int) -> None:
        """Raise RequestError naming the first field the engine cannot serve."""
        if prompt_tokens < 1:
            raise RequestError("prompt", "must hold at least one token")
        if prompt_tokens >= block_size:
            raise RequestError("prompt", f"{prompt_tokens} tokens leave no room to generate in "
                                         f"the model's context of {block_size}")
        if self.max_tokens < 1:
            raise RequestError("max_tokens", f"must be at least 1, not {self.max_tokens}")
        if prompt_tokens + self.max_tokens > block_size:
            raise RequestError("max_tokens", f"{self.max_tokens} + the prompt's {prompt_tokens} "
                                             f"tokens exceed the model's context of {block_size}")
        if not self.temperature >= 0:
            raise RequestError("temperature", f"must be >= 0, not {self.temperature}")
        if self.top_k < 0:
            raise RequestError("top_k", f"must be >= 0 (0 = no limit), not {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise RequestError("top_p", f"must be in (0, 1], not {self.top_p}")
        if not 0 <= self.seed < 2**32:
            raise RequestError("seed", f"must be in [0, 2**32), not {self.seed}")


@dataclasses.dataclass(eq=False)
class Request:
    """One sequence in the engine. `text` grows as tokens come (held back while its end could
    still be the start of a stop string); `on_update(request, new_text)` is called from the
    engine's thread each time, and once more when it finishes (`finish_reason` set: "stop" or
    "length"; "cancelled", or "error" after a failed step)."""

    prompt: list[int]
    params: SamplingParams
    on_update: Callable[[Request, str], None] | None = None
    tokens: list[int] = dataclasses.field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    cancelled: bool = False

    def cancel(self) -> None:
        """Ask the engine to drop this request (safe from any thread): its slot is freed before
        the next chunk."""
        self.cancelled = True


def _buckets(smallest: int, largest: int, grow: Callable[[int], int]) -> tuple[int, ...]:
    sizes, size = [], smallest
    while size < largest:
        sizes.append(size)
        size = grow(size)
    return (*sizes, largest)


def _bucket(sizes: tuple[int, ...], n: int) -> int:
    return next(size for size in sizes if size >= n)


@functools.partial(jax.jit, static_argnames=("cfg", "dtype", "cap"), donate_argnames=("cache",))
def _prefill_insert(weights, cache, tokens_NxP, slots_N, rows_N, *, cfg, dtype, cap):
    """Prefill N prompts (right-padded to P) into cache slots `slots_N` (an out-of-range slot,
    a padding row, writes nothing) and draw each one's first token."""
    logits_NxV, kv = forward.prefill(weights, tokens_NxP, rows_N["length"], cfg, dtype)
    P = tokens_NxP.shape[1]
    cache = tuple((keys.at[slots_N, :P].set(k, mode="drop"),
                   values.at[slots_N, :P].set(v, mode="drop"))
                  for (keys, values), (k, v) in zip(cache, kv))
    first_N = sampling.sample(logits_NxV, rows_N["seed"], rows_N["length"],
                              rows_N["temperature"], rows_N["top_k"], rows_N["top_p"], cap)
    return cache, first_N


@functools.partial(jax.jit, static_argnames=("cfg", "dtype", "steps", "length", "cap", "kernels"),
                   donate_argnames=("cache",))
def _generate(weights, cache, rows, *, cfg, dtype, steps, length, cap, kernels):
    """`steps` decode steps of every slot in one loop. A live slot feeds its last token at its
    position, draws the next and stops at <|endoftext|> (if asked) or when its budget is spent;
    the others stay as they are. Returns the cache, the slots' state after the loop and the
    tokens drawn, (B, steps), -1 where a slot was not live."""

    def step(i, carry):
        cache, rows, out_BxN = carry
        logits_BxV, cache = forward.decode(weights, cache, rows["token"], rows["pos"], length,
                                           cfg, dtype, dict(kernels))
        next_B = sampling.sample(logits_BxV, rows["seed"], rows["pos"] + 1, rows["temperature"],
                                 rows["top_k"], rows["top_p"], cap)
        live_B = rows["active"]
        remaining_B = rows["remaining"] - live_B
        finished_B = (remaining_B <= 0) | (rows["stop_at_eot"] & (next_B == tokenizer.EOT_TOKEN))
        rows = {**rows, "token": jnp.where(live_B, next_B, rows["token"]),
                "pos": rows["pos"] + live_B, "remaining": remaining_B,
                "active": live_B & ~finished_B}
        return cache, rows, out_BxN.at[:, i].set(jnp.where(live_B, next_B, -1))

    out_BxN = jnp.full((rows["token"].shape[0], steps), -1, jnp.int32)
    return jax.lax.fori_loop(0, steps, step, (cache, rows, out_BxN))


# The per-slot state the compiled calls read, and its dtypes.
_ROW_FIELDS = {"token": np.int32, "pos": np.int32, "active": bool, "remaining": np.int32,
               "seed": np.uint32, "temperature": np.float32, "top_k": np.int32,
               "top_p": np.float32, "stop_at_eot": bool}


def compute_dtype(cfg: GPTConfig, device: jax.Device) -> str:
    """bfloat16 on GPU, whatever the model trained in; the model's own dtype elsewhere."""
    return "bfloat16" if device.platform == "gpu" else cfg.dtype


class Engine:
    """Slots over one KV cache; see the module docstring. `submit` requests, then call `step`
    until it returns False (or use `generate`)."""

    def __init__(self, cfg: GPTConfig, params: Any, *, max_batch: int = 8, chunk_steps: int = 32,
                 cache_bucket: int = 128, device: jax.Device | None = None,
                 kernels: dict[str, bool] | None = None):
        self.cfg, self.max_batch, self.chunk_steps = cfg, max_batch, chunk_steps
        self.device = device or jax.local_devices()[0]
        self.dtype = compute_dtype(cfg, self.device)
        self.kernels = forward.choose_kernels(cfg, self.device, kernels)
        self._check_fits(params)
        self.weights = jax.jit(forward.prepare_weights, static_argnums=(1, 2))(
            jax.device_put(params, self.device), cfg, self.dtype)
        self.cache = jax.device_put(forward.empty_cache(cfg, max_batch, self.dtype), self.device)
        S = cfg.block_size
        self.prefill_lengths = _buckets(min(16, S), S, lambda n: 2 * n)
        self.cache_lengths = _buckets(min(cache_bucket, S), S, lambda n: n + cache_bucket)
        self.prefill_sizes = _buckets(1, max_batch, lambda n: 2 * n)
        self.rows = {name: np.zeros(max_batch, dtype) for name, dtype in _ROW_FIELDS.items()}
        self.slots: list[Request | None] = [None] * max_batch
        self.pending: deque[Request] = deque()
        self.finished: Counter[str] = Counter()  # requests ended, by finish_reason

    def _check_fits(self, params: Any) -> None:
        limit = (self.device.memory_stats() or {}).get("bytes_limit")
        itemsize = jnp.dtype(self.dtype).itemsize
        weights = sum(math.prod(a.shape) for a in jax.tree.leaves(params)) * itemsize
        cfg = self.cfg
        cache = 2 * cfg.n_layer * self.max_batch * cfg.block_size * cfg.n_embd * itemsize
        if limit and weights + cache > limit:
            raise UserError(f"the model's weights ({weights / 2**30:.1f} GiB in {self.dtype}) and "
                            f"a cache of {self.max_batch} rows ({cache / 2**30:.1f} GiB) do not "
                            f"fit one {self.device.device_kind} ({limit / 2**30:.1f} GiB); "
                            "tensor-parallel decoding is not supported: use fewer rows "
                            "(--max_batch) or a device with more memory")

    # -- requests -------------------------------------------------------------------------------
    def submit(self, prompt: list[int], params: SamplingParams,
               on_update: Callable[[Request, str], None] | None = None) -> Request:
        """Queue a request (RequestError if it cannot be served); it joins at the next step."""
        return self.add(Request(list(prompt), params, on_update))

    def add(self, request: Request) -> Request:
        """Queue a Request made elsewhere (the server makes them on its own threads)."""
        request.params.check(len(request.prompt), self.cfg.block_size)
        self.pending.append(request)
        return request

    def generate(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams]
                 ) -> list[Request]:
        """Run `prompts` to completion (one SamplingParams for all, or one each)."""
        params = params if isinstance(params, list) else [params] * len(prompts)
        requests = [self.submit(p, sp) for p, sp in zip(prompts, params)]
        while self.step():
            pass
        return requests

    @property
    def busy(self) -> bool:
        return bool(self.pending) or any(r is not None for r in self.slots)

    def step(self) -> bool:
        """Drop cancelled requests, admit waiting ones into free slots, run one chunk of decode
        steps. Returns whether anything is left to do."""
        self.pending = deque(r for r in self.pending if not self._dropped(r))
        for slot, request in enumerate(self.slots):
            if request is not None and self._dropped(request):
                self._free(slot)
        self.admit()
        if self.rows["active"].any():
            self._run_chunk()
        return self.busy

    def abort(self) -> None:
        """After a failed step: finish every request held with finish_reason "error", free the
        slots and start from an empty cache (a failed call may have consumed the donated one)."""
        for request in [*self.pending, *(r for r in self.slots if r is not None)]:
            self._finish(request, "error")
        self.pending.clear()
        for slot in range(self.max_batch):
            self._free(slot)
        self.cache = jax.device_put(forward.empty_cache(self.cfg, self.max_batch, self.dtype),
                                    self.device)

    def _dropped(self, request: Request) -> bool:
        if request.cancelled and request.finish_reason is None:
            self._finish(request, "cancelled")
        return request.cancelled

    # -- prefill and insert ---------------------------------------------------------------------
    def admit(self) -> None:
        """Prefill waiting requests into free slots (each draws its first token)."""
        free = [slot for slot, r in enumerate(self.slots) if r is None]
        admitted = [self.pending.popleft() for _ in range(min(len(free), len(self.pending)))]
        by_length: dict[int, list[Request]] = {}
        for request in admitted:
            by_length.setdefault(_bucket(self.prefill_lengths, len(request.prompt)), []
                                 ).append(request)
        for length, group in by_length.items():
            slots, free = free[:len(group)], free[len(group):]
            self._prefill(group, slots, length)

    def _prefill(self, group: list[Request], slots: list[int], length: int) -> None:
        n = _bucket(self.prefill_sizes, len(group))
        tokens = np.zeros((n, length), np.int32)
        new = {"length": np.ones(n, np.int32), "seed": np.zeros(n, np.uint32),
               "temperature": np.zeros(n, np.float32), "top_k": np.zeros(n, np.int32),
               "top_p": np.ones(n, np.float32)}
        for i, request in enumerate(group):
            tokens[i, :len(request.prompt)] = request.prompt
            p = request.params
            new["length"][i], new["seed"][i] = len(request.prompt), p.seed
            new["temperature"][i], new["top_k"][i], new["top_p"][i] = (p.temperature, p.top_k,
                                                                       p.top_p)
        slot_ids = np.full(n, self.max_batch, np.int32)  # out of range: padding rows write nothing
        slot_ids[:len(group)] = slots
        cap = sampling.k_cap(new["temperature"], new["top_k"], new["top_p"], self.cfg.vocab_size)
        self.cache, first = _prefill_insert(self.weights, self.cache, tokens, slot_ids, new,
                                            cfg=self.cfg, dtype=self.dtype, cap=cap)
        first = np.asarray(first)
        for i, (request, slot) in enumerate(zip(group, slots)):
            p, token = request.params, int(first[i])
            self.slots[slot] = request
            state = {"token": token, "pos": len(request.prompt), "remaining": p.max_tokens - 1,
                     "seed": p.seed, "temperature": p.temperature, "top_k": p.top_k,
                     "top_p": p.top_p, "stop_at_eot": p.stop_at_eot}
            for name, value in state.items():
                self.rows[name][slot] = value
            stopped = p.stop_at_eot and token == tokenizer.EOT_TOKEN
            self.rows["active"][slot] = not stopped and p.max_tokens > 1
            self._received(slot, [token])

    # -- generate -------------------------------------------------------------------------------
    def _run_chunk(self) -> None:
        live = self.rows["active"]
        # The attention kernel reads each row's filled positions whatever `length` is: one
        # compiled loop serves every length.
        length = self.cfg.block_size if self.kernels["attention"] else _bucket(
            self.cache_lengths,
            min(int(self.rows["pos"][live].max()) + self.chunk_steps, self.cfg.block_size))
        cap = sampling.k_cap(self.rows["temperature"][live], self.rows["top_k"][live],
                             self.rows["top_p"][live], self.cfg.vocab_size)
        self.cache, rows, out = _generate(self.weights, self.cache, self.rows, cfg=self.cfg,
                                          dtype=self.dtype, steps=self.chunk_steps,
                                          length=length, cap=cap,
                                          kernels=tuple(self.kernels.items()))
        rows, out = jax.device_get((rows, out))
        self.rows = {name: np.array(value) for name, value in rows.items()}
        for slot in np.flatnonzero(live):
            self._received(slot, [int(t) for t in out[slot] if t >= 0])

    def _received(self, slot: int, new_tokens: list[int]) -> None:
        """Account a slot's new tokens: text, stop strings, and its end."""
        request = self.slots[slot]
        request.tokens.extend(new_tokens)
        p = request.params
        ended_at_eot = p.stop_at_eot and request.tokens[-1] == tokenizer.EOT_TOKEN
        finished = not self.rows["active"][slot]
        text = tokenizer.decode(request.tokens[:-1] if ended_at_eot else request.tokens)
        stops = [i for i in (text.find(s) for s in p.stop) if i >= 0]
        if stops:
            text, finished = text[:min(stops)], True
        elif not finished:
            text = text[:len(text) - _held_back(text, p.stop)]
        new_text = text[len(request.text):] if text.startswith(request.text) else ""
        request.text += new_text
        if finished:
            reason = "stop" if stops or ended_at_eot else "length"
            self._free(slot)
            self._finish(request, reason, new_text)
        elif new_text and request.on_update:
            request.on_update(request, new_text)

    def _free(self, slot: int) -> None:
        self.slots[slot] = None
        self.rows["active"][slot] = False
        self.rows["pos"][slot] = 0

    def _finish(self, request: Request, reason: str, new_text: str = "") -> None:
        request.finish_reason = reason
        self.finished[reason] += 1
        if request.on_update:
            request.on_update(request, new_text)
        request.done.set()


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many characters at the end of unfinished text to hold back: a partial UTF-8
    character (decoded as U+FFFD) and the longest tail that could begin a stop string."""
    held = len(text) - len(text.rstrip("\ufffd"))
    text = text[:len(text) - held]
    tail = max((n for s in stops for n in range(len(s) - 1, 0, -1) if text.endswith(s[:n])),
               default=0)
    return held + tail


def complete(cfg: GPTConfig, params: Any, prompt: list[int], max_new_tokens: int, *,
             num_samples: int = 1, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             seed: int = 0, stop_at_eot: bool = False) -> list[Request]:
    """`num_samples` continuations of one prompt (sample i seeded `seed + i`) on an engine of
    that many rows: what `sample`, `evaluate` and the trainer's periodic samples run."""
    if num_samples < 1:
        raise RequestError("num_samples", f"must be at least 1, not {num_samples}")
    engine = Engine(cfg, params, max_batch=num_samples, chunk_steps=min(32, max_new_tokens))
    return engine.generate([prompt] * num_samples, [
        SamplingParams(max_new_tokens, temperature, top_k, top_p, (seed + i) % 2**32,
                       stop_at_eot=stop_at_eot) for i in range(num_samples)])
