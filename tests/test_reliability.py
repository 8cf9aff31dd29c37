"""A run's files damaged the ways disks, preemptions and hurried people damage them: the trainer
and the commands either carry on from what is intact, saying so in one line, or stop with one
line naming the file and what is wrong. Real orbax checkpoints, damaged by the tests."""

import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import re
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
from gpt2_jax.training import metrics, run_history
from gpt2_jax.training.checkpoint import load_trained
from gpt2_jax.config import load_config
from gpt2_jax.data import prepare
from gpt2_jax.data.shards import open_shard
from gpt2_jax.errors import (CheckpointError, ConfigError, DiskFullError, EvalDataError,
                             ShardError, WeightsError, WorkdirError)
from gpt2_jax.evaluate import main as evaluate_main
from gpt2_jax.training.loop import train
from gpt2_jax.training.workdir import LOCK_FILE, WorkdirLock, open_workdir
from helpers import TINY, process_env

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
        env = process_env()
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


# Issue 33: the second pass (disk full, lost metrics, read-only places, the data tools).

@contextlib.contextmanager
def mounted_tmpfs(path, options):
    """A tmpfs at `path` (root only; the test is skipped where mounting is not allowed)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs",
                                            str(path)], capture_output=True).returncode:
        pytest.skip("needs root and mount(8) for a tmpfs")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


@contextlib.contextmanager
def read_only(path):
    """`path` (a directory) read-only for this process: a read-only bind mount as root (whom
    permissions do not stop), else no write permission on it and its files."""
    if os.geteuid() == 0:
        if subprocess.run(["mount", "--bind", "-o", "ro", str(path), str(path)],
                          capture_output=True).returncode:
            pytest.skip("needs mount(8) for a read-only bind mount")
        subprocess.run(["mount", "-o", "remount,ro,bind", str(path)], check=True)
        try:
            yield path
        finally:
            subprocess.run(["umount", "-l", str(path)], check=True)
        return
    modes = {p: p.stat().st_mode for p in [path, *path.rglob("*")]}
    for p in modes:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        yield path
    finally:
        for p, mode in modes.items():
            p.chmod(mode)


def six_step_copy(six_step_run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(six_step_run, workdir)
    return workdir


def assert_resumable_from(workdir, step):
    """The checkpoints directory holds `step` complete and nothing half written."""
    checkpoints = workdir / "checkpoints"
    assert not [p.name for p in checkpoints.iterdir() if "tmp" in p.name]
    assert load_trained(workdir).step == step


@pytest.mark.slow
def test_disk_full_on_a_small_tmpfs_stops_before_the_save_keeping_the_last_checkpoint(
        tmp_path, capsys):
    """A tiny run's checkpoint is about 19 MB: on a 30 MB disk the second one does not fit."""
    with mounted_tmpfs(tmp_path / "disk", "size=30m") as disk:
        with pytest.raises(DiskFullError) as error:
            train(load_config(None, [*RUN, "--config.train.max_steps=9"]), disk / "run")
        message = str(error.value)
        assert message.startswith(f"disk full: {disk} (holding {disk / 'run' / 'checkpoints'}) "
                                  "has ") and "checkpoint step 6 needs about 0.02 GiB" in message
        assert "newest complete checkpoint, step 3, is kept" in message
        assert "Traceback" not in capsys.readouterr().err
        assert_resumable_from(disk / "run", 3)


@pytest.mark.slow
def test_a_save_that_runs_out_of_space_while_written_stops_the_run_and_removes_its_files(
        tmp_path, capsys, caplog, monkeypatch):
    """The free-space check fooled (another writer fills the disk mid-save): orbax's write
    really fails with ENOSPC, in the background."""
    from gpt2_jax.training import checkpoint

    plenty = shutil.disk_usage(tmp_path)._replace(free=2**40)
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda path: plenty)
    with mounted_tmpfs(tmp_path / "disk", "size=30m") as disk:
        with pytest.raises(DiskFullError, match=rf"^disk full: {disk} .*checkpoint step 6 ran "
                                                r"out of space while written; removed its partial "
                                                r"files\. Training stopped .*step 3, is kept"):
            train(load_config(None, [*RUN, "--config.train.max_steps=9"]), disk / "run")
        assert "Traceback" not in capsys.readouterr().err
        assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert_resumable_from(disk / "run", 3)


