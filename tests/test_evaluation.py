"""Sampling with a KV cache, HellaSwag scoring, and the evaluate / sample commands."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt2_jax import hellaswag, tokenizer
from gpt2_jax.model import GPT, GPTConfig
from gpt2_jax.sampling import generate
from gpt2_jax.train_step import init_params

FIXTURE = Path(__file__).parent / "fixtures" / "hellaswag_mini.jsonl"


@pytest.fixture(scope="module")
def tiny():
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=64))
    return model, init_params(model, jax.random.key(1))


def test_kv_cache_decoding_equals_recomputing_the_whole_sequence(tiny):
    model, params = tiny
    prompt = [464, 3290, 318, 257]
    cached = np.asarray(generate(model, params, prompt, 12, temperature=0))[0]
    forward = jax.jit(lambda p, t: model.apply({"params": p}, t))
    tokens = list(prompt)
    for _ in range(12):  # greedy, rerunning the full model on the sequence so far
        tokens.append(int(jnp.argmax(forward(params, jnp.asarray([tokens]))[0, -1])))
    assert cached.tolist() == tokens


def test_sampling_draws_only_real_vocabulary_ids(tiny):
    model, params = tiny
    tokens = np.asarray(generate(model, params, [50256], 60, num_samples=4, temperature=5.0,
                                 seed=3))
    assert tokens.shape == (4, 61) and tokens.max() < tokenizer.VOCAB_SIZE
    assert len({tuple(row) for row in tokens}) == 4  # different samples


def test_hellaswag_scores_equal_a_per_ending_reference(tiny):
    model, params = tiny
    examples = list(hellaswag.read_examples(FIXTURE))
    summed, mean = hellaswag.score(model, params, examples, batch_examples=2)  # 2 batches
    for i, example in enumerate(examples):
        context = tokenizer.encode(example["ctx"])
        for j, ending in enumerate(example["endings"]):
            row = context + tokenizer.encode(" " + ending)  # unpadded, one row at a time
            logits = np.asarray(model.apply({"params": params}, jnp.asarray([row[:-1]])))[0]
            logits = logits[:, :tokenizer.VOCAB_SIZE].astype(np.float64)
            log_probs = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1,
                                        keepdims=True)) - logits.max(1, keepdims=True)
            losses = [-log_probs[t - 1, row[t]] for t in range(len(context), len(row))]
            np.testing.assert_allclose(summed[i, j], np.sum(losses), rtol=1e-4)
            np.testing.assert_allclose(mean[i, j], np.mean(losses), rtol=1e-4)
    result = hellaswag.evaluate(model, params, examples)
    labels = [e["label"] for e in examples]
    assert result["hellaswag_acc"] == np.mean(np.argmin(mean, 1) == labels)
    assert result["hellaswag_acc_unnormalized"] == np.mean(np.argmin(summed, 1) == labels)


def test_missing_hellaswag_file_is_a_clear_error(tmp_path):
    with pytest.raises(hellaswag.HellaSwagUnavailable, match="no such file"):
        hellaswag.find_or_download(str(tmp_path / "nope.jsonl"))


def run_module(module, *args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A short default (Shakespeare) run, with its last validation loss."""
    workdir = tmp_path_factory.mktemp("run")
    result = run_module("gpt2_jax.train", "--workdir", str(workdir), "--config.train.max_steps=4",
                        "--config.train.eval_every=4", "--config.train.sample_tokens=0",
                        cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def test_evaluate_restores_and_reports_val_loss_and_hellaswag(trained_run):
    rows = [json.loads(l) for l in (trained_run / "metrics.jsonl").read_text().splitlines()]
    trained_val_loss = [r["val_loss"] for r in rows if "val_loss" in r][-1]
    result = run_module("gpt2_jax.evaluate", "--workdir", str(trained_run), "--hellaswag",
                        str(FIXTURE), "--samples", "1", cwd=trained_run)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "HellaSwag: acc_norm" in result.stdout and "--- sample 1" in result.stdout
    last = json.loads((trained_run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 4 and last["hellaswag_examples"] == 3
    assert last["val_loss"] == pytest.approx(trained_val_loss, rel=1e-6)  # same batches, same loss


def test_evaluate_with_missing_hellaswag_path_fails_clearly(trained_run):
    result = run_module("gpt2_jax.evaluate", "--workdir", str(trained_run), "--hellaswag",
                        "missing.jsonl", "--samples", "0", cwd=trained_run)
    assert result.returncode != 0 and "missing.jsonl: no such file" in result.stderr


def test_sample_command_continues_the_prompt(trained_run):
    result = run_module("gpt2_jax.sample", "--workdir", str(trained_run), "--prompt", "ROMEO:",
                        "--max_new_tokens", "8", "--num_samples", "2", "--temperature", "0",
                        cwd=trained_run)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("ROMEO:") == 2 and "tokens/s" in result.stderr


def test_sample_from_a_directory_without_checkpoints_fails_clearly(tmp_path):
    result = run_module("gpt2_jax.sample", "--workdir", str(tmp_path), cwd=tmp_path)
    assert result.returncode != 0 and "no checkpoints/ directory" in result.stderr
