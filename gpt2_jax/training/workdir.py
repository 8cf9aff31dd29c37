"""A run's directory: made usable before any work (or refused in one line), held by one trainer at a
time, and an earlier run set aside rather than overwritten."""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

from gpt2_jax.errors import WorkdirError

LOCK_FILE = "train.lock"


def open_workdir(workdir: str | Path) -> Path:
    """`workdir`, created if missing; a path through or onto a regular file, or a directory
    this user cannot write, is refused naming it."""
    workdir = Path(workdir)
    try:
        for path in (workdir, *workdir.parents):
            if path.exists() and not path.is_dir():
                raise WorkdirError(f"--workdir {workdir}: {path} is a file, not a directory")
        workdir.mkdir(parents=True, exist_ok=True)
    except PermissionError as e:
        raise WorkdirError(f"--workdir {workdir}: cannot create it (permission denied on "
                           f"{e.filename}); choose a directory you can write") from None
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise WorkdirError(f"--workdir {workdir}: not writable by this user; choose a directory "
                           "you can write")
    return workdir


class WorkdirLock:
    """One trainer per workdir. <workdir>/train.lock names its holder (host, PID, start time) and
    is held with flock for the whole run; the kernel releases a flock when its process dies,
    however it dies, so a lock file left by a dead trainer is taken over (and said so)."""

    def __init__(self, workdir: Path, say):
        self.path, self.say, self.fd = workdir / LOCK_FILE, say, None

    def __enter__(self) -> "WorkdirLock":
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except PermissionError:
            raise WorkdirError(f"cannot write {self.path} (permission denied); choose a "
                               "directory you can write") from None
        previous = os.read(fd, 4096).decode(errors="replace").strip()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise WorkdirError(f"{self.path.parent} is in use by another trainer "
                               f"({previous or 'holder unknown'}); wait for it to finish, stop "
                               "it, or use another --workdir") from None
        if previous:
            self.say(f"took over {self.path} from a trainer that is gone ({previous})")
        holder = (f"host {socket.gethostname()}, pid {os.getpid()}, "
                  f"started {time.strftime('%Y-%m-%d %H:%M:%S')}")
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)
        os.close(self.fd)  # releases the flock


def set_aside_previous_run(workdir: Path, say) -> None:
    """train.resume=False on a used workdir: keep its checkpoints and metrics under new names."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in ("checkpoints", "metrics.jsonl"):
        path = workdir / name
        if path.exists():
            path.rename(workdir / f"{name}.before-{stamp}")
            say(f"train.resume=False: moved the previous {name} to {name}.before-{stamp}")