@pytest.mark.slow
def test_disk_full_without_a_tmpfs_by_a_fault_injected_free_space(tmp_path, monkeypatch):
    from gpt2_jax.training import checkpoint

    real = checkpoint.shutil.disk_usage
    saves = []

    def nearly_full(path):  # room for the first checkpoint only
        saves.append(path)
        return real(path)._replace(free=2**40 if len(saves) == 1 else 2**20)

    monkeypatch.setattr(checkpoint.shutil, "disk_usage", nearly_full)
    with pytest.raises(DiskFullError, match=r"has 0\.00 GiB free, and checkpoint step 6 needs "
                                            r"about 0\.02 GiB.*step 3, is kept"):
        train(load_config(None, [*RUN, "--config.train.max_steps=9"]), tmp_path / "run")
    assert_resumable_from(tmp_path / "run", 3)


def test_when_no_checkpoint_restores_the_run_stops_and_keeps_its_metrics(six_step_run, tmp_path):
    workdir = six_step_copy(six_step_run, tmp_path)
    for step in (3, 6):
        DAMAGES["garbage state/_METADATA"](workdir / "checkpoints" / str(step))
    rows = (workdir / "metrics.jsonl").read_text()
    with pytest.raises(CheckpointError, match=r"no checkpoint in .* restores .* pass "
                                              r"--config\.train\.resume=False"):
        train(load_config(None, [*RUN, "--config.train.max_steps=7"]), workdir)
    assert (workdir / "metrics.jsonl").read_text() == rows  # nothing erased
    assert len(list((workdir / "checkpoints").glob("broken-*"))) == 2
    with pytest.raises(CheckpointError, match=r"all 2 were set aside as broken-\*; .* pass "
                                              r"--config\.train\.resume=False"):
        train(load_config(None, [*RUN, "--config.train.max_steps=7"]), workdir)  # the same again
    assert (workdir / "metrics.jsonl").read_text() == rows


@pytest.mark.slow
def test_a_restart_from_step_0_moves_the_earlier_starts_metrics_aside(tmp_path, capsys):
    """As a kill before the first checkpoint leaves a workdir: rows and events, no checkpoint."""
    workdir = tmp_path / "run"
    (workdir / "tensorboard").mkdir(parents=True)
    killed = "".join(json.dumps({"step": s, "loss": 10.0}) + "\n" for s in (1, 2))
    (workdir / "metrics.jsonl").write_text(killed)
    train(load_config(None, [*RUN, "--config.train.max_steps=2"]), workdir)
    steps = [row["step"] for _, row in metrics.read_rows(workdir / "metrics.jsonl")[0]]
    assert steps == [1, 2]  # once each
    (old,) = workdir.glob("metrics.jsonl.before-*")
    assert old.read_text() == killed
    assert list(workdir.glob("tensorboard.before-*"))
    assert f"no checkpoint to resume: moved the previous metrics.jsonl to {old.name}" in \
        capsys.readouterr().out


@pytest.mark.parametrize("where", ["/proc/no-such-dir/run", "/proc/self/status/run"])
def test_an_impossible_workdir_is_one_error_line(where):
    from gpt2_jax.train import main as train_main

    with pytest.raises(SystemExit) as exit_:
        train_main(["--workdir", where, *TINY])
    assert str(exit_.value.code).startswith(f"error: --workdir {where}: ")
    assert "\n" not in str(exit_.value.code)


def test_a_new_workdir_on_a_read_only_mount_is_one_error_line(tmp_path):
    with mounted_tmpfs(tmp_path / "ro", "ro,size=1m") as mount:
        with pytest.raises(WorkdirError, match=rf"^--workdir {mount / 'run'}: cannot create it "
                                               rf"\(Read-only file system on {mount / 'run'}\)"):
            open_workdir(mount / "run")


