"""OpenAI's GPT-2 weights in and out, through Hugging Face's transformers format.

    python -m gpt2_jax.hf import gpt2-xl --workdir runs/gpt2-xl     # hub name or local directory
    python -m gpt2_jax.hf export --workdir runs/mine [--step N] --out hf/mine [--force]

`import` writes the weights as a step-0, params-only checkpoint that `evaluate`, `sample` and
`train.init_from` read like any run's. `export` writes config.json + model.safetensors, which
`transformers.GPT2LMHeadModel.from_pretrained` loads, with GPT-2's tokenizer (tokenizer.json and
its config), which `transformers.AutoTokenizer.from_pretrained` loads offline; into a new or empty
directory (--force: over what is there).

transformers' GPT-2 stores its Conv1D weights (in, out), the orientation of our kernels, so the
conversion is reshapes only: the fused q/k/v and head axes, the stacked layer axis, and the
vocabulary padding (50257 rows there, 50304 here, the padded rows zero). Needs safetensors (and
huggingface_hub for hub names), never torch: `pip install -e ".[hf]"`.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from gpt2_jax import tokenizer
from gpt2_jax.util import atomic
from gpt2_jax.training.checkpoint import load_trained, save_params
from gpt2_jax.config import base_config, model_config
from gpt2_jax.errors import WeightsError, WorkdirError, exits_on_user_error, require_extra
from gpt2_jax.model import GPTConfig


def _layer_table(cfg: GPTConfig) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
    """transformers' per-layer names -> (our path under params["h"], our per-layer shape)."""
    D, H, K = cfg.n_embd, cfg.n_head, cfg.head_dim
    return {
        "ln_1.weight": (("ln_1", "scale"), (D,)),
        "ln_1.bias": (("ln_1", "bias"), (D,)),
        "attn.c_attn.weight": (("attn", "c_attn", "kernel"), (D, 3, H, K)),
        "attn.c_attn.bias": (("attn", "c_attn", "bias"), (3, H, K)),
        "attn.c_proj.weight": (("attn", "c_proj", "kernel"), (H, K, D)),
        "attn.c_proj.bias": (("attn", "c_proj", "bias"), (D,)),
        "ln_2.weight": (("ln_2", "scale"), (D,)),
        "ln_2.bias": (("ln_2", "bias"), (D,)),
        "mlp.c_fc.weight": (("mlp", "c_fc", "kernel"), (D, 4 * D)),
        "mlp.c_fc.bias": (("mlp", "c_fc", "bias"), (4 * D,)),
        "mlp.c_proj.weight": (("mlp", "c_proj", "kernel"), (4 * D, D)),
        "mlp.c_proj.bias": (("mlp", "c_proj", "bias"), (D,)),
    }


def _hf_layer_shape(name: str, cfg: GPTConfig) -> tuple[int, ...]:
    D = cfg.n_embd
    return {"attn.c_attn.weight": (D, 3 * D), "attn.c_attn.bias": (3 * D,),
            "attn.c_proj.weight": (D, D)}.get(name, _layer_table(cfg)[name][1])


