"""Train GPT-2: `python -m gpt2_jax.train [--config PATH] [--config.KEY=VALUE ...] [--workdir DIR]`.

Intentionally short: the logic lives in modules that can be imported and tested (loop.py, the training loop).
With no --config, a small GPT-2 trains on the Shakespeare text the package ships.
Several processes (hosts) join one run with --coordinator_address=HOST:PORT --num_processes=N
--process_id=I [--local_device_ids=0,1], or automatically under SLURM (launch/slurm.sbatch).
"""

from __future__ import annotations

import sys
from pathlib import Path

from gpt2_jax.config import DEFAULT_CONFIG_PATH, load_config
from gpt2_jax.parallel.distributed import initialize
from gpt2_jax.errors import ConfigError, exits_on_user_error
from gpt2_jax.training.loop import train


FLAGS = ("--config", "--workdir", "--coordinator_address", "--num_processes", "--process_id",
         "--local_device_ids")


def parse_args(args: list[str]) -> tuple[str, list[str], str, dict]:
    """Command line -> (config path, config overrides, workdir, distributed settings)."""
    values, overrides = {}, []
    args = list(args)
    while args:
        arg = args.pop(0)
        if arg in FLAGS:
            if not args:
                raise ConfigError(f"{arg} needs a value")
            arg = f"{arg}={args.pop(0)}"
        name = arg.split("=", 1)[0]
        if name in FLAGS and "=" in arg:
            values[name[2:]] = arg.split("=", 1)[1]
        elif arg.startswith("--config."):
            overrides.append(arg)
        else:
            raise ConfigError(f"unexpected argument {arg!r}; usage: {__doc__.splitlines()[0]}")
    config_path = values.pop("config", DEFAULT_CONFIG_PATH)
    workdir = values.pop("workdir", None) or str(Path("runs") / Path(config_path).stem)
    distributed = {"coordinator_address": values.get("coordinator_address"),
                   "num_processes": int(values["num_processes"]) if "num_processes" in values else None,
                   "process_id": int(values["process_id"]) if "process_id" in values else None,
                   "local_device_ids": values.get("local_device_ids")}
    return config_path, overrides, workdir, distributed


@exits_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return
    config_path, overrides, workdir, distributed = parse_args(args)
    config = load_config(config_path, overrides)
    initialize(**distributed)
    train(config, workdir)


if __name__ == "__main__":
    main()
