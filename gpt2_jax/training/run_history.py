"""What a workdir keeps of its past: the config of every stretch of steps a resume changed, and the
broken checkpoints the trainer set aside (never deleted by it, and as large as a checkpoint).

    python -m gpt2_jax.training.run_history --workdir runs/gpt2_124m [--prune_broken]

lists them; --prune_broken deletes the broken checkpoints.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import ml_collections

from gpt2_jax.util import atomic
from gpt2_jax.errors import WorkdirError, exits_on_user_error

CONFIG_FILE = "config.json"


def _flat(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def changed_settings(saved: dict, config: ml_collections.ConfigDict) -> list[str]:
    """`key: old -> new` for every setting of `config` that differs from the `saved` one."""
    old, new = _flat(saved), _flat(config.to_dict())
    return [f"{key}: {old.get(key, '(absent)')!r} -> {new.get(key, '(absent)')!r}"
            for key in sorted(old.keys() | new.keys()) if old.get(key) != new.get(key)]


def record_config(workdir: Path, config: ml_collections.ConfigDict, start_step: int,
                  saved: dict | None, say) -> None:
    """Write the run's config.json. A resume (from `start_step`, whose checkpoint holds the
    `saved` config) with changed settings says which, and keeps the config that trained the
    steps before as config.before-<start_step>.json: a jump in the loss then has its cause on
    record."""
    path = workdir / CONFIG_FILE
    changes = changed_settings(saved, config) if saved is not None else []
    if changes:
        say(f"resuming step {start_step} with changed settings: " + "; ".join(changes))
        kept = workdir / f"config.before-{start_step}.json"
        atomic.write_text(kept, json.dumps(saved, indent=2) + "\n")
        say(f"kept the settings that trained steps 1-{start_step} in {kept}")
    atomic.write_text(path, config.to_json_best_effort(indent=2) + "\n")


def broken_checkpoints(workdir: Path) -> list[tuple[Path, int]]:
    """(path, bytes) of each checkpoint the trainer set aside as broken."""
    directory = workdir / "checkpoints"
    if not directory.is_dir():
        return []
    return [(path, sum(f.stat().st_size for f in path.rglob("*") if f.is_file()))
            for path in sorted(directory.glob("broken-*")) if path.is_dir()]


def report_broken(workdir: Path, say) -> None:
    """One line at the start of a run whose broken checkpoints are still on disk."""
    broken = broken_checkpoints(workdir)
    if broken:
        total = sum(size for _, size in broken)
        say(f"{len(broken)} broken checkpoint(s) set aside earlier take {total / 2**30:.2f} GiB "
            f"({', '.join(str(path) for path, _ in broken)}); `python -m gpt2_jax.training.run_history "
            f"--workdir {workdir} --prune_broken` deletes them")


@exits_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gpt2_jax.training.run_history", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="the training run's directory")
    parser.add_argument("--prune_broken", action="store_true",
                        help="delete the broken checkpoints set aside under checkpoints/")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    if not workdir.is_dir():
        raise WorkdirError(f"--workdir {workdir}: no such directory")
    for path in sorted(workdir.glob("*.before-*")):
        print(f"set aside: {path}")
    for path, size in broken_checkpoints(workdir):
        if args.prune_broken:
            shutil.rmtree(path)
            print(f"deleted broken checkpoint {path} ({size / 2**30:.2f} GiB)")
        else:
            print(f"broken checkpoint: {path} ({size / 2**30:.2f} GiB)")


if __name__ == "__main__":
    main()
