"""Train GPT-2: `python -m gpt2_jax.train [--config PATH] [--config.KEY=VALUE ...] [--workdir DIR]`.

Intentionally short: the logic lives in modules that can be imported and tested (trainer.py).
With no --config, a small GPT-2 trains on the Shakespeare text the package ships.
"""

from __future__ import annotations

import sys
from pathlib import Path

from gpt2_jax.config import DEFAULT_CONFIG_PATH, ConfigError, load_config
from gpt2_jax.data.shards import ShardError
from gpt2_jax.trainer import train


def parse_args(args: list[str]) -> tuple[str, list[str], str]:
    """Command line -> (config path, config overrides, workdir)."""
    config_path, overrides, workdir = DEFAULT_CONFIG_PATH, [], None
    args = list(args)
    while args:
        arg = args.pop(0)
        if arg in ("--config", "--workdir"):
            if not args:
                raise ConfigError(f"{arg} needs a value")
            arg = f"{arg}={args.pop(0)}"
        if arg.startswith("--config="):
            config_path = arg.split("=", 1)[1]
        elif arg.startswith("--workdir="):
            workdir = arg.split("=", 1)[1]
        elif arg.startswith("--config."):
            overrides.append(arg)
        else:
            raise ConfigError(f"unexpected argument {arg!r}; usage: {__doc__.splitlines()[0]}")
    return config_path, overrides, workdir or str(Path("runs") / Path(config_path).stem)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return
    try:
        config_path, overrides, workdir = parse_args(args)
        train(load_config(config_path, overrides), workdir)
    except (ConfigError, ShardError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