def _get(tree: dict, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def params_from_hf(state: dict[str, np.ndarray], cfg: GPTConfig) -> dict:
    """Our float32 params from a transformers GPT-2 state dict (names with or without the
    "transformer." prefix); a missing or misshapen tensor is an error naming it."""
    state = {name.removeprefix("transformer."): value for name, value in state.items()}

    def take(name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in state:
            raise WeightsError(f"the transformers checkpoint has no tensor {name!r}")
        value = np.asarray(state[name], np.float32)
        if value.shape != shape:
            raise WeightsError(f"tensor {name!r} has shape {value.shape}, expected {shape}")
        return value

    V, D = tokenizer.VOCAB_SIZE, cfg.n_embd
    wte = np.zeros((cfg.vocab_size, D), np.float32)
    wte[:V] = take("wte.weight", (V, D))
    params: dict = {"wte": {"embedding": wte},
                    "wpe": {"embedding": take("wpe.weight", (cfg.block_size, D))},
                    "ln_f": {"scale": take("ln_f.weight", (D,)), "bias": take("ln_f.bias", (D,))}}
    for name, (path, shape) in _layer_table(cfg).items():
        layers = [take(f"h.{i}.{name}", _hf_layer_shape(name, cfg)).reshape(shape)
                  for i in range(cfg.n_layer)]
        _set(params, ("h", *path), np.stack(layers))
    return params


def hf_from_params(params: dict, cfg: GPTConfig) -> dict[str, np.ndarray]:
    """The transformers GPT2LMHeadModel state dict of our params (lm_head is tied to wte)."""
    V = tokenizer.VOCAB_SIZE
    state = {"transformer.wte.weight": np.asarray(params["wte"]["embedding"])[:V],
             "transformer.wpe.weight": np.asarray(params["wpe"]["embedding"]),
             "transformer.ln_f.weight": np.asarray(params["ln_f"]["scale"]),
             "transformer.ln_f.bias": np.asarray(params["ln_f"]["bias"])}
    for name, (path, _) in _layer_table(cfg).items():
        stacked = np.asarray(_get(params["h"], path))
        for i in range(cfg.n_layer):
            state[f"transformer.h.{i}.{name}"] = stacked[i].reshape(_hf_layer_shape(name, cfg))
    return {name: np.ascontiguousarray(value, np.float32) for name, value in state.items()}


def hf_config(cfg: GPTConfig) -> dict:
    """config.json of a transformers GPT2LMHeadModel with our architecture."""
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "vocab_size": tokenizer.VOCAB_SIZE, "n_positions": cfg.block_size,
            "n_embd": cfg.n_embd, "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_inner": None,
            "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
            "tie_word_embeddings": True, "bos_token_id": tokenizer.EOT_TOKEN,
            "eos_token_id": tokenizer.EOT_TOKEN, "torch_dtype": "float32"}


def config_from_hf(hf: dict) -> ml_collections.ConfigDict:
    """Our run config (llm.c's settings) for a transformers GPT-2 config.json; refuses variants
    our model does not implement, naming the field."""
    expected = {"vocab_size": tokenizer.VOCAB_SIZE, "activation_function": "gelu_new",
                "layer_norm_epsilon": 1e-5, "scale_attn_by_inverse_layer_idx": False}
    for key, value in expected.items():
        if key in hf and hf[key] != value:
            raise WeightsError(f"config.json {key}={hf[key]!r}: only {value!r} (GPT-2's) is "
                              "supported")
    if hf.get("n_inner") not in (None, 4 * hf["n_embd"]):
        raise WeightsError(f"config.json n_inner={hf['n_inner']}: only 4 * n_embd is supported")
    c = base_config()
    c.model.n_layer, c.model.n_head = hf["n_layer"], hf["n_head"]
    c.model.n_embd, c.model.block_size = hf["n_embd"], hf["n_positions"]
    c.train.seq_len = min(c.train.seq_len, c.model.block_size)
    return c


def _safetensors():
    """safetensors.numpy, which the [hf] extra installs."""
    try:
        from safetensors import numpy as safetensors_numpy
    except ImportError:
        raise WeightsError("reading or writing transformers weights needs safetensors: "
                           "pip install -e '.[hf]'") from None
    return safetensors_numpy


def read_hf(source: str) -> tuple[dict, dict[str, np.ndarray]]:
    """(config.json, tensors) of a transformers checkpoint: a local directory or a hub name."""
    load_file = _safetensors().load_file

    directory = Path(source)
    if not directory.is_dir():
        try:
            from huggingface_hub import snapshot_download
        except ImportError:
            raise WeightsError(f"{source} is not a directory, and downloading it from the hub "
                              "needs huggingface_hub: pip install -e '.[hf]'") from None
        try:
            directory = Path(snapshot_download(source,
                                               allow_patterns=["config.json", "*.safetensors"]))
        except Exception as e:  # offline, no such repository, no access: the hub's many errors
            raise WeightsError(f"{source} is not a directory, and fetching it from the Hugging Face "
                              f"hub failed ({type(e).__name__}: {str(e).splitlines()[0]}); offline, "
                              "pass a directory holding config.json and model.safetensors") from None
    files = sorted(directory.glob("*.safetensors"))
    config_path = directory / "config.json"
    if not config_path.is_file() or not files:
        raise WeightsError(f"{directory}: a transformers checkpoint needs config.json and "
                           "*.safetensors (re-save a pytorch_model.bin one with safe_serialization)")
    try:
        hf = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WeightsError(f"{config_path}: not a JSON file ({e})") from None
    missing = [key for key in ("n_layer", "n_head", "n_embd", "n_positions")
               if not isinstance(hf, dict) or key not in hf]
    if missing:
        raise WeightsError(f"{config_path}: no {', '.join(missing)} (not a GPT-2 config.json?)")
    state: dict[str, np.ndarray] = {}
    for file in files:
        try:
            state.update(load_file(file))
        except Exception as e:  # noqa: BLE001 - safetensors reports a bad file in several ways
            raise WeightsError(f"{file}: not a readable safetensors file "
                               f"({type(e).__name__}: {e})") from None
    return hf, state


def import_weights(source: str, workdir: str | Path) -> tuple[ml_collections.ConfigDict, int]:
    """Write `source`'s weights into `workdir` as a step-0 params-only checkpoint; returns its
    config and parameter count."""
    directory = Path(workdir) / "checkpoints"
    if directory.exists() and any(directory.iterdir()):
        raise WorkdirError(f"{directory} already holds checkpoints; import into a new workdir")
    hf, state = read_hf(source)
    c = config_from_hf(hf)
    params = params_from_hf(state, model_config(c, backend="cpu"))
    save_params(directory, 0, params, c)
    return c, sum(leaf.size for leaf in jax.tree.leaves(params))


def check_exportable(cfg: GPTConfig) -> None:
    """Only exact GPT-2 maps onto transformers' GPT2LMHeadModel: name the first option that
    does not."""
    exact = GPTConfig()
    for option in ("pos_emb", "norm", "qk_norm", "mlp_act", "tie_embeddings", "logit_softcap"):
        if getattr(cfg, option) != getattr(exact, option):
            raise WeightsError(f"model.{option}={getattr(cfg, option)!r}: GPT-2's transformers "
                               f"format has no such option (GPT-2 is {getattr(exact, option)!r}); "
                               "only runs of the exact GPT-2 architecture export")


def check_export_directory(out: Path, force: bool) -> None:
    """`out` must be a directory that can be written and holds nothing (or `force`): an export
    never silently replaces someone's config.json and weights."""
    if out.exists() and not out.is_dir():
        raise WorkdirError(f"--out {out}: a file, not a directory")
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if held and not force:
        raise WorkdirError(f"--out {out}: not empty ({', '.join(held[:5])}); choose a new "
                           "directory, or pass --force to overwrite")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WorkdirError(f"--out {out}: cannot create it ({e.strerror} on "
                           f"{e.filename or out})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise WorkdirError(f"--out {out}: not writable by this user")


def write_tokenizer(out: Path, block_size: int) -> None:
    """GPT-2's tokenizer as a `tokenizers` tokenizer.json (byte-level BPE from the shipped
    encoder.json/vocab.bpe) plus tokenizer_config.json. The fast file is what transformers 5
    reads reliably: a slow GPT2Tokenizer built from vocab/merges files can come out empty."""
    from importlib import resources

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    assets = resources.files("gpt2_jax") / "assets"
    with resources.as_file(assets / "encoder.json") as vocab, \
            resources.as_file(assets / "vocab.bpe") as merges:
        bpe = Tokenizer(models.BPE.from_file(str(vocab), str(merges)))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    bpe.add_special_tokens(["<|endoftext|>"])
    bpe.save(str(out / "tokenizer.json"))
    eot = "<|endoftext|>"
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "GPT2Tokenizer", "model_max_length": block_size, "bos_token": eot,
         "eos_token": eot, "unk_token": eot, "add_prefix_space": False}, indent=2) + "\n")



