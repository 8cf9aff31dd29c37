"""The benchmark commands stay alive on CPU, and write result rows only where asked."""

import json
import socket
import subprocess
import sys

import pytest

from gpt2_jax.bench import __main__ as bench
from gpt2_jax.data import bench as data_bench
from helpers import CONFIGS, process_env

# A one-layer GPT-2 on the 8 fake CPU devices, 128 tokens a step.
TINY_BENCH = ["--config.model.n_layer=1", "--config.model.n_embd=32", "--config.model.n_head=2",
              "--config.train.seq_len=16", "--config.train.micro_batch_size=1",
              "--config.train.total_batch_size=128", "--config.mesh.data=-1"]


@pytest.mark.slow
def test_train_bench_measures_each_variant_and_records_only_when_asked(tmp_path, capsys,
                                                                        monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the default benchmarks/results.jsonl would go
    bench.main([*TINY_BENCH, "--steps", "1", "--warmup", "1", "--variant=",
                "--variant=--config.model.logits_dtype=bfloat16"])
    assert capsys.readouterr().out.count("tok/s") == 2
    assert not (tmp_path / "benchmarks").exists()
    bench.main([*TINY_BENCH, "--steps", "1", "--warmup", "1", "--record"])
    (row,) = [json.loads(line) for line in
              (tmp_path / "benchmarks" / "results.jsonl").read_text().splitlines()]
    assert row["mode"] == "step" and row["data"] == "synthetic"


def test_data_bench_reports_tokens_per_second(capsys):
    data_bench.main(["--shard_tokens", "200000", "--seq_len", "64", "--batch", "4", "--accum", "2",
                     "--threads", "1", "--seconds", "0.5"])
    rate = float(capsys.readouterr().out.split(" tokens/s")[0].replace(",", ""))
    assert rate > 0


@pytest.mark.slow
def test_loop_bench_times_the_trainer_in_windows_and_records_the_fields(tmp_path, capsys):
    jsonl = tmp_path / "results.jsonl"
    bench.main(["--loop", *TINY_BENCH, "--config.train.log_every=1", "--steps", "7", "--warmup", "1", "--window", "3", "--record", str(jsonl),
                "--run_id", "test-sitting"])
    (row,) = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert {"date", "gpu", "jax", "config", "overrides", "data", "steps", "tokens_per_step",
            "tokens_per_sec", "tokens_per_sec_last", "mfu", "peak_memory_gib", "compile_s",
            "run_id", "command"} <= row.keys()
    assert (row["data"], row["steps"], row["tokens_per_step"], row["run_id"]) == (
        "shakespeare", 7, 128, "test-sitting")
    assert [w[:2] for w in row["windows"]] == [[2, 4], [5, 7]]
    assert row["tokens_per_sec_last"] == row["windows"][-1][2] > 0
    assert "steps 5-7:" in capsys.readouterr().out


@pytest.mark.slow
def test_loop_bench_over_two_processes_reports_once(tmp_path):
    """`bench --coordinator_address ...` times a multi-process run (as on many hosts): only
    process 0 reports, and its row says how many processes and devices ran."""
    jsonl = tmp_path / "results.jsonl"
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = process_env()
    procs = [subprocess.Popen(
        [sys.executable, "-m", "gpt2_jax.bench", "--loop", *TINY_BENCH, "--config.mesh.data=2",
         "--config.data.num_threads=1", "--config.train.log_every=1", "--steps", "4",
         "--warmup", "1", "--window", "3", "--record", str(jsonl),
         f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outputs = [proc.communicate(timeout=600)[0] for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), outputs[0][-2000:] + outputs[1][-2000:]
    (row,) = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert row["processes"] == 2 and row["gpu"].startswith("2x ")
    assert "tok/s" in outputs[0] and "tok/s" not in outputs[1]


@pytest.mark.slow
def test_decode_bench_prints_rows_and_records_them_only_when_asked(tmp_path, capsys,
                                                                   monkeypatch):
    monkeypatch.chdir(tmp_path)
    tiny = ["--decode", "--config", str(CONFIGS / "gpt2_124m.py"), "--config.model.n_layer=1",
            "--config.model.scan_unroll=1", "--config.model.n_embd=32",
            "--config.model.n_head=2", "--batch", "2", "--prompt_tokens", "4",
            "--new_tokens", "6", "--chunk_steps", "4", "--hf_modes", ""]
    bench.main(tiny)
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()
               if line.startswith("{")]
    assert not list(tmp_path.rglob("*.jsonl"))  # nothing written unasked
    bench.main([*tiny, "--record", "rows.jsonl", "--run_id", "test"])
    (row,) = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert row["run_id"] == "test"
    for r in (printed[0], row):
        assert r["mode"] == "decode" and r["batch"] == 2
        assert {"config", "gpu", "prompt_tokens", "new_tokens", "tokens_per_sec", "ms_per_step",
                "ttft_ms", "command", "bound_tokens_per_sec"} <= set(r)
        assert r["tokens_per_sec"] > 0 and r["ttft_ms"] > 0
