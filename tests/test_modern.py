"""The modern recipe's switches (model.pos_emb, norm, qk_norm, mlp_act, tie_embeddings,
logit_softcap): each is wired in, together they train, RoPE depends only on relative position,
and only exact GPT-2 exports to transformers (their decoding: test_inference.py). (With every
switch off the model is GPT-2 as before: tests/test_hf.py's transformers parity covers it.)"""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt2_jax import hf
from gpt2_jax.config import model_config
from gpt2_jax.errors import ConfigError, WeightsError
from gpt2_jax.model import GPT, GPTConfig, init_params
from gpt2_jax.model.gpt import rotary
from gpt2_jax.training.optim import make_optimizer
from gpt2_jax.tokenizer import VOCAB_SIZE
from helpers import run_steps

OPTIONS = {
    "rope": ["--config.model.pos_emb=rope"],
    "rmsnorm": ["--config.model.norm=rmsnorm"],
    "qk_norm": ["--config.model.qk_norm=True"],
    "relu2": ["--config.model.mlp_act=relu2"],
    "untied head": ["--config.model.tie_embeddings=False"],
    "softcap": ["--config.model.logit_softcap=15.0"],
}
ALL = [override for overrides in OPTIONS.values() for override in overrides]


@pytest.mark.slow
def test_the_modern_recipe_trains(tiny_config):
    c = tiny_config("--config.optim.lr=1e-2", "--config.optim.warmup_steps=2",
                    "--config.optim.final_lr_frac=1.0", "--config.train.max_steps=15", *ALL)
    batch = np.random.default_rng(0).integers(0, VOCAB_SIZE, (1, 4, 17)).astype(np.int32)
    mesh = jax.make_mesh((1, 1, 1), ("data", "fsdp", "tensor"), devices=jax.devices()[:1],
                         axis_types=(jax.sharding.AxisType.Auto,) * 3)
    _, _, history = run_steps(c, mesh, make_optimizer(c.optim, 15), [batch] * 15)
    losses = [float(h["loss"]) for h in history]
    assert losses[0] > 10.0 and losses[-1] < losses[0] - 3.0, losses


@pytest.mark.parametrize("name", OPTIONS)
def test_each_option_alone_changes_what_the_model_computes(tiny_config, name):
    """Each switch is wired in on its own: from the same seed, its logits are finite and differ
    from GPT-2's. (What each computes: the RoPE test below, and test_inference's decoding.)"""
    tokens = np.random.default_rng(0).integers(0, VOCAB_SIZE, (2, 16)).astype(np.int32)

    def logits(model):
        return jax.jit(lambda: model.apply({"params": init_params(model, jax.random.key(0))},
                                           tokens))()

    gpt2 = logits(GPT(model_config(tiny_config())))
    switched = logits(GPT(model_config(tiny_config(*OPTIONS[name]))))
    assert np.isfinite(switched[..., :VOCAB_SIZE]).all()  # (the padded rows are -inf)
    assert not np.array_equal(switched, gpt2)


def test_options_shape_the_params_as_documented(tiny_config):
    params = jax.eval_shape(lambda: init_params(GPT(model_config(tiny_config(*ALL))),
                                                jax.random.key(0)))
    assert "wpe" not in params and params["lm_head"].shape == (50304, 32)
    assert "bias" not in params["ln_f"]  # RMSNorm: a gain, no bias


def test_rotary_attention_scores_depend_only_on_relative_position():
    rng = np.random.default_rng(0)
    q, k = (jnp.asarray(rng.normal(size=(1, 1, 1, 16)), jnp.float32) for _ in range(2))

    def score(q_pos, k_pos):
        return float(jnp.sum(rotary(q, jnp.array([q_pos])) * rotary(k, jnp.array([k_pos]))))

    assert score(7, 3) == pytest.approx(score(107, 103), rel=1e-5)
    assert score(7, 3) != pytest.approx(score(7, 5), rel=1e-3)


@pytest.mark.parametrize("option, value", [("pos_emb", "rope"), ("norm", "rmsnorm"),
                                           ("tie_embeddings", False), ("logit_softcap", 30.0)])
def test_hf_export_of_a_modern_model_is_refused_naming_the_option(option, value):
    with pytest.raises(WeightsError, match=rf"^model\.{option}={value!r}: GPT-2's transformers"):
        hf.check_exportable(GPTConfig(**{option: value}))
    hf.check_exportable(GPTConfig())  # exact GPT-2 exports


@pytest.mark.parametrize("override, key", [("--config.model.pos_emb=alibi", "model.pos_emb"),
                                           ("--config.model.norm=batchnorm", "model.norm"),
                                           ("--config.model.mlp_act=swiglu", "model.mlp_act"),
                                           ("--config.model.logit_softcap=-1.0",
                                            "model.logit_softcap")])
def test_an_unknown_option_value_names_its_key(tiny_config, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        tiny_config(override)


@pytest.mark.slow
def test_a_modern_muon_run_resumes_exactly_and_restores_for_evaluation(tmp_path):
    """Muon's partitioned optimizer state (with its empty placeholders) checkpoints and
    resumes bit-exactly; evaluation restores the modern model from its checkpoint."""
    from gpt2_jax.training.checkpoint import load_trained
    from gpt2_jax.config import load_config
    from gpt2_jax.training.loop import train
    from helpers import TINY

    modern = [*TINY, *ALL, "--config.optim.name=muon", "--config.optim.warmup_steps=0",
              "--config.optim.muon_lr=0.02", "--config.optim.embed_lr=0.01",
              "--config.train.checkpoint_every=2", "--config.mesh.data=-1",
              "--config.train.total_batch_size=256"]
    c = load_config(None, [*modern, "--config.train.max_steps=4"])
    straight = train(c, tmp_path / "a")  # checkpoints at steps 2 and 4
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "4")  # as if stopped after step 2
    resumed = train(c, tmp_path / "b")
    assert resumed.start_step == 2 and resumed.final_loss == straight.final_loss
    a, b = load_trained(tmp_path / "a"), load_trained(tmp_path / "b")
    assert a.model.config.pos_emb == "rope" and not a.model.config.tie_embeddings
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(a.params), jax.device_get(b.params))