def test_evaluate_of_a_read_only_run_prints_the_row_it_cannot_append(six_step_run, tmp_path,
                                                                     capsys):
    workdir = six_step_copy(six_step_run, tmp_path)
    rows = (workdir / "metrics.jsonl").read_text()
    with read_only(workdir):
        evaluate_main(["--workdir", str(workdir), "--no_hellaswag", "--samples", "0"])
        out, err = capsys.readouterr()
        assert f"could not append the eval row to {workdir / 'metrics.jsonl'} (" in err
        assert json.loads(out.strip().splitlines()[-1]) == {"step": 6}
        evaluate_main(["--workdir", str(workdir), "--no_hellaswag", "--samples", "0",
                       "--report", str(tmp_path / "report.json")])
    assert json.loads((tmp_path / "report.json").read_text()) == {"step": 6}
    assert (workdir / "metrics.jsonl").read_text() == rows


def test_plot_into_a_read_only_directory_is_one_error_line(six_step_run, tmp_path):
    (tmp_path / "out").mkdir()
    with read_only(tmp_path / "out"):
        with pytest.raises(SystemExit) as exit_:
            plot.main([str(six_step_run), "--out", str(tmp_path / "out" / "curves.png")])
    assert exit_.value.code.startswith(f"error: --out {tmp_path / 'out' / 'curves.png'}: "
                                       "cannot write it (")


def test_hf_export_to_a_file_is_one_error_line(six_step_run, tmp_path):
    (tmp_path / "afile").write_text("")
    with pytest.raises(SystemExit) as exit_:
        hf.main(["export", "--workdir", str(six_step_run), "--out", str(tmp_path / "afile")])
    assert exit_.value.code == f"error: --out {tmp_path / 'afile'}: a file, not a directory"


def test_hf_export_refuses_a_non_empty_directory_and_writes_readable_files(six_step_run,
                                                                          tmp_path):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "config.json").write_text("mine")
    with pytest.raises(WorkdirError, match=r"not empty \(config\.json\).*--force"):
        hf.export_weights(six_step_run, out)
    assert (out / "config.json").read_text() == "mine"
    hf.export_weights(six_step_run, out, force=True)
    umask = os.umask(0)
    os.umask(umask)
    written = sorted(p.name for p in out.iterdir())
    assert written == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    for name in written:
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~umask


def test_hf_export_without_the_hf_extra_says_what_to_install(six_step_run, tmp_path,
                                                            monkeypatch):
    monkeypatch.setitem(sys.modules, "safetensors", None)  # import safetensors: ImportError
    with pytest.raises(SystemExit) as exit_:
        hf.main(["export", "--workdir", str(six_step_run), "--out", str(tmp_path / "hf")])
    assert exit_.value.code == ("error: reading or writing transformers weights needs "
                                "safetensors: pip install -e '.[hf]'")


