"""The README's default command, run as a user runs it (a subprocess, 1 CPU device)."""

import json
import subprocess
import sys

import pytest

from helpers import process_env

pytestmark = pytest.mark.slow  # every test here starts a real process


def run_train(tmp_path, *args):
    env = process_env()
    return subprocess.run([sys.executable, "-m", "gpt2_jax.train", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)


def test_default_command_trains_logs_evaluates_and_samples(default_run):
    workdir, result = default_run
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    eval_rows = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
    assert {"step", "loss", "lr", "grad_norm", "tokens_per_sec", "mfu"} <= set(train_rows[-1])
    assert [r["step"] for r in eval_rows[:2]] == [2, 4]  # (the evaluate tests append more)
    assert train_rows[-1]["loss"] < train_rows[0]["loss"]
    assert json.loads((workdir / "config.json").read_text())["train"]["max_steps"] == 4
    assert "step 4/4 | loss" in result.stdout and "sample:" in result.stdout
    assert "step 4/4 | HellaSwag acc_norm" in result.stdout


def test_unknown_override_fails_naming_the_key(tmp_path):
    result = run_train(tmp_path, "--config.train.max_stepz=4")
    assert result.returncode != 0
    assert "unknown config key train.max_stepz" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_shards_name_the_pattern(tmp_path):
    result = run_train(tmp_path, "--config.data.source=shards",
                       "--config.data.train_files=nowhere/*.bin", "--config.train.max_steps=1")
    assert result.returncode != 0
    assert "no shard files match 'nowhere/*.bin'" in result.stderr


def test_malformed_local_device_ids_are_named_before_anything_starts():
    from gpt2_jax.parallel.distributed import initialize
    from gpt2_jax.errors import UserError

    with pytest.raises(UserError, match="--local_device_ids must be GPU numbers .* not '0,one'"):
        initialize("localhost:1234", 2, 0, "0,one")
