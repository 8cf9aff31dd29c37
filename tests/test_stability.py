"""Outlier guard, non-finite steps, TensorBoard events, health reports and the plot command."""

import json
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from helpers import TINY, run_steps
from gpt2_jax import plot
from gpt2_jax.parallel import sharding
from gpt2_jax.training import stability
from gpt2_jax.training.checkpoint import Checkpointer
from gpt2_jax.config import load_config, model_config
from gpt2_jax.data.shards import write_shard
from gpt2_jax.training.health import make_health_fn
from gpt2_jax.model import GPT
from gpt2_jax.training.optim import make_optimizer
from gpt2_jax.tokenizer import VOCAB_SIZE
from gpt2_jax.model import init_params
from gpt2_jax.training.step import abstract_train_state, state_shardings
from gpt2_jax.errors import TrainingDiverged
from gpt2_jax.training.loop import train

GUARDED = [*TINY, "--config.optim.lr=3e-3", "--config.optim.warmup_steps=2",
           "--config.optim.final_lr_frac=1.0", "--config.stability.window=8",
           "--config.stability.loss_zscore=4", "--config.stability.grad_zscore=0",
           "--config.train.max_steps=30"]


def planted_spike_batches():
    """20 steps over 3 rotating batches (the loss falls), then an unseen batch (the loss jumps
    back to ~10.8, z ~ 5 over the last 8 steps), then an ordinary batch again."""
    rng = np.random.default_rng(0)
    usual = [rng.integers(0, VOCAB_SIZE, (1, 4, 17)).astype(np.int32) for _ in range(3)]
    spike = rng.integers(0, VOCAB_SIZE, (1, 4, 17)).astype(np.int32)
    return [usual[i % 3] for i in range(20)], spike, usual[20 % 3]


@pytest.mark.slow
def test_planted_spike_is_skipped_and_training_continues(tiny_config):
    c = tiny_config(*GUARDED[len(TINY):])
    ordinary, spike, next_batch = planted_spike_batches()
    mesh = sharding.make_mesh(c.mesh, jax.devices()[:1])
    tx = make_optimizer(c.optim, 30)
    _, before, history = run_steps(c, mesh, tx, ordinary)
    _, after_spike, spiked = run_steps(c, mesh, tx, ordinary + [spike])
    _, after_next, _ = run_steps(c, mesh, tx, ordinary + [spike, next_batch])

    assert all(h["skipped"] == 0 for h in history)  # ordinary steps pass the guard
    assert spiked[-1]["skipped"] == 1 and spiked[-1]["loss_zscore"] > 4
    assert spiked[-1]["loss"] > history[-1]["loss"] + 2.0
    jax.tree.map(np.testing.assert_array_equal, after_spike.params, before.params)
    jax.tree.map(np.testing.assert_array_equal, after_spike.opt_state, before.opt_state)
    assert int(after_spike.step) == 21  # the step still counts (the lr schedule moves on)
    changed = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(a != b)),
                                           after_next.params, after_spike.params))
    assert all(changed)  # the next ordinary step updates every parameter again


def test_guard_accepts_a_lasting_level_shift_after_a_few_skips():
    """A gradient norm that doubles and stays there (as when the lr decays) is an outlier for a
    few steps, then the new normal: the guard must not skip every update from then on."""
    guard = stability.init_guard(window=128)
    rng = np.random.default_rng(0)
    norms = np.concatenate([rng.normal(0.5, 0.02, 200), rng.normal(1.2, 0.02, 200)])
    assess = jax.jit(stability.assess, static_argnums=(3, 4))
    skips = []
    for norm in norms:
        skip, guard, _ = assess(guard, jnp.float32(3.0), jnp.float32(norm), 5.0, 5.0)
        skips.append(bool(skip))
    assert not any(skips[:200])
    assert 1 <= sum(skips[200:]) <= 10 and not any(skips[220:])


@pytest.mark.slow
def test_guard_off_applies_the_spike(tiny_config):
    c = tiny_config(*GUARDED[len(TINY):], "--config.stability.loss_zscore=0")
    ordinary, spike, _ = planted_spike_batches()
    _, _, history = run_steps(c, sharding.make_mesh(c.mesh, jax.devices()[:1]),
                              make_optimizer(c.optim, 30), ordinary + [spike])
    assert history[-1]["skipped"] == 0 and history[-1]["loss_zscore"] > 4


