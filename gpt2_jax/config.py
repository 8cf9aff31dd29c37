"""Run configuration: the full hyperparameter sheet, loading a config file with overrides,
validation, and the typed objects a command resolves a config into.

Config files are Python files with `get_config()`; they start from `base_config()` (GPT-2 124M
with llm.c's hyperparameters) and change what differs. Overrides are `--config.a.b=value`. A key
the sheet lacks, in a file or an override, or a value of the wrong type, is a ConfigError naming
the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.machinery
import importlib.util
import traceback
from collections.abc import Sequence
from pathlib import Path

import jax
import ml_collections
from absl import flags
from jax.sharding import Mesh

from gpt2_jax.errors import ConfigError
from gpt2_jax.model import GPTConfig
from gpt2_jax.ops import kernels
from gpt2_jax.parallel.sharding import BatchLayout
from gpt2_jax.tokenizer import VOCAB_SIZE

# The config that runs when no --config is given: a small GPT-2 on the shipped Shakespeare text.
DEFAULT_CONFIG_PATH = str(Path(__file__).parent / "configs" / "shakespeare.py")


def _model_fields() -> tuple[dataclasses.Field, ...]:
    """GPTConfig's fields that are config keys (model.<name>)."""
    return tuple(f for f in dataclasses.fields(GPTConfig) if f.metadata.get("config", True))


def _config_default(field: dataclasses.Field):
    """A model field's value in base_config: "auto" where the field can be resolved."""
    return "auto" if "auto" in field.metadata.get("choices", ()) else field.default


def base_config() -> ml_collections.ConfigDict:
    """GPT-2 124M on FineWeb with llm.c's settings. The model section is GPTConfig's fields (their
    comments are in gpt2_jax/model/gpt.py); every other field is commented here."""
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict({f.name: _config_default(f) for f in _model_fields()})

    c.train = ml_collections.ConfigDict()
    c.train.max_steps = 19073  # optimizer steps (10B tokens / 524,288)
    c.train.micro_batch_size = 64  # sequences per data-parallel device per micro-step (llm.c -b)
    c.train.total_batch_size = 524288  # tokens per optimizer step (llm.c -d); accumulates to it
    c.train.seq_len = 1024  # tokens per sequence (llm.c -t)
    c.train.seed = 0  # parameter init and data order
    c.train.log_every = 1  # steps between console/metrics rows
    c.train.eval_every = 250  # steps between validation-loss evaluations (0 = never)
    c.train.hellaswag_every = 0  # steps between HellaSwag evaluations (0 = never; llm.c: 250)
    c.train.hellaswag_file = ""  # hellaswag_val.jsonl ("" = the cached copy, else download once)
    c.train.core_every = 0  # steps between CORE evaluations (0 = never)
    c.train.core_bundle = ""  # eval bundle directory ("" = the cached copy, else download once)
    c.train.core_max_per_task = 0  # items per CORE task (0 = all)
    c.train.eval_steps = 20  # validation batches per evaluation (llm.c: 20 x 64 x 1024 tokens)
    c.train.loss_chunk_size = 0  # tokens per fp32-logits chunk in the loss (0 = whole micro-batch)
    c.train.checkpoint_every = 1000  # steps between (asynchronous) checkpoints (0 = only at the end)
    c.train.checkpoint_at_end = True  # save the final weights (evaluate, sample, init_from read them)
    c.train.keep_checkpoints = 3  # newest checkpoints kept
    c.train.keep_checkpoint_every = 5000  # also keep every checkpoint whose step is a multiple (0 = none)
    c.train.resume = True  # resume from the workdir's newest checkpoint; False sets old ones aside
    c.train.init_from = ""  # workdir or checkpoints/ dir to take initial weights from (fine-tuning)
    c.train.health_every = 250  # steps between activation/parameter health reports (0 = never)
    c.train.tensorboard = True  # also write metrics as TensorBoard events under <workdir>/tensorboard
    c.train.sample_tokens = 64  # tokens sampled at the end of training (0 = no sample)
    c.train.sample_prompt = "\n"  # prompt of that sample

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 6e-4  # peak learning rate
    c.optim.warmup_steps = 700  # linear warmup steps
    c.optim.final_lr_frac = 0.0  # cosine decays to final_lr_frac * lr at max_steps (llm.c -q)
    c.optim.weight_decay = 0.1  # AdamW decay, on matmul and embedding weights only
    c.optim.b1 = 0.9
    c.optim.b2 = 0.95
    c.optim.eps = 1e-8
    c.optim.grad_clip = 1.0  # global-norm clipping threshold (0 = off)
    c.optim.name = "adamw"  # adamw (everything, at optim.lr) | muon (hidden matrices; groups below)
    # optim.name=muon only: Muon on the blocks' matrices, Adam (optim.b1/b2/eps, no decay) on the
    # rest, each group at its own peak lr on the same warmup + cosine shape. Muon, embedding and
    # head lrs from modded-nanogpt's record (records/110624_ShortcutsTweaks).
    c.optim.muon_lr = 0.02  # Muon: the blocks' weight matrices
    c.optim.muon_momentum = 0.95  # Muon's Nesterov momentum
    c.optim.embed_lr = 0.3  # Adam: token (and position) embeddings
    c.optim.head_lr = 0.002  # Adam: an untied lm_head
    c.optim.scalar_lr = 0.02  # Adam: biases and norm gains (that record has none; our choice)

    c.stability = ml_collections.ConfigDict()
    c.stability.loss_zscore = 5.0  # skip an update whose loss z-score exceeds this (0 = off; llm.c -sl)
    c.stability.grad_zscore = 5.0  # same for the gradient norm (0 = off; llm.c -sg)
    c.stability.window = 128  # z-scores compare with this many recent finite values (llm.c: 128)
    c.stability.max_bad_steps = 5  # stop after this many consecutive non-finite steps

    c.data = ml_collections.ConfigDict()
    c.data.source = "shards"  # shards (the globs below) | shakespeare (shipped text) | synthetic
    c.data.train_files = "data/fineweb10B/fineweb_train_*.bin"  # glob of llm.c .bin shards
    c.data.val_files = "data/fineweb10B/fineweb_val_*.bin"
    c.data.num_threads = 8  # grain reader threads
    c.data.prefetch = 16  # batches read ahead of the train step

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # data-parallel devices (-1 = all the others)
    c.mesh.fsdp = 1  # devices sharding parameters and optimizer state (ZeRO-3)
    c.mesh.tensor = 1  # devices splitting heads / MLP / vocabulary (tensor parallelism)
    c.mesh.zero1 = False  # also split AdamW moments over the data axis (llm.c -z 1, ZeRO-1)
    return c


