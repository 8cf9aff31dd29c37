"""Test setup: 8 fake CPU devices (set before jax is imported) and the fixtures tests share.
Helpers that tests import live in helpers.py."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

from gpt2_jax.config import load_config  # noqa: E402
from helpers import FIXTURES, TINY, run_module  # noqa: E402


@pytest.fixture
def tiny_config():
    """tiny_config(*overrides) -> a validated tiny config with extra `--config.a.b=v` overrides."""
    return lambda *overrides: load_config(None, [*TINY, *overrides])


@pytest.fixture(scope="session")
def default_run(tmp_path_factory):
    """The README's default command (the Shakespeare config, default workdir), shortened, with
    validation every 2 steps, HellaSwag (on the fixture) at the end and a sample: the CLI,
    evaluation, sampling and export tests share it. Returns (workdir, the finished process)."""
    cwd = tmp_path_factory.mktemp("default")
    result = run_module("gpt2_jax.train", "--config.train.max_steps=4", "--config.train.log_every=1",
                        "--config.train.eval_every=2", "--config.train.sample_tokens=8",
                        "--config.train.hellaswag_every=4",
                        f"--config.train.hellaswag_file={FIXTURES / 'hellaswag_mini.jsonl'}",
                        cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd / "runs" / "shakespeare", result  # default workdir: runs/<config file stem>


@pytest.fixture(scope="session")
def trained_run(default_run):
    return default_run[0]
