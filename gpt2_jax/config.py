"""Run configuration: the full hyperparameter sheet, loading with overrides, and validation.

Config files are ml_collections files with `get_config()`; they start from `base_config()` (GPT-2
124M with llm.c's hyperparameters) and change what differs. Overrides are `--config.a.b=value`;
an unknown key or a value of the wrong type is rejected with a ConfigError naming the key.
"""

from __future__ import annotations

import difflib
import traceback
from collections.abc import Sequence
from pathlib import Path

import jax
import ml_collections
from absl import flags
from ml_collections import config_flags

from gpt2_jax.errors import ConfigError
from gpt2_jax.ops.norm_kernel import MAX_WIDTH as NORM_KERNEL_WIDTH
from gpt2_jax.model import REMAT_CHOICES, GPTConfig
from gpt2_jax.tokenizer import VOCAB_SIZE

# The model's Pallas kernel choices (auto | pallas | xla): speed choices, not part of a run's
# weights, so a restored checkpoint chooses them again for its own mesh.
PALLAS_KERNEL_KEYS = ("loss_kernel", "gelu_kernel", "norm_kernel")
# The config that runs when no --config is given: a small GPT-2 on the shipped Shakespeare text.
DEFAULT_CONFIG_PATH = str(Path(__file__).parent / "configs" / "shakespeare.py")


def base_config() -> ml_collections.ConfigDict:
    """GPT-2 124M on FineWeb with llm.c's settings; every field commented."""
    c = ml_collections.ConfigDict()

    c.model = ml_collections.ConfigDict()
    c.model.n_layer = 12
    c.model.n_head = 12
    c.model.n_embd = 768
    c.model.vocab_size = 50304  # 50257 padded to a multiple of 64; the padding never wins
    c.model.block_size = 1024  # longest sequence (learned position embeddings)
    c.model.dtype = "auto"  # compute dtype: auto (bfloat16 on GPU/TPU, float32 on CPU) | bfloat16 | float32
    c.model.attention = "auto"  # auto (cudnn on GPU with bf16, else xla) | cudnn | xla
    c.model.remat = "none"  # activation recomputation: none | full | a jax.checkpoint_policies name
    c.model.logits_dtype = "float32"  # storage of the loss's logits: float32 | bfloat16 (softmax in fp32)
    # The loss after the LM head: auto (pallas on GPUs without tensor parallelism, else xla) |
    # pallas (llm.c's fused classifier as a Pallas kernel, ops/loss_kernel.py; on a mesh each
    # device runs it on its rows, so mesh.tensor must be 1; no softcap) | xla
    c.model.loss_kernel = "auto"
    # The MLP's bias add and GELU: auto (pallas on GPUs, else xla) | pallas (forward and backward
    # as Pallas kernels, ops/gelu_kernel.py; on a mesh each device runs them on its shard) | xla
    c.model.gelu_kernel = "auto"
    # The residual and bias adds and the LayerNorm after them: auto (pallas on GPUs with
    # model.norm=layernorm, else xla) | pallas (one Pallas kernel each way, ops/norm_kernel.py; on a
    # mesh each device runs them on its rows) | xla
    c.model.norm_kernel = "auto"
    c.model.scan_unroll = 1  # layers per iteration of the compiled layer loop (n_layer = unrolled)
    c.model.fp8 = False  # FP8 (e4m3/e5m2, current scaling) for the blocks' matmuls; Hopper+ GPUs
    # The modern recipe (configs/modern_124m.py turns it on); the defaults are exact GPT-2.
    c.model.pos_emb = "learned"  # learned (wpe) | rope (rotary embeddings on q and k, no wpe)
    c.model.norm = "layernorm"  # layernorm | rmsnorm
    c.model.qk_norm = False  # RMS-normalize q and k per head before attention
    c.model.mlp_act = "gelu_tanh"  # gelu_tanh | relu2 (squared ReLU)
    c.model.tie_embeddings = True  # False: a separate lm_head, zero-initialized
    c.model.logit_softcap = 0.0  # > 0: logits = c * tanh(logits / c) (0 = off)

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
    # head lrs from modded-nanogpt's 2024-11-06 record (records/110624_ShortcutsTweaks).
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


