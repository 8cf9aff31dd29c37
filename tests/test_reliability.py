"""A run's files damaged the ways disks, preemptions and hurried people damage them: the trainer
and the commands either carry on from what is intact, saying so in one line, or stop with one
line naming the file and what is wrong. Real orbax checkpoints, damaged by the tests."""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from gpt2_jax import hf, plot
from gpt2_jax.evaluation import hellaswag
from gpt2_jax.training import metrics
from gpt2_jax.training.checkpoint import load_trained
from gpt2_jax.config import load_config
from gpt2_jax.data import prepare
from gpt2_jax.errors import (CheckpointError, ConfigError, EvalDataError, WeightsError,
                             WorkdirError)
from gpt2_jax.evaluate import main as evaluate_main
from gpt2_jax.training.loop import train
from gpt2_jax.training.workdir import LOCK_FILE, WorkdirLock, open_workdir
from helpers import TINY

RUN = [*TINY, "--config.train.checkpoint_every=3", "--config.train.log_every=1",
       "--config.mesh.data=-1", "--config.train.total_batch_size=256"]


@pytest.fixture(scope="session")
def six_step_run(tmp_path_factory):
    """A tiny run with checkpoints at steps 3 and 6 (copy it before damaging it)."""
    workdir = tmp_path_factory.mktemp("six") / "run"
    train(load_config(None, [*RUN, "--config.train.max_steps=6"]), workdir)
    return workdir


def damaged_copy(run, tmp_path, damage):
    workdir = tmp_path / "run"
    shutil.copytree(run, workdir)
    damage(workdir / "checkpoints" / "6")
    return workdir


def largest_array_file(checkpoint):
    return max((p for p in (checkpoint / "state").rglob("*") if p.is_file() and p.parent.name == "d"),
               key=lambda p: p.stat().st_size)


DAMAGES = {
    "array file truncated": lambda ckpt: os.truncate(largest_array_file(ckpt), 100),
    "array file overwritten with random bytes": lambda ckpt: largest_array_file(ckpt).write_bytes(
        np.random.default_rng(0).bytes(largest_array_file(ckpt).stat().st_size)),
    "garbage state/_METADATA": lambda ckpt: (ckpt / "state" / "_METADATA").write_bytes(
        np.random.default_rng(1).bytes(3000)),
    "deleted state/_METADATA": lambda ckpt: (ckpt / "state" / "_METADATA").unlink(),
    "garbage data-iterator state": lambda ckpt: (ckpt / "data" / "metadata").write_bytes(
        np.random.default_rng(2).bytes(300)),
    "deleted config/metadata": lambda ckpt: (ckpt / "config" / "metadata").unlink(),
}


@pytest.mark.slow
@pytest.mark.parametrize("damage", DAMAGES)
def test_a_broken_newest_checkpoint_is_set_aside_and_the_run_resumes_from_the_one_before(
        six_step_run, tmp_path, capsys, damage):
    workdir = damaged_copy(six_step_run, tmp_path, DAMAGES[damage])
    result = train(load_config(None, [*RUN, "--config.train.max_steps=7"]), workdir)

    assert (result.start_step, result.last_step) == (3, 7)
    (moved,) = (workdir / "checkpoints").glob("broken-6-*")
    assert (moved / "state").is_dir()  # set aside, not deleted
    out = capsys.readouterr().out
    (line,) = [line for line in out.splitlines() if "is broken" in line]
    assert line.startswith("checkpoint step 6 is broken (") and str(moved) in line
    assert "Traceback" not in out
    event = [r for _, r in metrics.read_rows(workdir / "metrics.jsonl")[0] if "event" in r]
    assert event and event[0]["event"] == "broken_checkpoint" and event[0]["step"] == 6
    assert str(workdir / "checkpoints" / "6") in event[0]["reason"]


def test_evaluate_and_sample_fall_back_past_a_broken_checkpoint(six_step_run, tmp_path, capsys):
    workdir = damaged_copy(six_step_run, tmp_path, DAMAGES["garbage state/_METADATA"])
    assert load_trained(workdir).step == 3
    assert "checkpoint step 6 is broken" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match=r"checkpoint step 6 does not restore: .*6/state"):
        load_trained(workdir, step=6)
    assert not list((workdir / "checkpoints").glob("broken-*"))  # reading never moves anything


def test_a_command_turns_a_user_error_into_one_line_and_exit_1(tmp_path):
    with pytest.raises(SystemExit) as exit_:
        evaluate_main(["--workdir", str(tmp_path)])
    assert exit_.value.code == f"error: {tmp_path}: no checkpoints/ directory (not a training run?)"


def test_a_second_lock_on_a_held_workdir_is_refused_naming_the_holder(tmp_path):
    with WorkdirLock(tmp_path, print):
        with pytest.raises(WorkdirError, match=rf"in use by another trainer \(host "
                                               rf"{socket.gethostname()}, pid {os.getpid()},"):
            WorkdirLock(tmp_path, print).__enter__()
    assert not (tmp_path / LOCK_FILE).exists()  # released and removed


def test_a_lock_left_by_a_dead_trainer_is_taken_over_with_a_log_line(tmp_path):
    (tmp_path / LOCK_FILE).write_text("host gone, pid 999999, started yesterday")
    said = []
    with WorkdirLock(tmp_path, said.append):
        assert f"pid {os.getpid()}" in (tmp_path / LOCK_FILE).read_text()
    assert said == [f"took over {tmp_path / LOCK_FILE} from a trainer that is gone "
                    "(host gone, pid 999999, started yesterday)"]


