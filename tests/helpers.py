"""What tests share: paths, a tiny config, and ways to train or run a command."""

import os
import subprocess
import sys
from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FIXTURES = Path(__file__).resolve().parent / "fixtures"

# A GPT-2 small enough to train in seconds on CPU; it keeps the real (padded) vocabulary. No
# TensorBoard files: tensorboardX imports torch where it is installed, a second per command a test
# starts (the tests of those files ask for them).
TINY = [
    "--config.model.n_layer=2", "--config.model.n_head=2", "--config.model.n_embd=32",
    "--config.model.block_size=32", "--config.model.dtype=float32",
    "--config.train.seq_len=16", "--config.train.micro_batch_size=2",
    "--config.train.total_batch_size=32", "--config.train.max_steps=10",
    "--config.train.eval_every=0", "--config.train.sample_tokens=0",
    "--config.mesh.data=1", "--config.data.source=synthetic", "--config.train.tensorboard=False",
]


def run_steps(c, mesh, tx, batches):
    """Train from a fresh state over `batches` (each (accum, batch, T + 1) numpy) on `mesh`;
    returns (final state on the devices, the same on the host, per-step metrics)."""
    import jax

    from gpt2_jax.parallel import sharding
    from gpt2_jax.training.step import build_training

    with jax.set_mesh(mesh):
        training = build_training(c, mesh, tx)
        state = training.init_state(seed=0)
        history = []
        for batch in batches:
            global_batch = sharding.to_global_array(batch, sharding.batch_sharding(mesh))
            state, metrics = training.train_step(state, global_batch)
            history.append(jax.device_get(metrics))
        return state, jax.device_get(state), history


def xla_flags(devices: int, cpu: bool = True) -> str:
    """XLA_FLAGS for tests: `devices` fake CPU devices and, on CPU, LLVM at -O1 rather than -O2.

    The suite is bound by compiling many small programs, most of it LLVM's, and -O1 compiles them
    about twice as fast (-O0 compiles faster still, but its slower code made the suite slower).
    Results can differ from -O2's in the last bits of a float, as any change of compiler or
    machine can, so no test compares against figures made elsewhere bit for bit. A GPU tier run
    keeps XLA's own level for the GPU's code.
    """
    flags = f"--xla_force_host_platform_device_count={devices}"
    return f"{flags} --xla_backend_optimization_level=1" if cpu else flags


def process_env(devices=1):
    """The environment of a command a test starts: `devices` CPU devices."""
    cpu = os.environ.get("JAX_PLATFORMS") == "cpu"
    return {**os.environ, "XLA_FLAGS": xla_flags(devices, cpu)}


def run_module(module, *args, cwd):
    """`python -m module args` in a subprocess on one CPU device."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=process_env(),
                          capture_output=True, text=True, timeout=600)