def nan_run_config(train_files, *extra):
    return load_config(None, [*TINY, "--config.mesh.data=-1", "--config.train.total_batch_size=256",
                              "--config.data.source=shards", f"--config.data.train_files={train_files}",
                              "--config.train.checkpoint_every=3", "--config.train.log_every=1",
                              "--config.stability.max_bad_steps=2", *extra])


@pytest.mark.slow
def test_planted_nan_stops_the_run_and_keeps_the_last_checkpoint(tmp_path):
    rng = np.random.default_rng(0)
    write_shard(tmp_path / "good_train.bin", rng.integers(0, VOCAB_SIZE, 20_000))
    write_shard(tmp_path / "val.bin", rng.integers(0, VOCAB_SIZE, 2_000))
    # token id 65535 is outside the 50304-row embedding: the loss and gradients become NaN
    write_shard(tmp_path / "poisoned_train.bin", np.full(20_000, 65535))
    val = f"--config.data.val_files={tmp_path / 'val.bin'}"
    train(nan_run_config(tmp_path / "good_train.bin", val, "--config.train.max_steps=3"),
          tmp_path / "run")
    with pytest.raises(TrainingDiverged, match="2 consecutive steps with non-finite loss"):
        train(nan_run_config(tmp_path / "poisoned_train.bin", val, "--config.train.max_steps=10"),
              tmp_path / "run")

    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows if r["step"] in (4, 5) and "loss" in r] == [None, None]
    c = nan_run_config(tmp_path / "good_train.bin", val)
    model, tx = GPT(model_config(c)), make_optimizer(c.optim, 10)
    mesh = sharding.make_mesh(c.mesh)
    with jax.set_mesh(mesh):
        window = c.stability.window
        abstract = abstract_train_state(model, tx, state_shardings(model, tx, mesh, guard_window=window),
                                        guard_window=window)
        ckpt = Checkpointer(tmp_path / "run" / "checkpoints", read_only=True)
        assert ckpt.latest_step() == 3  # nothing written after the bad steps began
        state, _ = ckpt.restore(3, abstract)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))


def read_events(directory):
    """(tag, step, value) of every scalar in TensorBoard event files (TFRecord framing)."""
    scalars = []
    for path in directory.glob("events.out.tfevents.*"):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                scalars.append((value.tag, event.step, value.simple_value))
    return scalars


@pytest.mark.slow
def test_tensorboard_events_hold_the_metrics(tmp_path):
    c = load_config(None, [*TINY, "--config.mesh.data=-1", "--config.train.total_batch_size=256",
                           "--config.train.max_steps=4", "--config.train.log_every=1",
                           "--config.train.health_every=2", "--config.train.tensorboard=True"])
    train(c, tmp_path)
    scalars = read_events(tmp_path / "tensorboard")
    losses = {step: value for tag, step, value in scalars if tag == "loss"}
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    expected = {r["step"]: r["loss"] for r in rows if "loss" in r}
    assert sorted(losses) == [1, 2, 3, 4]
    for step, value in losses.items():
        assert value == pytest.approx(expected[step], rel=1e-6)
    tags = {tag for tag, _, _ in scalars}
    assert {"lr", "grad_norm", "skipped", "residual_rms/00", "residual_rms/01",
            "max_abs_logit", "param_rms/mlp/c_fc/kernel/01"} <= tags


def test_health_report_has_one_value_per_layer():
    c = load_config(None, TINY)
    model = GPT(model_config(c))
    params = init_params(model, jax.random.key(0))
    tokens = np.random.default_rng(0).integers(0, VOCAB_SIZE, (2, 17)).astype(np.int32)
    report = jax.device_get(make_health_fn(model)(params, tokens))
    assert report["residual_rms"].shape == (2,) and np.all(report["residual_rms"] > 0)
    assert report["param_rms"]["mlp/c_fc/kernel"].shape == (2,)
    np.testing.assert_allclose(report["param_rms"]["mlp/c_fc/kernel"], 0.02, rtol=0.1)
    assert np.isfinite(report["max_abs_logit"]) and report["max_abs_logit"] > 0


def test_plot_writes_a_png_with_loss_and_hellaswag(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"train": {"total_batch_size": 1024}}))
    rows = [{"step": s, "loss": 10 - s / 10, "skipped": int(s > 30)} for s in range(1, 50)]
    rows += [{"step": 25, "val_loss": 7.5}, {"step": 49, "val_loss": 5.5, "hellaswag_acc": 0.27}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "curves.png"
    plot.main([str(run), "--out", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