def export_weights(workdir: str | Path, out: str | Path, step: int | None = None,
                   force: bool = False) -> int:
    """Write the run's checkpoint as a transformers directory; returns the exported step. The
    files get the usual permissions (umask applied), like any file `open()` creates."""
    serialize = _safetensors().save
    require_extra("tokenizers", "hf", "hf export (its tokenizer.json)")  # before any file is written
    out = Path(out)
    check_export_directory(out, force)
    trained = load_trained(workdir, step)
    check_exportable(trained.model.config)
    params = jax.device_get(trained.params)
    try:
        atomic.write_bytes(out / "model.safetensors", serialize(
            hf_from_params(params, trained.model.config), metadata={"format": "pt"}))
        atomic.write_text(out / "config.json",
                          json.dumps(hf_config(trained.model.config), indent=2) + "\n")
        write_tokenizer(out, trained.model.config.block_size)
    except OSError as e:
        raise WorkdirError(f"--out {out}: cannot write {e.filename or out} "
                           f"({e.strerror})") from None
    return trained.step


@exits_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gpt2_jax.hf", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    imports = commands.add_parser("import", help="transformers checkpoint -> our checkpoint")
    imports.add_argument("source", help="hub name (gpt2, gpt2-medium, gpt2-large, gpt2-xl) or "
                                        "a directory with config.json and model.safetensors")
    imports.add_argument("--workdir", required=True, help="new run directory to write")
    exports = commands.add_parser("export", help="our checkpoint -> transformers directory")
    exports.add_argument("--workdir", required=True, help="the run to export")
    exports.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
    exports.add_argument("--out", required=True, help="directory for config.json, model.safetensors and the tokenizer")
    exports.add_argument("--force", action="store_true",
                         help="write into --out even if it holds files (replacing ours)")
    args = parser.parse_args(argv)
    if args.command == "import":
        c, n_params = import_weights(args.source, args.workdir)
        print(f"imported {args.source} ({c.model.n_layer} layers, {c.model.n_embd} channels, "
              f"{n_params:,} parameters) into {args.workdir}/checkpoints/0; "
              f"evaluate or sample with --workdir {args.workdir}, fine-tune with "
              f"--config.train.init_from={args.workdir}")
    else:
        step = export_weights(args.workdir, args.out, args.step, args.force)
        print(f"exported {args.workdir} step {step} to {args.out} "
              "(transformers.GPT2LMHeadModel.from_pretrained loads it)")

if __name__ == "__main__":
    main()
