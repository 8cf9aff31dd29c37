"""OpenAI GPT-2 weights in and out through transformers' format (tiny random models, CPU torch)."""

import dataclasses
import json

import jax
import numpy as np
import pytest
import torch
import transformers

from gpt2_jax import hf, tokenizer
from gpt2_jax.config import load_config
from gpt2_jax.errors import CheckpointError, WeightsError
from gpt2_jax.training.checkpoint import load_trained
from gpt2_jax.training.loop import train

from helpers import TINY, run_module

TOKENS = np.array([[464, 3290, 318, 257, 1263, 11, 50256, 40, 1101, 13]])


def our_logits(trained) -> np.ndarray:
    logits = trained.model.apply({"params": trained.params}, TOKENS)
    return np.asarray(logits)[..., :tokenizer.VOCAB_SIZE]


def hf_logits(directory) -> np.ndarray:
    model = transformers.GPT2LMHeadModel.from_pretrained(directory).eval()
    with torch.no_grad():
        return model(torch.from_numpy(TOKENS)).logits.numpy()


@pytest.mark.slow
def test_export_loads_in_transformers_with_our_logits_and_imports_back_exactly(
        trained_run, tmp_path):
    out = tmp_path / "hf"
    result = run_module("gpt2_jax.hf", "export", "--workdir", str(trained_run), "--out", str(out),
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    trained = load_trained(trained_run)
    np.testing.assert_allclose(hf_logits(out), our_logits(trained), atol=1e-4, rtol=0)
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)  # offline, from the export
    text = "Hello world!  It's naïve,\n\n  café 2026"
    assert len(hf_tokenizer) == tokenizer.VOCAB_SIZE
    assert hf_tokenizer.encode(text) == tokenizer.encode(text)
    assert hf_tokenizer.eos_token_id == tokenizer.EOT_TOKEN and hf_tokenizer.decode(
        tokenizer.encode(text)) == text

    _, state = hf.read_hf(str(out))
    imported = hf.params_from_hf(state, trained.model.config)
    ours = jax.device_get(trained.params)
    real, padded = slice(0, tokenizer.VOCAB_SIZE), slice(tokenizer.VOCAB_SIZE, None)
    np.testing.assert_array_equal(imported["wte"]["embedding"][real],
                                  ours["wte"]["embedding"][real])
    assert not imported["wte"]["embedding"][padded].any()  # padding rows come back as zeros
    imported["wte"]["embedding"], ours["wte"]["embedding"] = 0, 0
    jax.tree.map(np.testing.assert_array_equal, imported, ours)


@pytest.mark.slow
def test_an_fp8_trained_run_restores_and_exports_ordinary_weights(tmp_path):
    """model.fp8 changes how the blocks multiply, not what is stored: the checkpoint holds fp32
    params, load_trained (what evaluate and sample use) rebuilds the run's FP8 model, and the
    export is an ordinary GPT-2 whose logits are those of our model without FP8 (atol 1e-4, as
    above). The FP8 model's own logits stay within FP8's rounding of them: atol 0.05 (measured
    0.011, against logits of standard deviation 0.11)."""
    train(load_config(None, [*TINY, "--config.model.block_size=64", "--config.train.max_steps=2",
                             "--config.mesh.data=-1", "--config.train.total_batch_size=256",
                             "--config.model.fp8=True"]), tmp_path / "run")
    trained = load_trained(tmp_path / "run")
    assert trained.model.config.fp8
    hf.export_weights(tmp_path / "run", tmp_path / "hf")
    exact = dataclasses.replace(trained, model=trained.model.clone(
        config=dataclasses.replace(trained.model.config, fp8=False)))
    np.testing.assert_allclose(hf_logits(tmp_path / "hf"), our_logits(exact), atol=1e-4, rtol=0)
    np.testing.assert_allclose(our_logits(trained), our_logits(exact), atol=0.05, rtol=0)


@pytest.fixture(scope="module")
def openai_like(tmp_path_factory):
    """A random GPT-2 saved by transformers itself, as the hub's gpt2 checkpoints are."""
    directory = tmp_path_factory.mktemp("openai_like")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64)
    transformers.GPT2LMHeadModel(config).save_pretrained(directory)
    return directory


@pytest.mark.slow
def test_import_of_a_transformers_checkpoint_gives_its_logits(openai_like, tmp_path):
    workdir = tmp_path / "imported"
    result = run_module("gpt2_jax.hf", "import", str(openai_like), "--workdir", str(workdir),
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 layers, 32 channels" in result.stdout
    trained = load_trained(workdir)
    assert trained.step == 0 and trained.config.model.block_size == 64
    np.testing.assert_allclose(our_logits(trained), hf_logits(openai_like), atol=1e-4, rtol=0)


@pytest.mark.slow
def test_imported_weights_fine_tune_through_init_from_not_in_place(openai_like, tmp_path):
    imported = tmp_path / "imported"
    hf.import_weights(str(openai_like), imported)
    shape = ["--config.model.block_size=64", "--config.train.max_steps=1", "--config.mesh.data=-1",
             "--config.train.total_batch_size=256"]
    with pytest.raises(CheckpointError, match="imported weights"):
        train(load_config(None, [*TINY, *shape]), imported)
    c = load_config(None, [*TINY, *shape, f"--config.train.init_from={imported}"])
    c.stability.window = 7  # another guard shape: irrelevant when only the weights are taken
    summary = train(c, tmp_path / "tuned")
    assert summary.start_step == 0 and np.isfinite(summary.final_loss)
    tuned = jax.device_get(load_trained(tmp_path / "tuned").params)
    original = jax.device_get(load_trained(imported).params)
    assert not np.array_equal(tuned["wpe"]["embedding"], original["wpe"]["embedding"])
    np.testing.assert_allclose(tuned["wpe"]["embedding"], original["wpe"]["embedding"],
                               atol=1e-2)  # one small AdamW step away from the original


def test_unsupported_transformers_configs_are_refused_naming_the_field(openai_like):
    config = json.loads((openai_like / "config.json").read_text())
    with pytest.raises(WeightsError, match="activation_function"):
        hf.config_from_hf({**config, "activation_function": "relu"})
    with pytest.raises(WeightsError, match="vocab_size"):
        hf.config_from_hf({**config, "vocab_size": 32000})
    _, state = hf.read_hf(str(openai_like))
    del state["transformer.h.1.mlp.c_fc.bias"]
    with pytest.raises(WeightsError, match="h.1.mlp.c_fc.bias"):
        hf.params_from_hf(state, hf.model_config(hf.config_from_hf(config), backend="cpu"))


def test_a_source_that_is_neither_a_directory_nor_a_hub_name_is_a_clear_error(tmp_path):
    with pytest.raises(WeightsError, match="absent is not a directory.*pass a directory"):
        hf.read_hf(str(tmp_path / "absent"))  # an invalid hub name: refused without a download
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="needs config.json and"):
        hf.read_hf(str(tmp_path / "empty"))
