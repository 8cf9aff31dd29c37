"""The sandbox's launcher (gpt2_jax.evaluation.sandbox), run as a script, `python -I -S
sandbox_launcher.py ROOT ERRORS_FD TIMEOUT MEMORY PROCESSES FILE_BYTES OPEN_FILES`, to start the
program ROOT/work/program.py contained: standard library only, one thread, nothing of the caller's.

As root on Linux it enters new network, mount and PID namespaces (no network but a loopback left
down; every mount read-only but ROOT/work; the interpreter bound under ROOT/python, since it may
live in a home directory `nobody` cannot enter), then forks the program, the init of its PID
namespace, which sets the limits, drops to `nobody` and execs the interpreter on it. At the
timeout the launcher kills the program; as the namespace's init, its death takes every process
it started with it, whatever they did to their session or death signal. Why the program could not
be started goes to ERRORS_FD, which the program never holds; the exit status is the program's
(128 + N when killed by signal N).
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import sys

NOBODY = 65534  # uid and gid of `nobody`, the user programs run as when the launcher is root
CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWNET = 0x20000, 0x20000000, 0x40000000
MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG = 1
TIMED_OUT = 124  # the launcher's status when it killed the program at the timeout, as timeout(1)


def isolated() -> bool:
    """Whether programs get namespaces and the `nobody` user (root on Linux), not only limits."""
    return sys.platform == "linux" and os.geteuid() == 0


def environment(work: str) -> dict[str, str]:
    """The program's environment: no proxies, nothing of the caller's."""
    return {"HOME": work, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}


def _libc_call(libc, name: str, *args) -> None:
    if getattr(libc, name)(*args) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{name}{args[:2]}: {os.strerror(errno)}")


def _enter_namespaces(root: str, work: str) -> str:
    """New network, mount and PID namespaces (the PID one holds the next child): every mount
    read-only but `work`, the interpreter bound under `root`/python (outside any private home
    directory). Returns the interpreter's path there."""
    libc = ctypes.CDLL(None, use_errno=True)
    _libc_call(libc, "unshare", CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID)
    _libc_call(libc, "mount", b"none", b"/", None, MS_REC | MS_PRIVATE, None)
    bound = os.path.join(root, "python")
    _libc_call(libc, "mount", sys.base_prefix.encode(), bound.encode(), None, MS_BIND | MS_REC,
               None)
    _libc_call(libc, "mount", work.encode(), work.encode(), None, MS_BIND, None)
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split()[4].encode().decode("unicode_escape") for line in f]
    for mount in mounts:
        if mount != work:  # some special mounts refuse; the root file system and /tmp do not
            libc.mount(None, mount.encode(), None, MS_REMOUNT | MS_BIND | MS_RDONLY, None)
    return os.path.join(bound, os.path.relpath(os.path.realpath(sys.executable),
                                               sys.base_prefix))


def _launch(root: str, errors_fd: int, timeout_s: float, memory: int, processes: int,
            file_bytes: int, open_files: int) -> int:
    os.set_inheritable(errors_fd, False)  # closed at the program's exec
    work = os.path.join(root, "work")
    python = os.path.realpath(sys.executable)
    as_root = isolated()
    if as_root:
        try:
            python = _enter_namespaces(root, work)
        except OSError as e:
            os.write(errors_fd, f"cannot isolate programs ({e})".encode())
            return 125
    pid = os.fork()
    if pid == 0:
        try:
            cpu = int(timeout_s) + 1
            for limit, value in ((resource.RLIMIT_AS, memory), (resource.RLIMIT_CPU, cpu),
                                 (resource.RLIMIT_NPROC, processes),
                                 (resource.RLIMIT_FSIZE, file_bytes),
                                 (resource.RLIMIT_NOFILE, open_files),
                                 (resource.RLIMIT_CORE, 0)):
                resource.setrlimit(limit, (value, value))
            if as_root:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                # after the uid change, which clears it: the program dies with the launcher
                ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            os.chdir(work)
            os.execve(python, [python, "-I", "program.py"], environment(work))
        except BaseException as e:  # noqa: BLE001  anything: the program must not run
            os.write(errors_fd, f"cannot start a program: {e}".encode())
        os._exit(126)
    timed_out = []

    def stop(*_) -> None:
        timed_out.append(True)
        os.kill(pid, signal.SIGKILL)  # not yet reaped: the waitpid below has not returned

    signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    _, status = os.waitpid(pid, 0)
    signal.setitimer(signal.ITIMER_REAL, 0)
    if timed_out:
        return TIMED_OUT
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code  # killed by signal N: 128 + N, as a shell says


if __name__ == "__main__":
    sys.exit(_launch(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), *map(int, sys.argv[4:8])))