@pytest.mark.slow
def test_a_second_trainer_on_a_workdir_held_by_a_live_one_is_refused(tmp_path):
    def start():
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
        return subprocess.Popen(
            [sys.executable, "-m", "gpt2_jax.train", "--workdir", str(tmp_path / "run"), *TINY,
             "--config.train.max_steps=100000", "--config.train.log_every=1000"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    first, second = start(), start()  # the same moment: exactly one may train
    try:
        deadline = time.monotonic() + 120
        while first.poll() is None and second.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        loser, winner = (first, second) if first.poll() is not None else (second, first)
        assert loser.wait() == 1 and winner.poll() is None
        assert "in use by another trainer" in loser.stderr.read()
        third = start()  # and later, while the winner still runs
        assert third.wait(timeout=120) == 1
        assert f"pid {winner.pid}," in third.stderr.read()
    finally:
        for proc in (first, second):
            proc.kill()
            proc.wait()


def test_torn_metrics_lines_are_dropped_on_resume_and_skipped_by_plot(six_step_run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(six_step_run, workdir)
    rows_path = workdir / "metrics.jsonl"
    with open(rows_path, "a") as f:
        f.write('{"step": 7, "loss": 3.1, "lr"')  # killed mid-write
    plot.plot_runs([str(workdir)], str(tmp_path / "curves.png"))  # skips the torn line
    assert (tmp_path / "curves.png").stat().st_size > 0
    n_lines = len(rows_path.read_text().splitlines())
    assert metrics.truncate_rows(workdir, last_step=6) == [n_lines]
    rows, torn = metrics.read_rows(rows_path)
    assert not torn and max(row["step"] for _, row in rows) == 6


@pytest.mark.slow
def test_resume_says_it_dropped_a_torn_metrics_line(six_step_run, tmp_path, capsys):
    workdir = tmp_path / "run"
    shutil.copytree(six_step_run, workdir)
    with open(workdir / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "lo')
    train(load_config(None, [*RUN, "--config.train.max_steps=7"]), workdir)
    assert "not a complete row (torn by a kill mid-write)" in capsys.readouterr().out
    assert not metrics.read_rows(workdir / "metrics.jsonl")[1]


@pytest.mark.parametrize("config_json, safetensors, message", [
    (b"{garbage", None, r"config\.json: not a JSON file"),
    (b'{"n_layer": 2, "n_head": 2, "n_positions": 64}', None, r"config\.json: no n_embd"),
    (b'{"n_layer": 2, "n_head": 2, "n_positions": 64, "n_embd": 32}', b"junk",
     r"model\.safetensors: not a readable safetensors file"),
])
def test_hf_import_of_damaged_files_names_the_file(tmp_path, config_json, safetensors, message):
    source = tmp_path / "hf"
    source.mkdir()
    (source / "config.json").write_bytes(config_json)
    (source / "model.safetensors").write_bytes(safetensors or b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(WeightsError, match=message):
        hf.import_weights(str(source), tmp_path / "run")


@pytest.mark.parametrize("bad_line, message", [
    ("{not json", r"hs\.jsonl:2: not a JSON object"),
    ('{"endings": ["a", "b", "c", "d"], "label": 0}', r"hs\.jsonl:2: no 'ctx' field"),
])
def test_a_malformed_hellaswag_line_is_named_by_file_and_line(tmp_path, bad_line, message):
    path = tmp_path / "hs.jsonl"
    path.write_text('{"ctx": "A", "endings": ["a", "b", "c", "d"], "label": 0}\n' + bad_line + "\n")
    with pytest.raises(EvalDataError, match=message):
        hellaswag.load(path)


def test_a_workdir_through_or_onto_a_regular_file_is_refused(tmp_path):
    (tmp_path / "afile").write_text("")
    for workdir in (tmp_path / "afile", tmp_path / "afile" / "run"):
        with pytest.raises(WorkdirError, match=rf"{tmp_path / 'afile'} is a file, not a directory"):
            open_workdir(workdir)


def test_a_workdir_this_user_cannot_write_is_refused_before_any_work():
    """As a non-root user for real: as root, a forked child drops to `nobody` first (in a
    directory it may enter but not write)."""
    parent = Path(tempfile.mkdtemp(prefix="readonly-"))
    parent.chmod(0o555 if os.geteuid() != 0 else 0o755)
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # the child: no JAX, only the workdir check
        try:
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            try:
                open_workdir(parent / "run")
                message = "accepted"
            except WorkdirError as e:
                message = str(e)
            os.write(write_end, message.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    os.waitpid(child, 0)
    message = os.read(read_end, 4096).decode()
    assert message == (f"--workdir {parent / 'run'}: cannot create it (permission denied on "
                       f"{parent / 'run'}); choose a directory you can write")
    assert not (parent / "run").exists()
    parent.chmod(0o755)
    parent.rmdir()


def test_a_config_file_with_a_syntax_error_is_named_with_its_line(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("from gpt2_jax.config import base_config\n\ndef get_config():\n"
                    "    c = base_config(\n    return c\n")
    with pytest.raises(ConfigError, match=rf"^{path}:4: syntax error in the config file"):
        load_config(str(path))


def test_tensor_parallelism_that_does_not_divide_the_heads_names_both_keys():
    with pytest.raises(ConfigError, match=r"mesh\.tensor \(3\) must divide model\.n_head \(4\)"):
        load_config(None, [*TINY, "--config.mesh.tensor=3", "--config.model.n_head=4",
                           "--config.model.n_embd=64"])


def test_prepare_writes_plain_progress_lines_when_not_on_a_terminal(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("Some text to tokenize. " * 200)
    prepare.main(["files", "--input", str(tmp_path / "*.txt"), "--out", str(tmp_path / "out"),
                  "--workers", "1"])
    err = capsys.readouterr().err
    assert "\r" not in err
    assert "out: 4,600/4,600 bytes" in err
