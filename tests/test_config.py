import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from helpers import CONFIGS
from gpt2_jax.config import RunPlan, base_config, load_config, model_config
from gpt2_jax.configs.gpt2 import gpt2, modern
from gpt2_jax.errors import ConfigError
from gpt2_jax.model import GPT, GPTConfig, init_params, next_token_loss
from gpt2_jax.ops import kernels
from gpt2_jax.parallel import sharding
from gpt2_jax.tokenizer import VOCAB_SIZE


def test_default_is_the_shipped_shakespeare_config():
    c = load_config()
    assert c.data.source == "shakespeare"
    assert c.model.vocab_size == 50304 and c.train.seq_len <= c.model.block_size


@pytest.mark.parametrize("name", ["gpt2_124m", "gpt2_350m", "gpt2_774m", "gpt2_1558m",
                                  "modern_124m", "modern_350m", "modern_1558m"])
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


def write_config(tmp_path, body: str, name: str = "run.py"):
    """A config file whose get_config() starts from base_config() and runs `body`."""
    path = tmp_path / name
    lines = "".join(f"    {line}\n" for line in body.splitlines())
    path.write_text("from gpt2_jax.config import base_config\n\n\ndef get_config():\n"
                    f"    c = base_config()\n{lines}    return c\n")
    return path


def test_a_typo_in_a_config_file_names_the_key_and_the_file(tmp_path):
    path = write_config(tmp_path, "c.model.n_layr = 2")
    with pytest.raises(ConfigError, match=rf"^{path}: unknown config key model\.n_layr; did you "
                                          r"mean model\.n_layer\?"):
        load_config(str(path))


@pytest.mark.parametrize("body, message", [
    ("c.extra = 1", r": unknown config key extra"),
    ("del c.stability.window", r": missing config key\(s\) stability\.window"),
    ("c.model.n_layer = 'two'", r":6: the config file failed: TypeError: .*n_layer"),
])
def test_a_config_file_may_change_values_but_not_add_or_drop_keys(tmp_path, body, message):
    path = write_config(tmp_path, body)
    with pytest.raises(ConfigError, match=rf"^{path}{message}"):
        load_config(str(path))


def test_the_config_file_is_executed_once(tmp_path):
    runs = tmp_path / "runs.txt"
    path = write_config(tmp_path, f"open({str(runs)!r}, 'a').write('x')")
    c = load_config(str(path), ["--config.train.max_steps=7", "--config.mesh.zero1=True"])
    assert runs.read_text() == "x"
    assert (c.train.max_steps, c.mesh.zero1) == (7, True)


def test_a_config_file_without_get_config_or_a_configdict_is_refused(tmp_path):
    path = tmp_path / "empty.py"
    path.write_text("x = 1\n")
    with pytest.raises(ConfigError, match=rf"^{path}: a config file defines get_config\(\)"):
        load_config(str(path))
    path.write_text("def get_config():\n    return {'model': {}}\n")
    with pytest.raises(ConfigError, match=rf"^{path}: get_config\(\) returned dict"):
        load_config(str(path))


def test_the_loaded_config_is_locked_and_a_section_is_not_overridable():
    assert load_config().is_locked
    with pytest.raises(ConfigError, match=r"config\.model is a section"):
        load_config(None, ["--config.model=3"])
    with pytest.raises(ConfigError, match=r"unknown config key model\.n_layer\.x"):
        load_config(None, ["--config.model.n_layer.x=3"])


def test_base_configs_model_section_is_gptconfigs_fields():
    """GPTConfig is the one schema: base_config's model keys are its fields (all but the
    tokenizer's real_vocab_size), with its defaults, "auto" where a field resolves."""
    fields = {f.name: f for f in dataclasses.fields(GPTConfig)}
    model = base_config().model
    assert sorted(model.keys()) == sorted(name for name in fields if name != "real_vocab_size")
    for name, value in model.items():
        choices = fields[name].metadata.get("choices", ())
        assert value == ("auto" if "auto" in choices else fields[name].default), name
    assert sorted(name for name in model if model[name] == "auto") == sorted([
        "dtype", "attention", *kernels.KERNEL_KEYS])


def test_model_config_copies_every_field_by_name(tiny_config):
    """Each model.<key> reaches the GPTConfig: a changed value changes the field."""
    c = tiny_config("--config.model.pos_emb=rope", "--config.model.norm=rmsnorm",
                    "--config.model.qk_norm=True", "--config.model.mlp_act=relu2",
                    "--config.model.tie_embeddings=False", "--config.model.logit_softcap=15.0",
                    "--config.model.scan_unroll=2", "--config.model.fp8=True",
                    "--config.model.remat=full", "--config.model.logits_dtype=bfloat16")
    cfg = model_config(c, backend="cpu")
    for key, value in c.model.items():
        if value != "auto":
            assert getattr(cfg, key) == value, key
    assert cfg.real_vocab_size == VOCAB_SIZE


