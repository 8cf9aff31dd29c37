"""Failures a user can fix, each named for what it is. Every command turns one into a single line,
`error: <message>`, and exit status 1: no traceback, and nothing already written is lost."""

from __future__ import annotations

import functools
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


class RequestError(UserError, ValueError):
    """An inference request that cannot be served (a prompt too long for the context, a setting
    out of range); `param` names the offending field, as the message does."""

    def __init__(self, param: str, message: str):
        super().__init__(f"{param}: {message}")
        self.param = param
