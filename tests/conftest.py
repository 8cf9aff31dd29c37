"""Test setup: 8 fake CPU devices (helpers.xla_flags) and a compilation cache shared by the
session's processes (set before jax is imported), and the fixtures tests share. Helpers that
tests import live in helpers.py.

`pytest -m gpu` leaves the platform to jax, so the GPU tier runs on a GPU where there is one."""

import fcntl
import json
import os
import shutil
import subprocess
import tempfile

import pytest

from helpers import FIXTURES, TINY, run_module, xla_flags


def pytest_configure(config):
    if config.option.markexpr.strip() != "gpu":
        os.environ.setdefault("XLA_FLAGS", xla_flags(8))
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    # Tests and the commands they start compile the same tiny programs again and again (every
    # build_training or jax.jit of a new closure is a new compile); XLA's persistent cache, keyed by
    # the program, turns the repeats into reads. A fresh directory per session, so a run measures
    # what a clean checkout costs; point GPT2_JAX_TEST_CACHE at a directory to keep it.
    cache = os.environ.get("GPT2_JAX_TEST_CACHE") or tempfile.mkdtemp(prefix="gpt2_jax_xla_")
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", cache)
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


@pytest.fixture
def tiny_config():
    """tiny_config(*overrides) -> a validated tiny config with extra `--config.a.b=v` overrides."""
    from gpt2_jax.config import load_config

    return lambda *overrides: load_config(None, [*TINY, *overrides])


@pytest.fixture(scope="session")
def default_run(tmp_path_factory):
    """The README's default command (the Shakespeare config, default workdir), shortened, with
    validation every 2 steps, HellaSwag (on the fixture) at the end and a sample: the CLI,
    evaluation, sampling and export tests share it. Returns (workdir, the finished process).

    It runs once per session: the first pytest-xdist worker to need it trains under a lock in the
    workers' common directory, and each worker then works on its own copy (tests add to it)."""
    base = tmp_path_factory.getbasetemp()
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "default_run"
    with open(f"{shared}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (shared / "result.json").exists():
            shutil.rmtree(shared, ignore_errors=True)  # a worker's failed attempt
            (shared / "cwd").mkdir(parents=True)
            result = run_module(
                "gpt2_jax.train", "--config.train.max_steps=4", "--config.train.log_every=1",
                "--config.train.eval_every=2", "--config.train.sample_tokens=8",
                "--config.train.hellaswag_every=4",
                f"--config.train.hellaswag_file={FIXTURES / 'hellaswag_mini.jsonl'}",
                cwd=shared / "cwd")
            assert result.returncode == 0, result.stderr[-3000:]
            (shared / "result.json").write_text(json.dumps(
                {"args": result.args, "stdout": result.stdout, "stderr": result.stderr}))
    cwd = tmp_path_factory.mktemp("default")
    shutil.copytree(shared / "cwd", cwd, dirs_exist_ok=True)
    finished = json.loads((shared / "result.json").read_text())
    result = subprocess.CompletedProcess(returncode=0, **finished)
    return cwd / "runs" / "shakespeare", result  # default workdir: runs/<config file stem>


@pytest.fixture(scope="session")
def trained_run(default_run):
    return default_run[0]
