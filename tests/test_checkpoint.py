"""Checkpoints: exact resume (data order included), preemption, kills, other meshes, errors."""

import json
import random
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from helpers import TINY, process_env
from gpt2_jax.parallel import sharding
from gpt2_jax.training.checkpoint import Checkpointer, load_trained
from gpt2_jax.config import load_config, model_config
from gpt2_jax.ops.kernels import KERNEL_KEYS
from gpt2_jax.errors import CheckpointError
from gpt2_jax.model import GPT
from gpt2_jax.training.optim import make_optimizer
from gpt2_jax.training.step import abstract_train_state, create_train_state, state_shardings
from gpt2_jax.training.loop import train

# The tiny model on the shipped Shakespeare shards, checkpointing every 3 steps, 1 CPU device.
RUN = [*TINY, "--config.data.source=shakespeare", "--config.data.num_threads=1",
       "--config.train.max_steps=30", "--config.train.checkpoint_every=3",
       "--config.train.log_every=1"]


# The same, in this process: all 8 fake devices data-parallel.
IN_PROCESS = [*RUN, "--config.mesh.data=-1", "--config.train.total_batch_size=256"]


def start(workdir, *extra):
    env = process_env()
    return subprocess.Popen([sys.executable, "-m", "gpt2_jax.train", "--workdir", str(workdir),
                             *RUN, *extra], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def run_to_end(workdir, *extra):
    proc = start(workdir, *extra)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    return out


def run_until_step(workdir, step):
    """Start training and return the process once it has logged `step` (still running)."""
    proc = start(workdir)
    for line in proc.stdout:
        if line.startswith(f"step {step:2d}/30 | loss"):
            return proc
    raise AssertionError(f"training ended before step {step}: {proc.wait()}")


def losses(workdir):
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    by_step = {r["step"]: r["loss"] for r in rows if "loss" in r}
    assert sorted(by_step) == list(range(1, 31)), "every step logged exactly once"
    return by_step


def final_params(workdir):
    c = load_config(None, RUN)
    model, tx = GPT(model_config(c)), make_optimizer(c.optim, 30)
    mesh = sharding.make_mesh(c.mesh, jax.devices()[:1])
    with jax.set_mesh(mesh):
        window = c.stability.window
        abstract = abstract_train_state(model, tx, state_shardings(model, tx, mesh, guard_window=window),
                                        guard_window=window)
        ckpt = Checkpointer(workdir / "checkpoints", read_only=True)
        assert ckpt.latest_step() == 30
        state, _ = ckpt.restore(30, abstract)
    return jax.device_get(state.params)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("straight")
    run_to_end(workdir)
    return losses(workdir), final_params(workdir)


def assert_same_run(workdir, straight_run):
    expected_losses, expected_params = straight_run
    assert losses(workdir) == expected_losses  # bitwise: same batches in the same order
    jax.tree.map(np.testing.assert_array_equal, final_params(workdir), expected_params)


@pytest.mark.slow
def test_sigterm_saves_exits_zero_and_resume_is_exact(tmp_path, straight_run):
    proc = run_until_step(tmp_path, 7)
    proc.send_signal(signal.SIGTERM)
    out = proc.stdout.read()
    assert proc.wait(timeout=120) == 0, out
    assert "received SIGTERM" in out and "run the same command again to resume" in out
    stopped_at = int(out.split("stopped after step ")[1].split(";")[0])
    assert stopped_at < 30
    assert (tmp_path / "checkpoints" / str(stopped_at)).is_dir()
    resumed = run_to_end(tmp_path)
    assert f"resumed from checkpoint step {stopped_at}" in resumed
    assert_same_run(tmp_path, straight_run)


@pytest.mark.slow
def test_sigkill_at_random_moments_resumes_from_last_complete_checkpoint(tmp_path, straight_run):
    rng = random.Random(0)
    for kill_step in sorted(rng.sample(range(4, 28), 3)):
        proc = run_until_step(tmp_path, kill_step)
        proc.kill()  # SIGKILL: no chance to save, maybe mid-write of a checkpoint
        proc.wait()
    out = run_to_end(tmp_path)
    assert "resumed from checkpoint step" in out
    assert_same_run(tmp_path, straight_run)


@pytest.mark.slow
def test_incomplete_checkpoint_is_skipped_and_said(tmp_path):
    run_to_end(tmp_path, "--config.train.max_steps=6")
    half_written = tmp_path / "checkpoints" / "9.orbax-checkpoint-tmp-1234567"
    half_written.mkdir()
    out = run_to_end(tmp_path, "--config.train.max_steps=9")
    assert f"skipping incomplete checkpoint {half_written}" in out
    assert "resumed from checkpoint step 6" in out


@pytest.mark.slow
def test_resume_with_another_model_shape_is_refused_naming_keys(tmp_path):
    c = load_config(None, [*IN_PROCESS, "--config.train.max_steps=3", "--config.data.source=synthetic"])
    train(c, tmp_path)
    wider = load_config(None, [*IN_PROCESS, "--config.train.max_steps=6", "--config.data.source=synthetic",
                               "--config.model.n_embd=64", "--config.model.n_layer=3"])
    with pytest.raises(CheckpointError, match=r"model\.n_layer: checkpoint 2 vs config 3.*"
                                          r"model\.n_embd: checkpoint 32 vs config 64"):
        train(wider, tmp_path)


@pytest.mark.slow
def test_resume_false_sets_the_old_run_aside(tmp_path):
    c = load_config(None, [*IN_PROCESS, "--config.train.max_steps=3", "--config.data.source=synthetic"])
    train(c, tmp_path)
    again = load_config(None, [*IN_PROCESS, "--config.train.max_steps=3",
                               "--config.data.source=synthetic", "--config.train.resume=False"])
    summary = train(again, tmp_path)
    assert summary.start_step == 0
    assert len(list(tmp_path.glob("checkpoints.before-*"))) == 1
    assert len(list(tmp_path.glob("metrics.jsonl.before-*"))) == 1


@pytest.mark.slow
def test_a_finished_run_says_there_is_nothing_to_do(tmp_path, capsys):
    c = load_config(None, [*IN_PROCESS, "--config.train.max_steps=3", "--config.data.source=synthetic"])
    train(c, tmp_path)
    rows_before = (tmp_path / "metrics.jsonl").read_text()
    result = train(c, tmp_path)
    assert (result.start_step, result.last_step) == (3, 3)
    assert "nothing to do" in capsys.readouterr().out
    assert (tmp_path / "metrics.jsonl").read_text() == rows_before


@pytest.mark.slow
def test_init_from_takes_the_weights_of_another_run(tmp_path):
    base = load_config(None, [*IN_PROCESS, "--config.train.max_steps=40", "--config.optim.lr=1e-2",
                              "--config.optim.warmup_steps=2"])
    trained = train(base, tmp_path / "pretrained")
    tuned = load_config(None, [*IN_PROCESS, "--config.train.max_steps=1",
                               f"--config.train.init_from={tmp_path / 'pretrained'}"])
    summary = train(tuned, tmp_path / "finetune")
    assert summary.first_loss < trained.first_loss - 1.0  # starts from trained weights


def test_checkpoint_from_8_devices_restores_on_1_device(tmp_path):
    c = load_config(None, [*TINY, "--config.mesh.data=1", "--config.mesh.fsdp=8",
                           "--config.train.micro_batch_size=1", "--config.train.total_batch_size=128"])
    model, tx = GPT(model_config(c)), make_optimizer(c.optim, 10)
    mesh8 = sharding.make_mesh(c.mesh)
    with jax.set_mesh(mesh8):
        window = c.stability.window
        state = create_train_state(model, tx, state_shardings(model, tx, mesh8, window), seed=3,
                                   guard_window=window)
    kernel = state.params["h"]["mlp"]["c_fc"]["kernel"]
    assert len(kernel.sharding.device_set) == 8 and not kernel.is_fully_replicated
    ckpt = Checkpointer(tmp_path / "checkpoints")
    ckpt.save(5, state, {"next_index": 5}, c)
    ckpt.wait()

    one = load_config(None, [*TINY, "--config.mesh.data=1"])
    mesh1 = sharding.make_mesh(one.mesh, jax.devices()[:1])
    with jax.set_mesh(mesh1):
        abstract = abstract_train_state(model, tx, state_shardings(model, tx, mesh1, window),
                                        guard_window=window)
        checkpoints = Checkpointer(tmp_path / "checkpoints", read_only=True)
        restored, data_state = checkpoints.restore(5, abstract)
        config = checkpoints.saved_config(5)
    assert restored.params["h"]["mlp"]["c_fc"]["kernel"].sharding.device_set == {jax.devices()[0]}
    assert data_state == {"next_index": 5} and config["mesh"]["fsdp"] == 8
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), jax.device_get(state))


