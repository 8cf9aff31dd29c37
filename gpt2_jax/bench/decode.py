"""Decode throughput of the engine, beside the GPU's memory-bandwidth bound and transformers:

    python -m gpt2_jax.bench --decode --config configs/gpt2_124m.py [--config.KEY=VALUE ...]
        [--batch 1,8,64] [--prompt_tokens 16] [--new_tokens 256] [--top_k 200]
        [--chunk_steps 32] [--xla_only] [--hf_modes dynamic,static_eager,static]
        [--serve_clients 64]
        [--profile DIR] [--record benchmarks/results.jsonl] [--run_id ID]

Random-init weights (speed does not depend on their values). Each batch of `--batch` random
prompts decodes `--new_tokens` tokens (no stop at <|endoftext|>), timed after a warm-up run
that compiles every shape. Reported: tokens/s over the whole request (prefill included), ms per
decode step, time to first token (the prefill of the batch), and the bound: each step must read
the weights in the compute dtype and the filled part of the KV cache, at the bandwidth of a
device-to-device copy measured in the same run. With torch and transformers present, the same
shapes run through `GPT2LMHeadModel.generate` in bfloat16 (GPU) for each `--hf_modes` entry:
`dynamic` (its default cache), `static_eager` (static cache, compilation disabled), `static`
(static cache with its automatic torch.compile). `--serve_clients N` also runs the HTTP server
in this process with N concurrent clients (aggregate tokens/s, p50/p99 latency; mode "serve").
Rows are printed as JSON, and appended to a file only with `--record PATH`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import functools
import json
import math
import socket
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from gpt2_jax.bench import profiling, results
from gpt2_jax.config import load_config, model_config
from gpt2_jax.errors import ConfigError
from gpt2_jax.inference.engine import Engine, SamplingParams
from gpt2_jax.model import GPT, GPTConfig, count_params, init_params
from gpt2_jax.tokenizer import VOCAB_SIZE


def copy_bandwidth(device: jax.Device) -> float:
    """Bytes/s of a device-to-device copy (read once, written once) of 1 GiB (64 MiB on a CPU),
    the best of 5."""
    n_bytes = 2**30 if device.platform == "gpu" else 2**26
    x = jax.device_put(jnp.zeros(n_bytes // 4, jnp.float32), device)
    copy = functools.partial(jax.device_put, device=device, may_alias=False)
    jax.block_until_ready(copy(x))
    best = math.inf
    for _ in range(5):
        started = time.perf_counter()
        jax.block_until_ready(copy(x))
        best = min(best, time.perf_counter() - started)
    return 2 * n_bytes / best


def decode_bound(cfg: GPTConfig, n_params: int, batch: int, prompt_tokens: int,
                 new_tokens: int, itemsize: int, bandwidth: float) -> float:
    """Tokens/s if each step only read the weights and the cache's filled positions (their mean
    over the request) at `bandwidth`."""
    mean_filled = prompt_tokens + new_tokens / 2
    kv_bytes = 2 * cfg.n_layer * batch * mean_filled * cfg.n_embd * itemsize
    return batch / ((n_params * itemsize + kv_bytes) / bandwidth)


def _prompts(batch: int, prompt_tokens: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, VOCAB_SIZE, (batch, prompt_tokens)).tolist()


def measure_engine(cfg: GPTConfig, params, batch: int, prompt_tokens: int, new_tokens: int,
                   top_k: int, chunk_steps: int, profile_dir: str | None = None,
                   kernels: dict[str, bool] | None = None) -> dict:
    engine = Engine(cfg, params, max_batch=batch, chunk_steps=chunk_steps, kernels=kernels)
    settings = [SamplingParams(new_tokens, 1.0, top_k, seed=i, stop_at_eot=False)
                for i in range(batch)]
    started = time.perf_counter()
    engine.generate(_prompts(batch, prompt_tokens, seed=1), settings)  # compiles every shape
    compile_s = time.perf_counter() - started
    for prompt, params_ in zip(_prompts(batch, prompt_tokens), settings):
        engine.submit(prompt, params_)
    started = time.perf_counter()
    engine.admit()  # the prefill: every row has drawn its first token when it returns
    first = time.perf_counter()
    chunks = 0
    while engine.busy:
        engine.step()
        chunks += 1
    done = time.perf_counter()
    if profile_dir:
        for prompt, params_ in zip(_prompts(batch, prompt_tokens), settings):
            engine.submit(prompt, params_)
        engine.admit()
        with jax.profiler.trace(profile_dir):
            engine.step()
            engine.step()
        while engine.step():
            pass
    return {"tokens_per_sec": batch * new_tokens / (done - started),
            "ms_per_step": 1000 * (done - first) / (chunks * chunk_steps),
            "ttft_ms": 1000 * (first - started), "compile_s": compile_s, "dtype": engine.dtype,
            "decode_kernels": sorted(k for k, used in engine.kernels.items() if used)}


def measure_transformers(cfg: GPTConfig, batch: int, prompt_tokens: int, new_tokens: int,
                         top_k: int, mode: str) -> dict | None:
    """The same shapes through transformers' GPT2LMHeadModel.generate; None without torch."""
    try:
        import torch
        import transformers
    except ImportError:
        return None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    hf_config = transformers.GPT2Config(n_layer=cfg.n_layer, n_head=cfg.n_head,
                                        n_embd=cfg.n_embd, n_positions=cfg.block_size,
                                        vocab_size=VOCAB_SIZE)
    with torch.device(device):
        model = transformers.GPT2LMHeadModel(hf_config).to(dtype).eval()
    prompts = torch.tensor(_prompts(batch, prompt_tokens), device=device)
    options = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=True,
                   top_k=top_k, pad_token_id=0,
                   attention_mask=torch.ones_like(prompts))
    if mode != "dynamic":
        options["cache_implementation"] = "static"
    if mode == "static_eager":
        options["disable_compile"] = True

    def run():
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(prompts, **options)
        if device == "cuda":
            torch.cuda.synchronize()
        assert out.shape == (batch, prompt_tokens + new_tokens)
        return time.perf_counter() - started

    started = time.perf_counter()
    for _ in range(2 if mode == "static" else 1):  # warm-ups: the compiled mode compiles twice
        run()
    compile_s = time.perf_counter() - started
    seconds = run()
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"tokens_per_sec": batch * new_tokens / seconds,
            "ms_per_step": 1000 * seconds / new_tokens, "ttft_ms": None, "compile_s": compile_s,
            "transformers": transformers.__version__, "torch": torch.__version__}