# Parsers of override values, by the type of the field they replace (absl's, as flags use).
_PARSERS = {bool: flags.BooleanParser(), int: flags.IntegerParser(),
            float: flags.FloatParser(), str: flags.ArgumentParser()}


def _unknown_key(path: list[str], depth: int, known: Sequence[str], context: str = "") -> str:
    """The error for key `path`, whose part `depth` is not among `known`, with a close match."""
    close = difflib.get_close_matches(path[depth], list(known), n=1)
    hint = f"; did you mean {'.'.join(path[:depth] + close)}?" if close else ""
    return f"unknown config key {'.'.join(path)}{context}{hint}"


def _execute(path: str) -> ml_collections.ConfigDict:
    """`get_config()` of the config file at `path`; the file is executed once."""
    name = f"gpt2_jax_config_file_{Path(path).stem}"
    loader = importlib.machinery.SourceFileLoader(name, path)
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader))
    try:
        loader.exec_module(module)
        if not callable(getattr(module, "get_config", None)):
            raise ConfigError(f"{path}: a config file defines get_config() (see configs/)")
        config = module.get_config()
    except ConfigError:
        raise
    except SyntaxError as e:
        raise ConfigError(f"{e.filename}:{e.lineno}: syntax error in the config file: "
                          f"{e.msg}") from None
    except Exception as e:  # noqa: BLE001 - the config file's own code failed
        lines = [lineno for frame, lineno in traceback.walk_tb(e.__traceback__)
                 if Path(frame.f_code.co_filename).resolve() == Path(path).resolve()]
        where = f"{path}:{lines[-1]}" if lines else path
        raise ConfigError(f"{where}: the config file failed: {type(e).__name__}: {e}") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"{path}: get_config() returned {type(config).__name__}, not the "
                          "ConfigDict of base_config()")
    return config


def _check_keys(config: ml_collections.ConfigDict, sheet: ml_collections.ConfigDict,
                path: str, prefix: tuple[str, ...] = ()) -> None:
    """A config file changes values of base_config()'s keys; it neither adds keys (a typo
    would be ignored) nor removes them."""
    for key in config.keys():
        if key not in sheet:
            raise ConfigError(f"{path}: " + _unknown_key([*prefix, key], len(prefix),
                                                         sheet.keys()))
        if isinstance(sheet[key], ml_collections.ConfigDict):
            if not isinstance(config[key], ml_collections.ConfigDict):
                raise ConfigError(f"{path}: config key {'.'.join([*prefix, key])} is a section "
                                  f"of base_config(), not {config[key]!r}")
            _check_keys(config[key], sheet[key], path, (*prefix, key))
    missing = [".".join([*prefix, key]) for key in sheet.keys() if key not in config]
    if missing:
        raise ConfigError(f"{path}: missing config key(s) {', '.join(missing)}: start from "
                          "base_config() and change values")