@pytest.mark.parametrize("saved_kernel", ["pallas", None])
def test_a_run_restores_on_many_devices_whatever_kernels_it_trained_with(tmp_path, saved_kernel):
    """The model's Pallas kernel keys are speed choices: a run trained on one GPU with all of
    them =pallas (or checkpointed before the keys existed, None) restores for evaluation on this
    8-device CPU mesh with each chosen again for it (XLA's fusions off GPU)."""
    c = load_config(None, [*TINY, "--config.mesh.data=1"])
    model, tx = GPT(model_config(c)), make_optimizer(c.optim, 10)
    mesh1 = sharding.make_mesh(c.mesh, jax.devices()[:1])
    with jax.set_mesh(mesh1):
        window = c.stability.window
        state = create_train_state(model, tx, state_shardings(model, tx, mesh1, window), seed=3,
                                   guard_window=window)
    with c.unlocked():
        for key in KERNEL_KEYS:
            if saved_kernel:
                c.model[key] = saved_kernel
            else:
                del c.model[key]
    ckpt = Checkpointer(tmp_path / "checkpoints")
    ckpt.save(5, state, {"next_index": 5}, c)
    ckpt.wait()

    trained = load_trained(tmp_path)
    assert trained.mesh.size == 8
    assert {getattr(trained.model.config, key) for key in KERNEL_KEYS} == {"xla"}
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(trained.params),
                 jax.device_get(state.params))