def _parse(path: str, overrides: Sequence[str]) -> ml_collections.ConfigDict:
    """The config file with overrides applied by ml_collections' typed flag parser."""
    argv = ["gpt2_jax", *overrides]
    flag_values = flags.FlagValues()
    try:
        config_flags.DEFINE_config_file("config", path, flag_values=flag_values,
                                        lock_config=True, sys_argv=argv)
        flag_values(argv)
    except flags.Error as e:
        raise ConfigError(str(e)) from None
    except SyntaxError as e:
        raise ConfigError(f"{e.filename}:{e.lineno}: syntax error in the config file: "
                          f"{e.msg}") from None
    except Exception as e:  # noqa: BLE001 - the config file's own code failed
        lines = [lineno for frame, lineno in traceback.walk_tb(e.__traceback__)
                 if Path(frame.f_code.co_filename).resolve() == Path(path).resolve()]
        where = f"{path}:{lines[-1]}" if lines else path
        raise ConfigError(f"{where}: the config file failed: {type(e).__name__}: {e}") from None
    return flag_values.config


def _check_override_key(config: ml_collections.ConfigDict, override: str) -> None:
    if not override.startswith("--config.") or "=" not in override:
        raise ConfigError(f"override {override!r} must look like --config.section.key=value")
    path = override[len("--config."):].split("=", 1)[0].split(".")
    node = config
    for depth, key in enumerate(path):
        if not isinstance(node, ml_collections.ConfigDict) or key not in node:
            known = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {'.'.join(path[:depth] + close)}?" if close else ""
            raise ConfigError(f"unknown config key {'.'.join(path)} (in {override}){hint}")
        node = node[key]


