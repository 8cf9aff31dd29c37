"""HellaSwag scoring, and the evaluate / sample commands (the engine itself: test_inference.py)."""

import json

import jax
import numpy as np
import pytest

from gpt2_jax import tokenizer
from gpt2_jax.evaluation import hellaswag
from gpt2_jax.parallel import sharding
from gpt2_jax.model import GPT, GPTConfig
from gpt2_jax.errors import EvalDataError
from gpt2_jax.model import init_params

from helpers import FIXTURES, run_module

FIXTURE = FIXTURES / "hellaswag_mini.jsonl"


@pytest.fixture(scope="module")
def tiny():
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=64))
    return model, init_params(model, jax.random.key(1))


def test_hellaswag_scores_equal_a_per_ending_reference(tiny):
    model, params = tiny
    examples = list(hellaswag.read_examples(FIXTURE))
    rendered = hellaswag.load(FIXTURE)
    summed, mean = hellaswag.score(model, params, rendered)
    # One row at a time, right-padded to the block (causal: the padding cannot reach a scored
    # position), so a single compiled forward serves every row.
    forward = jax.jit(lambda t: model.apply({"params": params}, t)[0])
    for i, example in enumerate(examples):
        context = tokenizer.encode(example["ctx"])
        for j, ending in enumerate(example["endings"]):
            row = context + tokenizer.encode(" " + ending)
            padded = np.zeros((1, model.config.block_size), np.int32)
            padded[0, :len(row) - 1] = row[:-1]
            logits = np.asarray(forward(padded))[:len(row) - 1]
            logits = logits[:, :tokenizer.VOCAB_SIZE].astype(np.float64)
            log_probs = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1,
                                        keepdims=True)) - logits.max(1, keepdims=True)
            losses = [-log_probs[t - 1, row[t]] for t in range(len(context), len(row))]
            np.testing.assert_allclose(summed[i, j], np.sum(losses), rtol=1e-4)
            np.testing.assert_allclose(mean[i, j], np.mean(losses), rtol=1e-4)
    result = hellaswag.evaluate(model, params, rendered)
    labels = [e["label"] for e in examples]
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})  # rows over 8 devices
    with jax.set_mesh(mesh):
        assert hellaswag.evaluate(model, params, rendered, mesh) == result
    assert result["hellaswag_acc"] == np.mean(np.argmin(mean, 1) == labels)
    assert result["hellaswag_acc_unnormalized"] == np.mean(np.argmin(summed, 1) == labels)


def test_missing_hellaswag_file_is_a_clear_error(tmp_path):
    with pytest.raises(EvalDataError, match="no such file"):
        hellaswag.find_or_download(str(tmp_path / "nope.jsonl"))


@pytest.mark.slow
def test_evaluate_restores_and_reports_val_loss_and_hellaswag(trained_run):
    rows = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    in_training = [r for r in rows if "val_loss" in r][-1]  # one eval row: val loss + HellaSwag
    assert in_training["step"] == 4 and in_training["hellaswag_examples"] == 3
    result = run_module("gpt2_jax.evaluate", "--workdir", str(trained_run), "--hellaswag",
                        str(FIXTURE), "--samples", "1", cwd=trained_run)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "HellaSwag: acc_norm" in result.stdout and "--- sample 1" in result.stdout
    last = json.loads((trained_run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 4 and last["hellaswag_examples"] == 3
    # The same weights, batches and examples as the in-training evaluation: the same figures.
    assert last["val_loss"] == pytest.approx(in_training["val_loss"], rel=1e-6)
    assert last["hellaswag_acc"] == in_training["hellaswag_acc"]


@pytest.mark.slow
def test_evaluate_with_missing_hellaswag_path_fails_clearly(trained_run):
    result = run_module("gpt2_jax.evaluate", "--workdir", str(trained_run), "--hellaswag",
                        "missing.jsonl", "--samples", "0", cwd=trained_run)
    assert result.returncode != 0 and "missing.jsonl: no such file" in result.stderr


@pytest.mark.slow
def test_sample_command_continues_the_prompt(trained_run):
    result = run_module("gpt2_jax.sample", "--workdir", str(trained_run), "--prompt", "ROMEO:",
                        "--max_new_tokens", "8", "--num_samples", "2", "--temperature", "0",
                        cwd=trained_run)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("ROMEO:") == 2 and "tokens/s" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("flag, value", [("--temperature", "-1"), ("--num_samples", "0")])
def test_sample_with_an_invalid_setting_is_one_error_line(trained_run, flag, value):
    result = run_module("gpt2_jax.sample", "--workdir", str(trained_run), flag, value,
                        cwd=trained_run)
    assert result.returncode == 1 and result.stderr.strip().splitlines() == [
        f"error: {flag} must be {'>= 0 (0 = greedy)' if flag == '--temperature' else 'at least 1'}"
        f", not {value if flag == '--num_samples' else float(value)}"]


@pytest.mark.slow
def test_sample_from_a_directory_without_checkpoints_fails_clearly(tmp_path):
    result = run_module("gpt2_jax.sample", "--workdir", str(tmp_path), cwd=tmp_path)
    assert result.returncode != 0 and "no checkpoints/ directory" in result.stderr


def test_training_with_hellaswag_and_no_copy_fails_before_starting(tiny_config, tmp_path):
    from gpt2_jax.errors import ConfigError
    from gpt2_jax.training.loop import hellaswag_examples

    c = tiny_config("--config.train.hellaswag_every=10",
                    f"--config.train.hellaswag_file={tmp_path / 'absent.jsonl'}")
    with pytest.raises(ConfigError, match="train.hellaswag_every=10 needs HellaSwag.*absent.jsonl"):
        hellaswag_examples(c)
    assert len(hellaswag_examples(tiny_config(
        "--config.train.hellaswag_every=10", f"--config.train.hellaswag_file={FIXTURE}"))) == 3
