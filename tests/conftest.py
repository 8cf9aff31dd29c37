"""Shared test setup: 8 fake CPU devices (set before jax is imported) and a tiny config."""

import os
import subprocess
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from gpt2_jax.config import load_config  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FIXTURES = Path(__file__).resolve().parent / "fixtures"

# A GPT-2 small enough to train in seconds on CPU; it keeps the real (padded) vocabulary.
TINY = [
    "--config.model.n_layer=2", "--config.model.n_head=2", "--config.model.n_embd=32",
    "--config.model.block_size=32", "--config.model.dtype=float32",
    "--config.train.seq_len=16", "--config.train.micro_batch_size=2",
    "--config.train.total_batch_size=32", "--config.train.max_steps=10",
    "--config.train.eval_every=0", "--config.train.sample_tokens=0",
    "--config.mesh.data=1", "--config.data.source=synthetic",
]


@pytest.fixture
def tiny_config():
    """tiny_config(*overrides) -> a validated tiny config with extra `--config.a.b=v` overrides."""
    return lambda *overrides: load_config(None, [*TINY, *overrides])


def run_steps(c, mesh, tx, batches):
    """Train from a fresh state over `batches` (each (accum, batch, T + 1) numpy) on `mesh`;
    returns (final state on the devices, the same on the host, per-step metrics)."""
    import jax

    from gpt2_jax import sharding
    from gpt2_jax.train_step import build_training

    with jax.set_mesh(mesh):
        training = build_training(c, mesh, tx)
        state = training.init_state(seed=0)
        history = []
        for batch in batches:
            global_batch = sharding.to_global_array(batch, sharding.batch_sharding(mesh))
            state, metrics = training.train_step(state, global_batch)
            history.append(jax.device_get(metrics))
        return state, jax.device_get(state), history


def run_module(module, *args, cwd):
    """`python -m module args` in a subprocess on one CPU device."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


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
