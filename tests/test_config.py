import pytest

from helpers import CONFIGS
from gpt2_jax.config import load_config, model_config
from gpt2_jax.errors import ConfigError


def test_default_is_the_shipped_shakespeare_config():
    c = load_config()
    assert c.data.source == "shakespeare"
    assert c.model.vocab_size == 50304 and c.train.seq_len <= c.model.block_size


@pytest.mark.parametrize("name", ["gpt2_124m", "gpt2_350m", "gpt2_774m", "gpt2_1558m",
                                  "modern_124m"])
def test_shipped_configs_load_and_validate(name):
    c = load_config(str(CONFIGS / f"{name}.py"))
    assert c.data.source == "shards" and c.model.vocab_size == 50304


def test_the_modern_config_is_gpt2_124m_with_the_recipe_switched_on():
    modern, gpt2 = (load_config(str(CONFIGS / f"{name}.py")) for name in ("modern_124m",
                                                                          "gpt2_124m"))
    assert (modern.model.pos_emb, modern.model.norm, modern.model.qk_norm, modern.model.mlp_act,
            modern.model.tie_embeddings, modern.optim.name) == (
        "rope", "rmsnorm", True, "relu2", False, "muon")
    assert modern.model.n_layer == gpt2.model.n_layer and modern.data == gpt2.data


def test_overrides_are_typed_and_applied():
    c = load_config(str(CONFIGS / "gpt2_124m.py"),
                    ["--config.optim.lr=3e-4", "--config.train.max_steps=10",
                     "--config.model.logits_dtype=float32"])
    assert c.optim.lr == 3e-4 and c.train.max_steps == 10 and c.model.logits_dtype == "float32"


def test_unknown_key_is_rejected_with_its_name_and_a_suggestion():
    with pytest.raises(ConfigError, match=r"unknown config key optim\.lrr .*did you mean optim\.lr\?"):
        load_config(None, ["--config.optim.lrr=1e-3"])
    with pytest.raises(ConfigError, match=r"unknown config key nosuch\.key"):
        load_config(None, ["--config.nosuch.key=1"])


def test_wrong_type_is_rejected_with_its_name():
    with pytest.raises(ConfigError, match="config.train.max_steps"):
        load_config(None, ["--config.train.max_steps=ten"])


@pytest.mark.parametrize("override, key", [
    ("--config.model.n_head=5", "model.n_head"),
    ("--config.train.seq_len=4096", "train.seq_len"),
    ("--config.train.total_batch_size=1000", "train.total_batch_size"),
    ("--config.model.remat=sometimes", "model.remat"),
    ("--config.data.source=hub", "data.source"),
    ("--config.optim.final_lr_frac=2.0", "optim.final_lr_frac"),
    ("--config.train.loss_chunk_size=7", "train.loss_chunk_size"),
    ("--config.model.scan_unroll=0", "model.scan_unroll"),
    ("--config.train.hellaswag_every=-1", "train.hellaswag_every"),
])
def test_invalid_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_auto_dtype_and_attention_follow_the_backend():
    c = load_config(str(CONFIGS / "gpt2_124m.py"))
    cpu, gpu = model_config(c, backend="cpu"), model_config(c, backend="gpu")
    assert (cpu.dtype, cpu.attention) == ("float32", "xla")
    assert (gpu.dtype, gpu.attention) == ("bfloat16", "cudnn")
