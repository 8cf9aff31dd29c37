"""Inference: the decode engine (engine.py), its forward pass over a KV cache (forward.py),
per-row sampling (sampling.py), the OpenAI-compatible server (server.py) and the decode
benchmark (bench.py)."""

from gpt2_jax.inference.engine import Engine, Request, SamplingParams, complete

__all__ = ["Engine", "Request", "SamplingParams", "complete"]