def test_hf_export_without_tokenizers_says_what_to_install_and_writes_nothing(six_step_run,
                                                                              tmp_path,
                                                                              monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tokenizers" else real(name, *a))
    with pytest.raises(SystemExit) as exit_:
        hf.main(["export", "--workdir", str(six_step_run), "--out", str(tmp_path / "hf")])
    assert exit_.value.code == ('error: hf export (its tokenizer.json) needs tokenizers (the hf extra): '
                                'pip install -e ".[hf]"')
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("name, content, message", [
    ("a.txt", b"text\xff\xfe\x00binary", r"a\.txt: not UTF-8 text \(byte 4\); a binary file\?"),
    ("a.jsonl", b'{"text": "fine"}\n\xff\xfe\x00\n', r"a\.jsonl:2: not UTF-8 text"),
    ("a.jsonl", b'{"text": "fine"}\n["a", "list"]\n',
     r"a\.jsonl:2: not a JSON object with a 'text' field \(a list\)"),
    ("a.jsonl", b'{"text": 42}\n', r"a\.jsonl:1: 'text' is a int, not a string"),
])
def test_prepare_names_the_file_and_line_of_input_that_is_not_text(tmp_path, name, content,
                                                                   message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(SystemExit) as exit_:
        prepare.main(["files", "--input", str(tmp_path / name), "--out", str(tmp_path / "out"),
                      "--workers", "1"])
    assert re.match(rf"error: {tmp_path}/{message}", exit_.value.code), exit_.value.code
    assert "\n" not in exit_.value.code


def test_prepare_of_a_corpus_smaller_than_one_shard_makes_a_train_shard_and_warns(tmp_path,
                                                                                  capsys):
    (tmp_path / "a.txt").write_text("Some text to tokenize. " * 200)  # 1,202 tokens
    prepare.main(["files", "--input", str(tmp_path / "a.txt"), "--out", str(tmp_path / "out"),
                  "--workers", "1"])
    assert "warning: the input holds 1,202 tokens, less than one --shard_size (100,000,000): " \
           "wrote the first 120 as the val shard and the other 1,082 as one train shard" in \
        capsys.readouterr().err
    out = tmp_path / "out"
    val, train_shard = out / "out_val_000000.bin", out / "out_train_000001.bin"
    assert sorted((tmp_path / "out").glob("*.bin")) == [train_shard, val]
    tokens = np.concatenate([open_shard(val), open_shard(train_shard)])
    assert len(tokens) == 1202 and tokens[0] == 50256


@pytest.mark.parametrize("files", [{"a.jsonl": ""}, {"a.jsonl": "\n\n"}, {"a.txt": ""}])
def test_prepare_of_empty_input_is_an_error(tmp_path, files):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(SystemExit) as exit_:
        prepare.main(["files", "--input", str(tmp_path / "a.*"), "--out", str(tmp_path / "out"),
                      "--workers", "1"])
    assert exit_.value.code.startswith("error: no text to tokenize in [")
    assert not list((tmp_path / "out").glob("*.bin"))


SHRINKING_SHARD = """
import os, sys
import numpy as np
from gpt2_jax.data import pipeline
from gpt2_jax.data.shards import HEADER_BYTES, write_shard
from gpt2_jax.errors import exits_on_user_error

@exits_on_user_error
def main(path):
    write_shard(path, np.arange(20_000) % 50_000)
    batches = pipeline.train_batches([path], seq_len=16, accum_steps=1, local_batch=2, seed=0,
                                     num_threads=2, prefetch=2, process_index=0, process_count=1)
    next(batches)
    os.truncate(path, HEADER_BYTES + 64)  # another process replaces or truncates the shard
    for _ in range(2000):
        next(batches)

main(sys.argv[1])
"""


def test_a_shard_truncated_while_read_is_an_error_naming_it_not_a_sigbus(tmp_path):
    path = tmp_path / "shard.bin"
    result = subprocess.run([sys.executable, "-c", SHRINKING_SHARD, str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    assert re.fullmatch(rf"error: {path}: 1088 bytes now, but window \d+ needs bytes \d+-\d+: "
                        r"the shard shrank while this run read it \(replaced or truncated\?\)\n",
                        result.stderr), result.stderr[-2000:]


@pytest.mark.slow
def test_resume_with_changed_settings_lists_them_and_keeps_the_earlier_config(six_step_run,
                                                                              tmp_path, capsys,
                                                                              caplog):
    workdir = six_step_copy(six_step_run, tmp_path)
    with caplog.at_level(logging.WARNING):
        train(load_config(None, [*RUN, "--config.train.max_steps=7", "--config.optim.lr=0.002",
                                 "--config.train.seed=5", "--config.train.total_batch_size=512"]),
              workdir)
    assert not caplog.records, [r.getMessage() for r in caplog.records]  # a resume, no noise
    out = capsys.readouterr().out
    (line,) = [line for line in out.splitlines() if "with changed settings" in line]
    assert line == ("resuming step 6 with changed settings: optim.lr: 0.001 -> 0.002; "
                    "train.max_steps: 6 -> 7; train.seed: 0 -> 5; "
                    "train.total_batch_size: 256 -> 512")
    assert "done: steps 7-7" in out  # the larger batch trained
    kept = json.loads((workdir / "config.before-6.json").read_text())
    assert (kept["optim"]["lr"], kept["train"]["max_steps"]) == (0.001, 6)
    assert json.loads((workdir / "config.json").read_text())["optim"]["lr"] == 0.002


@pytest.mark.parametrize("flag, message", [
    (["--temperature", "-1"], "error: --temperature must be >= 0 (0 = greedy), not -1.0"),
    (["--num_samples", "0"], "error: --num_samples must be at least 1, not 0"),
])
def test_sample_refuses_a_negative_temperature_and_no_samples(six_step_run, flag, message):
    from gpt2_jax.sample import main as sample_main

    with pytest.raises(SystemExit) as exit_:
        sample_main(["--workdir", str(six_step_run), *flag])
    assert exit_.value.code == message


def test_a_deleted_metadata_file_is_named_and_the_fallback_logs_nothing(six_step_run, tmp_path,
                                                                      capsys, caplog):
    workdir = damaged_copy(six_step_run, tmp_path, DAMAGES["deleted state/_METADATA"])
    with caplog.at_level(logging.INFO):
        assert load_trained(workdir).step == 3
    assert (f"checkpoint step 6 is broken ({workdir / 'checkpoints' / '6' / 'state' / '_METADATA'}"
            ": missing); trying the next newest") in capsys.readouterr().err
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_lock_file_removed_by_its_leaving_holder_is_not_a_lock(tmp_path, monkeypatch):
    """Trainer B opens train.lock while A holds it; A leaves (removing the file) and C starts
    (creating a new one) before B's flock: B must see C, not lock the removed file."""
    import gpt2_jax.training.workdir as workdir_module

    a = WorkdirLock(tmp_path, print).__enter__()
    real_flock, others = fcntl.flock, []

    def flock_after_a_leaves_and_c_starts(fd, operation):
        if not others:
            a.__exit__(None, None, None)
            others.append(WorkdirLock(tmp_path, print))
            monkeypatch.setattr(workdir_module.fcntl, "flock", real_flock)
            others[0].__enter__()
        return real_flock(fd, operation)

    monkeypatch.setattr(workdir_module.fcntl, "flock", flock_after_a_leaves_and_c_starts)
    try:
        with pytest.raises(WorkdirError, match=r"in use by another trainer \(host "):
            WorkdirLock(tmp_path, print).__enter__()
    finally:
        others[0].__exit__(None, None, None)


@pytest.mark.slow
def test_resume_false_moves_tensorboard_aside_with_the_checkpoints_and_metrics(tmp_path):
    with_tensorboard = [*RUN, "--config.train.max_steps=1", "--config.train.tensorboard=True"]
    train(load_config(None, with_tensorboard), tmp_path)
    assert (tmp_path / "tensorboard").is_dir()
    train(load_config(None, [*with_tensorboard, "--config.train.resume=False"]), tmp_path)
    for name in ("checkpoints", "metrics.jsonl", "tensorboard"):
        assert len(list(tmp_path.glob(f"{name}.before-*"))) == 1, name
    events = list((tmp_path / "tensorboard").iterdir())
    assert len(events) == 1  # only the new run's curves


def test_broken_checkpoints_are_reported_at_start_and_pruned_by_a_command(six_step_run, tmp_path,
                                                                          capsys):
    workdir = six_step_copy(six_step_run, tmp_path)
    broken = workdir / "checkpoints" / "broken-9-20260101-000000"
    (broken / "state").mkdir(parents=True)
    (broken / "state" / "d").write_bytes(b"\0" * 2**20)
    train(load_config(None, [*RUN, "--config.train.max_steps=6"]), workdir)  # nothing to do
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"workdir: {workdir}"
    assert (f"1 broken checkpoint(s) set aside earlier take 0.00 GiB ({broken}); `python -m "
            f"gpt2_jax.training.run_history --workdir {workdir} --prune_broken` deletes them") in lines
    run_history.main(["--workdir", str(workdir), "--prune_broken"])
    assert f"deleted broken checkpoint {broken}" in capsys.readouterr().out
    assert not broken.exists() and (workdir / "checkpoints" / "6").is_dir()


def test_missing_shards_point_to_the_prepare_command():
    from gpt2_jax.data.shards import find_shards

    with pytest.raises(ShardError, match=r"no shard files match 'nowhere/\*\.bin'; make them with "
                                         r"`python -m gpt2_jax\.data\.prepare`"):
        find_shards("nowhere/*.bin")
