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
    except OSError as e:  # a read-only file system, a path under /proc, a name too long
        raise WorkdirError(f"--workdir {workdir}: cannot create it ({e.strerror} on "
                           f"{e.filename or workdir}); choose a directory you can write") from None
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise WorkdirError(f"--workdir {workdir}: not writable by this user; choose a directory "
                           "you can write")
    return workdir


class WorkdirLock:
    """One trainer per workdir. <workdir>/train.lock names its holder (host, PID, start time) and
    is held with flock for the whole run; the kernel releases a flock when its process dies,
    however it dies, so a lock file left by a dead trainer is taken over (and said so).

    The holder removes the file on exit, so a trainer that opened it just before may lock a file
    no longer in the directory while a third creates and locks a new one: a lock counts only if
    the file locked is still the one at the path, else it is tried again."""

    def __init__(self, workdir: Path, say):
        self.path, self.say, self.fd = workdir / LOCK_FILE, say, None

    def __enter__(self) -> "WorkdirLock":
        while True:
            fd, previous = self._open_and_lock()
            if _same_file(fd, self.path):
                break
            os.close(fd)  # locked a removed file: its holder has just left
        if previous:
            self.say(f"took over {self.path} from a trainer that is gone ({previous})")
        holder = (f"host {socket.gethostname()}, pid {os.getpid()}, "
                  f"started {time.strftime('%Y-%m-%d %H:%M:%S')}")
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode(), 0)
        self.fd = fd
        return self

    def _open_and_lock(self) -> tuple[int, str]:
        """(fd of the lock file, flock held; what its previous holder wrote)."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise WorkdirError(f"cannot write {self.path} ({e.strerror}); choose a directory "
                               "you can write") from None
        previous = os.read(fd, 4096).decode(errors="replace").strip()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise WorkdirError(f"{self.path.parent} is in use by another trainer "
                               f"({previous or 'holder unknown'}); wait for it to finish, stop "
                               "it, or use another --workdir") from None
        return fd, previous

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)
        os.close(self.fd)  # releases the flock


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


# What a run logs, beside its checkpoints: a run that starts over moves them aside together.
HISTORY = ("metrics.jsonl", "tensorboard")


def set_aside_previous_run(workdir: Path, say) -> None:
    """train.resume=False on a used workdir: keep its checkpoints and logs under new names."""
    _set_aside(workdir, ("checkpoints", *HISTORY), "train.resume=False", say)


def set_aside_history(workdir: Path, say) -> None:
    """A run starting from step 0 where logs of an earlier start remain (it was stopped before
    its first checkpoint): keep them under new names rather than mix them with the new rows."""
    _set_aside(workdir, HISTORY, "no checkpoint to resume", say)


def _set_aside(workdir: Path, names: tuple[str, ...], why: str, say) -> None:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in names:
        path = workdir / name
        if path.exists():
            target, n = workdir / f"{name}.before-{stamp}", 1
            while target.exists():  # two starts in one second: a rename must not replace
                n += 1
                target = workdir / f"{name}.before-{stamp}-{n}"
            path.rename(target)
            say(f"{why}: moved the previous {name} to {target.name}")