def measure_serve(cfg: GPTConfig, params, clients: int, prompt_tokens: int, new_tokens: int,
                  top_k: int, chunk_steps: int) -> dict:
    """`clients` concurrent HTTP clients against the server on loopback (one round to warm up,
    one timed): aggregate completion tokens/s and request latency percentiles."""
    import httpx
    import uvicorn

    from gpt2_jax.inference.server import EngineThread, create_app

    engine = Engine(cfg, params, max_batch=clients, chunk_steps=chunk_steps)
    for n in engine.prefill_sizes:  # compile every prefill group size requests may arrive in
        engine.generate(_prompts(n, prompt_tokens), SamplingParams(2, 1.0, top_k))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(EngineThread(engine), "bench", 1),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}/v1/completions"

    def one(i: int) -> tuple[float, int]:
        started = time.perf_counter()
        r = httpx.post(url, timeout=600, json={
            "prompt": _prompts(clients, prompt_tokens)[i], "max_tokens": new_tokens,
            "top_k": top_k, "seed": i})
        r.raise_for_status()
        return time.perf_counter() - started, r.json()["usage"]["completion_tokens"]

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(clients)))
        started = time.perf_counter()
        results = list(pool.map(one, range(clients)))
        seconds = time.perf_counter() - started
    server.should_exit = True
    thread.join()
    latencies = sorted(t for t, _ in results)
    return {"tokens_per_sec": sum(n for _, n in results) / seconds,
            "p50_latency_ms": 1000 * float(np.percentile(latencies, 50)),
            "p99_latency_ms": 1000 * float(np.percentile(latencies, 99)), "clients": clients}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m gpt2_jax.bench --decode", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--decode", action="store_true", required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--batch", default="1,8,64", help="comma-separated batch sizes")
    parser.add_argument("--prompt_tokens", type=int, default=16)
    parser.add_argument("--new_tokens", type=int, default=256)
    parser.add_argument("--top_k", type=int, default=200)
    parser.add_argument("--chunk_steps", type=int, default=32)
    parser.add_argument("--hf_modes", default="dynamic,static_eager,static",
                        help="transformers modes to run beside ('' = none)")
    parser.add_argument("--xla_only", action="store_true",
                        help="decode without the Pallas kernels (the engine's path off GPU)")
    parser.add_argument("--serve_clients", type=int, default=0,
                        help="also time the HTTP server with this many concurrent clients")
    parser.add_argument("--profile", help="trace two decode chunks of the largest batch here "
                                          "and print the busiest kernels")
    parser.add_argument("--record", help="append the rows to this JSONL file")
    parser.add_argument("--run_id", default=f"{time.strftime('%Y%m%d-%H%M%S')}-"
                                            f"{socket.gethostname()}")
    args, overrides = parser.parse_known_args(argv)
    batches = [int(b) for b in args.batch.split(",")]
    if min(batches) < 1 or args.prompt_tokens < 1 or args.new_tokens < 2:
        raise ConfigError("--batch sizes and --prompt_tokens must be >= 1, --new_tokens >= 2")
    c = load_config(args.config, overrides)
    cfg = model_config(c, devices=1, tensor=1)
    if args.prompt_tokens + args.new_tokens > cfg.block_size:
        raise ConfigError(f"--prompt_tokens + --new_tokens exceed model.block_size "
                          f"{cfg.block_size}")
    device = jax.local_devices()[0]
    params = jax.device_put(jax.jit(lambda key: init_params(GPT(cfg), key))(jax.random.key(0)),
                            device)
    n_params = count_params(params)
    bandwidth = copy_bandwidth(device)
    common = {"date": str(datetime.date.today()), "gpu": f"1x {device.device_kind}",
              "jax": jax.__version__, "config": Path(args.config).stem, "overrides": overrides,
              "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
              "top_k": args.top_k, "run_id": args.run_id,
              "command": " ".join(["python -m gpt2_jax.bench --decode --config", args.config,
                                   *overrides, f"--batch {args.batch}",
                                   f"--prompt_tokens {args.prompt_tokens}",
                                   f"--new_tokens {args.new_tokens} --top_k {args.top_k}",
                                   f"--chunk_steps {args.chunk_steps}",
                                   *(["--xla_only"] if args.xla_only else [])])}
    print(f"{n_params / 1e6:.0f}M params on {device.device_kind}; copy bandwidth "
          f"{bandwidth / 1e9:,.0f} GB/s", flush=True)
    for batch in batches:
        profile_dir = args.profile if batch == max(batches) else None
        r = measure_engine(cfg, params, batch, args.prompt_tokens, args.new_tokens, args.top_k,
                           args.chunk_steps, profile_dir,
                           {"attention": False, "norm": False} if args.xla_only else None)
        itemsize = jnp.dtype(r.pop("dtype")).itemsize
        bound = decode_bound(cfg, n_params, batch, args.prompt_tokens, args.new_tokens,
                             itemsize, bandwidth)
        _emit({**common, "mode": "decode", "engine": "gpt2_jax", "batch": batch,
               "chunk_steps": args.chunk_steps, "xla_only": args.xla_only, **r,
               "bound_tokens_per_sec": bound,
               "bandwidth_gb_per_s": bandwidth / 1e9,
               "fraction_of_bound": r["tokens_per_sec"] / bound}, args.record)
        if profile_dir:
            kernels = profiling.device_kernels(profile_dir)
            print(profiling.time_summary(kernels), profiling.time_summary(kernels, by_kind=True),
                  sep="\n", flush=True)
    if args.serve_clients:
        r = measure_serve(cfg, params, args.serve_clients, args.prompt_tokens, args.new_tokens,
                          args.top_k, args.chunk_steps)
        _emit({**common, "mode": "serve", "engine": "gpt2_jax", "batch": r["clients"], **r,
               "command": common["command"] + f" --serve_clients {args.serve_clients}"},
              args.record)
    del params
    for mode in filter(None, args.hf_modes.split(",")):
        for batch in batches:
            hf = measure_transformers(cfg, batch, args.prompt_tokens, args.new_tokens,
                                      args.top_k, mode)
            if hf is None:
                return
            _emit({**common, "mode": "decode", "engine": f"transformers {mode}", "batch": batch,
                   **hf}, args.record)


def _emit(row: dict, record: str | None) -> None:
    row = {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}
    print(json.dumps(row), flush=True)
    if record:
        results.record(row, record)
