"""The GPU tier (`pytest -m gpu`, skipped without a GPU): what CPU tests cannot see. The Pallas
kernels compiled by Triton (on CPU they run in Pallas' interpreter) against XLA's fusions, in
training and in the decode step, the FP8 step's cuBLASLt FP8 GEMMs, and bf16 training against
fp32 on the shipped text."""

import json

import jax
import numpy as np
import pytest
from helpers import CONFIGS, run_module

from gpt2_jax.inference import forward
from gpt2_jax.model import GPT, GPTConfig, init_params, next_token_loss

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU")]

# GPT-2 124M's widths on two layers: the kernels' real tiling, compiled in seconds.
WIDE = dict(n_layer=2, n_head=12, n_embd=768, block_size=256, dtype="bfloat16",
            attention="cudnn")


def value_and_grad_hlo(model, tokens):
    params = init_params(model, jax.random.key(0))
    step = jax.jit(jax.value_and_grad(lambda p: next_token_loss(model, p, tokens)))
    return step(params), step.lower(params).compile().as_text()


@pytest.mark.parametrize("key", ["loss_kernel", "gelu_kernel", "norm_kernel"])
def test_each_kernel_compiles_with_triton_and_trains_like_xla(key):
    """Loss within 0.5% and every gradient leaf within cosine 0.999 of XLA's (bf16 rounding)."""
    tokens = jax.random.randint(jax.random.key(1), (8, 257), 0, 50257)
    (xla_loss, xla_grads), xla_hlo = value_and_grad_hlo(GPT(GPTConfig(**WIDE)), tokens)
    (loss, grads), hlo = value_and_grad_hlo(GPT(GPTConfig(**WIDE, **{key: "pallas"})), tokens)
    assert "triton" not in xla_hlo
    assert "__gpu$xla.gpu.triton" in hlo
    assert abs(float(loss) - float(xla_loss)) / float(xla_loss) < 5e-3
    for a, b in zip(jax.tree.leaves(xla_grads), jax.tree.leaves(grads)):
        a, b = np.ravel(a), np.ravel(b)
        assert np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30) > 0.999


def test_the_fp8_step_runs_fp8_gemms_and_trains_like_bf16():
    """Loss within 1% of bf16's; the compiled step calls cuBLASLt with FP8 operands."""
    tokens = jax.random.randint(jax.random.key(1), (8, 257), 0, 50257)
    (loss16, _), hlo16 = value_and_grad_hlo(GPT(GPTConfig(**WIDE)), tokens)
    (loss8, _), hlo8 = value_and_grad_hlo(GPT(GPTConfig(**WIDE, fp8=True)), tokens)
    assert "__cublas$lt$matmul$f8" not in hlo16
    assert "__cublas$lt$matmul$f8" in hlo8
    assert abs(float(loss8) - float(loss16)) / float(loss16) < 0.01


def test_bf16_training_tracks_fp32_on_the_shipped_text(tmp_path):
    """GPT-2 124M, 12 steps of 32,768 tokens on the same Shakespeare batches: the bf16 losses
    (fp32 logits, then bf16 logits) stay within 1% of the fp32 run's, step by step."""
    def losses(name, *flags):
        result = run_module(
            "gpt2_jax.train", "--config", str(CONFIGS / "gpt2_124m.py"),
            "--workdir", str(tmp_path / name), "--config.data.source=shakespeare", "--config.train.micro_batch_size=16",
            "--config.train.total_batch_size=32768", "--config.train.max_steps=12",
            "--config.optim.warmup_steps=4", "--config.train.eval_every=0",
            "--config.train.hellaswag_every=0", "--config.train.sample_tokens=0", *flags,
            cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        rows = [json.loads(line) for line in open(tmp_path / name / "metrics.jsonl")]
        return np.array([r["loss"] for r in rows if "loss" in r])

    reference = losses("fp32", "--config.model.dtype=float32")
    for logits in ("float32", "bfloat16"):
        got = losses(f"bf16_{logits}", "--config.model.dtype=bfloat16",
                     f"--config.model.logits_dtype={logits}")
        assert got.shape == reference.shape == (12,)
        assert np.max(np.abs(got - reference) / reference) < 0.01, (logits, got, reference)


def test_the_decode_kernels_compile_with_triton_and_decode_like_xla():
    """The engine's decode step with its Pallas kernels against XLA's path, bf16, 124M's widths,
    rows at different positions: logits within bf16 rounding, the same keys and values cached."""
    cfg = GPTConfig(**{**WIDE, "block_size": 1024})
    # Noisy biases and gains, so that a bias or a norm applied twice shows; a cache whose every
    # array differs, so that keys read as values (or one layer's as another's) show.
    params = jax.tree.map(lambda a: a + 0.05 * jax.random.normal(jax.random.key(a.size), a.shape),
                          init_params(GPT(cfg), jax.random.key(0)))
    weights = forward.prepare_weights(params, cfg, "bfloat16")
    leaves, tree = jax.tree.flatten(forward.empty_cache(cfg, 4, "bfloat16"))
    cache = jax.tree.unflatten(tree, [jax.random.normal(jax.random.key(i), a.shape, a.dtype)
                                      for i, a in enumerate(leaves)])
    tokens, positions = np.array([1, 50256, 464, 3290]), np.array([0, 5, 300, 1023])
    results = {}
    for kernels in ((True, True), (False, False)):
        used = dict(zip(("attention", "norm"), kernels))
        decode = jax.jit(lambda w, c: forward.decode(w, c, tokens, positions, 1024, cfg,
                                                     "bfloat16", used))
        results[kernels] = decode(weights, cache)
        assert ("__gpu$xla.gpu.triton" in decode.lower(weights, cache).compile().as_text()
                ) == kernels[0]
    (logits, kv), (xla_logits, xla_kv) = results.values()
    logits, xla_logits = logits[:, :cfg.real_vocab_size], xla_logits[:, :cfg.real_vocab_size]
    scale = float(np.abs(xla_logits).max())
    assert float(np.abs(logits - xla_logits).max()) < 0.02 * scale
    for a, b in zip(jax.tree.leaves(kv), jax.tree.leaves(xla_kv)):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                                   atol=0.05)