def test_a_saved_config_without_newer_keys_takes_their_defaults():
    """A checkpoint's config from before a key existed still builds its model."""
    saved = ml_collections.ConfigDict(base_config().to_dict())
    del saved.model["qk_norm"], saved.model["norm_kernel"]
    cfg = model_config(saved, backend="cpu", devices=1)
    assert (cfg.qk_norm, cfg.norm_kernel) == (False, "xla")


@pytest.mark.parametrize("key, supported, unsupported", [
    ("loss_kernel", {}, {"logit_softcap": 5.0}),
    ("gelu_kernel", {}, {"mlp_act": "relu2"}),
    ("norm_kernel", {}, {"norm": "rmsnorm"}),
])
def test_the_model_runs_a_kernel_exactly_where_the_kernels_table_says(key, supported, unsupported):
    """The model asks ops/kernels.py: its traced loss and gradient hold the key's Pallas call
    for a model the kernel computes, and none where the table says it cannot (a GPTConfig
    built directly; config validation refuses that pair)."""
    tokens = jnp.zeros((2, 9), jnp.int32)

    def pallas_calls(**options) -> int:
        cfg = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, **options)
        model = GPT(cfg)
        params = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
        jaxpr = jax.make_jaxpr(jax.grad(lambda p: next_token_loss(model, p, tokens)))(params)
        return str(jaxpr).count("pallas_call"), kernels.runs_pallas(cfg, key)

    assert pallas_calls(**supported) == (0, False)
    calls, runs = pallas_calls(**supported, **{key: "pallas"})
    assert calls > 0 and runs
    assert pallas_calls(**unsupported, **{key: "pallas"}) == (0, False)


def test_kernel_choices_resolve_through_the_table(tiny_config):
    c = tiny_config()
    for backend, devices, tensor in (("cpu", 1, 1), ("gpu", 1, 1), ("gpu", 2, 1), ("gpu", 2, 2)):
        cfg = model_config(c, backend=backend, devices=devices, tensor=tensor)
        assert {key: getattr(cfg, key) for key in kernels.KERNEL_KEYS} == kernels.resolve(
            c.model, backend, devices, tensor)


def test_the_shipped_configs_are_the_importable_definitions():
    for size in ("124m", "350m", "774m", "1558m"):
        assert load_config(str(CONFIGS / f"gpt2_{size}.py")).to_dict() == gpt2(size).to_dict()
    for size in ("124m", "350m", "1558m"):
        path = CONFIGS / f"modern_{size}.py"
        assert load_config(str(path)).to_dict() == modern(size).to_dict()
        assert "importlib" not in path.read_text()
    with pytest.raises(ConfigError, match="GPT-2 size '125m'"):
        gpt2("125m")


@pytest.mark.parametrize("zero1, data, by_layers", [(False, 2, False), (True, 2, True),
                                                    (True, 4, False)])
def test_the_run_plan_decides_the_zero1_split_once(tiny_config, zero1, data, by_layers):
    """n_layer=2: a data axis of 2 splits the stacked blocks' moments by whole layers, 4 cannot."""
    c = tiny_config(f"--config.mesh.data={data}", f"--config.mesh.zero1={zero1}",
                    "--config.train.total_batch_size=128")
    mesh = sharding.make_mesh(c.mesh, jax.devices()[:data])
    plan = RunPlan.resolve(c, mesh)
    assert (plan.zero1, plan.zero1_by_layers) == (zero1, by_layers)
    assert plan.batch == sharding.BatchLayout(micro_batch=2, accum_steps=128 // (2 * data * 16),
                                              global_micro_batch=2 * data,
                                              local_micro_batch=2 * data)
    assert plan.model == model_config(c, devices=data, tensor=1)


def test_divisibility_is_one_rule_at_load_and_on_the_mesh(tiny_config):
    """The batch rule at load sees the axes the config fixes; with mesh.data=-1 the mesh
    decides, and the same rule (the same message) applies there."""
    with pytest.raises(ConfigError, match=r"train\.total_batch_size \(32\) must be a multiple "
                                          r"of .* = 2 x 2 x 16 = 64"):
        tiny_config("--config.mesh.data=2")
    c = tiny_config("--config.mesh.data=-1")
    with pytest.raises(ConfigError, match=r"train\.total_batch_size \(32\) must be a multiple "
                                          r"of .* = 2 x 8 x 16 = 256"):
        RunPlan.resolve(c, sharding.make_mesh(c.mesh))
    c = tiny_config("--config.mesh.data=1", "--config.mesh.tensor=-1")
    with pytest.raises(ConfigError, match=r"mesh\.tensor \(8\) must divide model\.n_head \(2\)"):
        RunPlan.resolve(c, sharding.make_mesh(c.mesh))
