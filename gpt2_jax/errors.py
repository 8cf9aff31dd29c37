"""Failures a user can fix, each named for what it is. Every command turns one into a single line,
`error: <message>`, and exit status 1: no traceback, and nothing already written is lost.

What the commands guarantee (tests/test_reliability.py holds each):
- A bad config key or command-line value (`sample --temperature -1`, `--num_samples 0`) names it.
- A workdir (or `--out`) that is a file, not writable, on a read-only mount or an impossible path
  is refused before any work; a workdir is held by one trainer at a time (a lock file removed
  by its leaving holder is not taken for a lock); `hf export` refuses a non-empty directory.
- A damaged checkpoint is set aside (never deleted) and the run resumes from the one before; when
  none restores, the trainer stops rather than start over, and stops again on every rerun until
  train.resume=False says to. Broken checkpoints still on disk are said at start, with their
  size and the command that prunes them. A resume that succeeds logs no warnings.
- Logs are never erased or mixed: a start from step 0, or with train.resume=False, moves the
  earlier metrics.jsonl and tensorboard/ aside; a resume with changed settings lists them and
  keeps the earlier config.
- A full disk stops training before or during a save, naming the disk and the space needed,
  with the partial checkpoint removed and the last complete one kept.
- `evaluate` on a run it cannot write still reports, and says where the row did not go.
- Input text that is not text, empty input, and shards that are missing, malformed or truncated
  under a running trainer are named by file (and line); a missing extra names what to install.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from typing import Callable


class UserError(Exception):
    """A failure caused by the input (a config, a file, a directory), with what to fix in its
    message."""


class ConfigError(UserError, ValueError):
    """An invalid configuration; the message names the offending key(s)."""


class DataError(UserError, ValueError):
    """Input data (text files to tokenize, token shards) that cannot be used; the message names
    the file, and the line where there is one."""


class ShardError(DataError):
    """A token shard that cannot be used; the message names the file and what is wrong."""


class CheckpointError(UserError):
    """No usable checkpoint where one is needed, or one of another model."""


class WeightsError(UserError):
    """Model weights that cannot be imported or fetched (transformers files, the hub)."""


class EvalDataError(UserError):
    """An evaluation file (HellaSwag) that is missing, unreachable or malformed."""


class WorkdirError(UserError):
    """A run directory that cannot be used: not a directory, not writable, or in use."""


class DiskFullError(WorkdirError):
    """Too little free space for the next checkpoint; the message names the disk, the space
    needed and the checkpoint kept."""


class TrainingDiverged(UserError, RuntimeError):
    """Too many consecutive steps with non-finite loss or gradients."""


def exits_on_user_error(main: Callable) -> Callable:
    """A command's `main`, with a UserError turned into `error: ...` on stderr and exit 1."""

    @functools.wraps(main)
    def command(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as e:
            sys.exit(f"error: {e}")

    return command


def require_extra(module: str, extra: str, needed_by: str) -> None:
    """A UserError naming the extra to install when `module` (an optional dependency) is absent,
    raised before any work, e.g. `--lm_eval needs lm_eval (the lmeval extra): pip install -e
    ".[lmeval]"`."""
    if importlib.util.find_spec(module) is None:
        raise UserError(f'{needed_by} needs {module} (the {extra} extra): '
                        f'pip install -e ".[{extra}]"')


class RequestError(UserError, ValueError):
    """An inference request that cannot be served (a prompt too long for the context, a setting
    out of range); `param` names the offending field, as the message does."""

    def __init__(self, param: str, message: str):
        super().__init__(f"{param}: {message}")
        self.param = param