def _apply_override(config: ml_collections.ConfigDict, override: str) -> None:
    """`--config.a.b=value`, the value parsed as the type of the field it replaces."""
    if not override.startswith("--config.") or "=" not in override:
        raise ConfigError(f"override {override!r} must look like --config.section.key=value")
    key, text = override[len("--config."):].split("=", 1)
    path, node = key.split("."), config
    for depth, name in enumerate(path[:-1]):
        if not isinstance(node[name] if name in node else None, ml_collections.ConfigDict):
            raise ConfigError(_unknown_key(path, depth, node.keys(), f" (in {override})"))
        node = node[name]
    if path[-1] not in node:
        raise ConfigError(_unknown_key(path, len(path) - 1, node.keys(), f" (in {override})"))
    parser = _PARSERS.get(type(node[path[-1]]))
    if parser is None:
        raise ConfigError(f"flag {override}: config.{key} is a section; override its keys")
    try:
        node[path[-1]] = parser.parse(text)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"flag {override}: {e}") from None


def load_config(path: str | None = None, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Load a config file (default: the Shakespeare one), apply `--config.a.b=value` overrides
    (typed like the field they replace), and validate the result (locked: no key can be added)."""
    path = path or DEFAULT_CONFIG_PATH
    if not Path(path).is_file():
        raise ConfigError(f"config file {path} does not exist")
    config = _execute(path)
    _check_keys(config, base_config(), path)
    for override in overrides:
        _apply_override(config, override)
    config.lock()
    validate(config)
    return config


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _model_spec(m: ml_collections.ConfigDict) -> GPTConfig:
    """A config's model section as a GPTConfig, field by field, "auto" choices unresolved. A key
    the section lacks (a checkpoint's config from before the key existed) takes its default."""
    return GPTConfig(real_vocab_size=VOCAB_SIZE, **{
        f.name: m[f.name] if f.name in m else _config_default(f) for f in _model_fields()})


def _known(size: int) -> int:
    """A mesh axis' size as far as the config fixes it (-1 is resolved with the devices)."""
    return size if size > 0 else 1


def validate(c: ml_collections.ConfigDict) -> None:
    """Reject configs that cannot run, naming the key(s), before any work starts. The batch and
    tensor-parallel checks see the mesh axes the config fixes; RunPlan sees the mesh."""
    _model_spec(c.model).check()
    m, t, o = c.model, c.train, c.optim
    _check(0 < t.seq_len <= m.block_size,
           f"train.seq_len ({t.seq_len}) must be in 1..model.block_size ({m.block_size})")
    _check(t.max_steps > 0 and t.micro_batch_size > 0,
           "train.max_steps and train.micro_batch_size must be positive")
    for axis in ("data", "fsdp", "tensor"):
        size = c.mesh[axis]
        _check(size == -1 or size > 0, f"mesh.{axis} ({size}) must be positive or -1")
    BatchLayout.split(t, _known(c.mesh.data) * _known(c.mesh.fsdp))
    micro_tokens = t.micro_batch_size * t.seq_len
    _check(t.loss_chunk_size >= 0 and (t.loss_chunk_size == 0 or micro_tokens % t.loss_chunk_size == 0),
           f"train.loss_chunk_size ({t.loss_chunk_size}) must divide the {micro_tokens} tokens "
           "of a micro-batch (train.micro_batch_size * train.seq_len), or be 0")
    _check(t.log_every > 0 and t.eval_every >= 0 and t.eval_steps > 0,
           "train.log_every and train.eval_steps must be positive, train.eval_every >= 0")
    _check(t.checkpoint_every >= 0 and t.keep_checkpoints >= 1 and t.keep_checkpoint_every >= 0,
           "train.checkpoint_every and train.keep_checkpoint_every must be >= 0, "
           "train.keep_checkpoints >= 1")
    st = c.stability
    _check(st.loss_zscore >= 0 and st.grad_zscore >= 0,
           "stability.loss_zscore and stability.grad_zscore must be >= 0 (0 = off)")
    _check(st.window >= 2 and st.max_bad_steps >= 1,
           "stability.window must be >= 2 and stability.max_bad_steps >= 1")
    _check(t.hellaswag_every >= 0, f"train.hellaswag_every ({t.hellaswag_every}) must be >= 0")
    _check(t.core_every >= 0, f"train.core_every ({t.core_every}) must be >= 0")
    _check(t.health_every >= 0, f"train.health_every ({t.health_every}) must be >= 0")
    _check(o.lr > 0, f"optim.lr ({o.lr}) must be positive")
    _check(o.name in ("adamw", "muon"), f"optim.name must be adamw or muon, not {o.name!r}")
    for key in ("muon_lr", "embed_lr", "head_lr", "scalar_lr"):
        _check(o[key] > 0, f"optim.{key} ({o[key]}) must be positive")
    _check(0 <= o.muon_momentum < 1, f"optim.muon_momentum ({o.muon_momentum}) must be in [0, 1)")
    _check(0 <= o.warmup_steps, f"optim.warmup_steps ({o.warmup_steps}) must be >= 0")
    _check(0.0 <= o.final_lr_frac <= 1.0, f"optim.final_lr_frac ({o.final_lr_frac}) must be in [0, 1]")
    _check(o.weight_decay >= 0 and o.grad_clip >= 0,
           "optim.weight_decay and optim.grad_clip must be >= 0")
    _check(0 <= o.b1 < 1 and 0 <= o.b2 < 1 and o.eps > 0,
           "optim.b1 and optim.b2 must be in [0, 1), optim.eps positive")
    _check(c.data.source in ("shards", "shakespeare", "synthetic"),
           f"data.source must be shards, shakespeare or synthetic, not {c.data.source!r}")
    if c.data.source == "shards":
        _check(bool(c.data.train_files) and bool(c.data.val_files),
               "data.train_files and data.val_files must be glob patterns when data.source=shards")
    check_tensor_parallelism(c, _known(c.mesh.tensor))


def check_tensor_parallelism(c: ml_collections.ConfigDict, tensor: int) -> None:
    """Tensor parallelism splits heads, the MLP width and the vocabulary: each must divide."""
    if tensor <= 1:
        return
    m = c.model
    for key, size in (("model.n_head", m.n_head), ("4 x model.n_embd (the MLP width)",
                                                    4 * m.n_embd),
                      ("model.vocab_size", m.vocab_size)):
        _check(size % tensor == 0, f"mesh.tensor ({tensor}) must divide {key} ({size}): "
                                   "tensor parallelism splits it across devices")


def model_config(c: ml_collections.ConfigDict, backend: str | None = None,
                 devices: int | None = None, tensor: int | None = None) -> GPTConfig:
    """The model's static config, with "auto" choices resolved for the backend in use, the
    number of devices the model is sharded over (default: all of them) and how many of them
    its tensor-parallel axis spans (default: the config's mesh.tensor)."""
    backend = backend or jax.default_backend()
    devices = devices or jax.device_count()
    tensor = c.mesh.tensor if tensor is None else tensor
    spec = _model_spec(c.model)
    dtype = spec.dtype if spec.dtype != "auto" else ("float32" if backend == "cpu" else "bfloat16")
    attention = spec.attention
    if attention == "auto":
        attention = "cudnn" if backend == "gpu" and dtype == "bfloat16" else "xla"
    return dataclasses.replace(spec, dtype=dtype, attention=attention,
                               **kernels.resolve(spec, backend, devices, tensor))


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """A config resolved for the mesh it trains on, once per command: the model, how a step's
    batch splits, and how ZeRO-1 splits the optimizer state."""

    model: GPTConfig  # "auto" choices resolved for this backend and mesh
    batch: BatchLayout
    zero1: bool  # the AdamW moments are also split over the data axis (mesh.zero1)
    # ... and the stacked blocks' moments by whole layers, where the data axis divides n_layer
    # (sharding.optimizer_rules says why).
    zero1_by_layers: bool

    @classmethod
    def resolve(cls, c: ml_collections.ConfigDict, mesh: Mesh) -> "RunPlan":
        check_tensor_parallelism(c, mesh.shape["tensor"])  # mesh.tensor=-1 is known only now
        model = model_config(c, devices=mesh.size, tensor=mesh.shape["tensor"])
        by_layers = c.mesh.zero1 and model.n_layer % mesh.shape["data"] == 0
        return cls(model=model, batch=BatchLayout.from_config(c, mesh), zero1=c.mesh.zero1,
                   zero1_by_layers=by_layers)