def load_config(path: str | None = None, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Load a config file (default: the Shakespeare one), apply `--config.a.b=value` overrides
    (typed like the field they replace), and validate the result."""
    path = path or DEFAULT_CONFIG_PATH
    if not Path(path).is_file():
        raise ConfigError(f"config file {path} does not exist")
    base = _parse(path, [])
    for override in overrides:
        _check_override_key(base, override)
    config = _parse(path, overrides) if overrides else base
    validate(config)
    return config


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(c: ml_collections.ConfigDict) -> None:
    """Reject configs that cannot run, naming the key(s), before any work starts."""
    m, t, o = c.model, c.train, c.optim
    _check(m.n_layer > 0 and m.n_head > 0 and m.n_embd > 0,
           "model.n_layer, model.n_head and model.n_embd must be positive")
    _check(m.n_embd % m.n_head == 0,
           f"model.n_embd ({m.n_embd}) must be divisible by model.n_head ({m.n_head})")
    _check(m.vocab_size >= VOCAB_SIZE,
           f"model.vocab_size ({m.vocab_size}) must be at least GPT-2's {VOCAB_SIZE}")
    _check(m.dtype in ("auto", "bfloat16", "float32"),
           f"model.dtype must be auto, bfloat16 or float32, not {m.dtype!r}")
    _check(m.attention in ("auto", "cudnn", "xla"),
           f"model.attention must be auto, cudnn or xla, not {m.attention!r}")
    _check(m.logits_dtype in ("float32", "bfloat16"),
           f"model.logits_dtype must be float32 or bfloat16, not {m.logits_dtype!r}")
    for key in PALLAS_KERNEL_KEYS:
        _check(m[key] in ("auto", "pallas", "xla"),
               f"model.{key} must be auto, pallas or xla, not {m[key]!r}")
    _check(m.gelu_kernel != "pallas" or m.mlp_act == "gelu_tanh",
           f"model.gelu_kernel=pallas computes GELU, and model.mlp_act is {m.mlp_act!r}: set "
           "model.gelu_kernel=auto or xla")
    _check(m.norm_kernel != "pallas" or m.norm == "layernorm",
           f"model.norm_kernel=pallas computes LayerNorm, and model.norm is {m.norm!r}: set "
           "model.norm_kernel=auto or xla")
    _check(m.norm_kernel != "pallas" or m.n_embd <= NORM_KERNEL_WIDTH,
           f"model.norm_kernel=pallas takes rows of at most {NORM_KERNEL_WIDTH} channels, and "
           f"model.n_embd is {m.n_embd}: set model.norm_kernel=auto or xla")
    _check(m.loss_kernel != "pallas" or m.logit_softcap == 0,
           "model.loss_kernel=pallas has no logit softcap: set model.logit_softcap=0 or "
           "model.loss_kernel=xla")
    _check(1 <= m.scan_unroll <= m.n_layer,
           f"model.scan_unroll ({m.scan_unroll}) must be in 1..model.n_layer ({m.n_layer})")
    _check(m.remat in REMAT_CHOICES, f"model.remat must be one of {REMAT_CHOICES}, not {m.remat!r}")
    _check(m.pos_emb in ("learned", "rope"),
           f"model.pos_emb must be learned or rope, not {m.pos_emb!r}")
    _check(m.pos_emb != "rope" or (m.n_embd // m.n_head) % 2 == 0,
           f"model.pos_emb=rope needs an even head size, not {m.n_embd // m.n_head} "
           "(model.n_embd / model.n_head)")
    _check(m.norm in ("layernorm", "rmsnorm"),
           f"model.norm must be layernorm or rmsnorm, not {m.norm!r}")
    _check(m.mlp_act in ("gelu_tanh", "relu2"),
           f"model.mlp_act must be gelu_tanh or relu2, not {m.mlp_act!r}")
    _check(m.logit_softcap >= 0, f"model.logit_softcap ({m.logit_softcap}) must be >= 0 (0 = off)")
    _check(0 < t.seq_len <= m.block_size,
           f"train.seq_len ({t.seq_len}) must be in 1..model.block_size ({m.block_size})")
    _check(t.max_steps > 0 and t.micro_batch_size > 0,
           "train.max_steps and train.micro_batch_size must be positive")
    micro_tokens = t.micro_batch_size * t.seq_len
    _check(t.total_batch_size > 0 and t.total_batch_size % micro_tokens == 0,
           f"train.total_batch_size ({t.total_batch_size}) must be a multiple of "
           f"train.micro_batch_size * train.seq_len ({micro_tokens})")
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
    for axis in ("data", "fsdp", "tensor"):
        size = c.mesh[axis]
        _check(size == -1 or size > 0, f"mesh.{axis} ({size}) must be positive or -1")
    check_tensor_parallelism(c, c.mesh.tensor)


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


def _kernel_choice(key: str, choice: str, backend: str, devices: int, usable: bool,
                   runs_per_device: bool) -> str:
    """A Pallas kernel choice resolved. auto takes it on GPUs where the model is `usable` with
    it: on any mesh if it `runs_per_device` (sharding.per_device; measured faster on 2 GPUs),
    else on a single GPU only. An explicit pallas on several devices needs a kernel that runs
    per device, else it is an error naming `key`."""
    if choice == "auto":
        on_gpu = backend == "gpu" and usable
        return "pallas" if on_gpu and (devices == 1 or runs_per_device) else "xla"
    _check(choice != "pallas" or devices == 1 or runs_per_device,
           f"model.{key}=pallas runs on each device's whole rows (its kernel has no partitioning "
           f"rule), which this mesh of {devices} devices splits (mesh.tensor): use auto or xla")
    return choice


def model_config(c: ml_collections.ConfigDict, backend: str | None = None,
                 devices: int | None = None, tensor: int | None = None) -> GPTConfig:
    """The model's static config, with "auto" choices resolved for the backend in use, the
    number of devices the model is sharded over (default: all of them) and how many of them
    its tensor-parallel axis spans (default: the config's mesh.tensor)."""
    backend = backend or jax.default_backend()
    devices = devices or jax.device_count()
    tensor = c.mesh.tensor if tensor is None else tensor
    m = c.model
    dtype = m.dtype if m.dtype != "auto" else ("float32" if backend == "cpu" else "bfloat16")
    attention = m.attention
    if attention == "auto":
        attention = "cudnn" if backend == "gpu" and dtype == "bfloat16" else "xla"
    # The loss kernel needs whole rows of logits: tensor parallelism splits the vocabulary.
    loss_kernel = _kernel_choice("loss_kernel", m.loss_kernel, backend, devices,
                                 usable=not m.logit_softcap, runs_per_device=tensor == 1)
    gelu_kernel = _kernel_choice("gelu_kernel", m.gelu_kernel, backend, devices,
                                 usable=m.mlp_act == "gelu_tanh", runs_per_device=True)
    norm_kernel = _kernel_choice("norm_kernel", m.norm_kernel, backend, devices,
                                 usable=m.norm == "layernorm" and m.n_embd <= NORM_KERNEL_WIDTH,
                                 runs_per_device=True)
    return GPTConfig(n_layer=m.n_layer, n_head=m.n_head, n_embd=m.n_embd,
                     vocab_size=m.vocab_size, real_vocab_size=VOCAB_SIZE,
                     block_size=m.block_size, dtype=dtype,
                     attention=attention, remat=m.remat, logits_dtype=m.logits_dtype,
                     loss_kernel=loss_kernel, gelu_kernel=gelu_kernel, norm_kernel=norm_kernel,
                     scan_unroll=m.scan_unroll, pos_emb=m.pos_emb, norm=m.norm,
                     qk_norm=m.qk_norm, mlp_act=m.mlp_act, tie_embeddings=m.tie_embeddings,
                     logit_softcap=m.logit_softcap, fp8=m.fp8)
