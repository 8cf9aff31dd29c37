"""benchmarks/llmc_result.py reads llm.c's log the way our bench reports: tokens/s from the mean
step time after the warmup (llm.c's own tok/s column is an EMA), whole windows only, and records
the row under our rows' run_id. benchmarks/llmc.sh starts llm.c without MPI, on one GPU too."""

import importlib.util
import json
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("llmc_result", ROOT / "benchmarks" / "llmc_result.py")
llmc_result = importlib.util.module_from_spec(spec)
spec.loader.exec_module(llmc_result)

LOG = Path(__file__).parent / "fixtures" / "llmc_124m.log"  # the first 12 steps of a real run


def test_step_lines_give_each_steps_time_and_mfu():
    steps = llmc_result.step_lines(LOG.read_text().splitlines())
    assert sorted(steps) == list(range(1, 13))
    assert steps[1] == (563.60, pytest.approx(0.094))
    assert steps[12] == (120.06, pytest.approx(0.444))


def test_tokens_per_second_is_tokens_over_the_mean_step_time_after_warmup(tmp_path):
    jsonl = tmp_path / "rows.jsonl"
    llmc_result.main([str(LOG), "--tokens_per_step", "65536", "--warmup", "2", "--window", "5",
                      "--gpu", "1x NVIDIA H100 80GB HBM3", "--config", "llm.c -e d12",
                      "--run_id", "h100-test", "--record", str(jsonl)])
    row = json.loads(jsonl.read_text())
    ms_3_to_12 = [120.31, 119.25, 118.47, 118.82, 121.24, 127.02, 128.31, 124.03, 121.61, 120.06]
    assert row["tokens_per_sec"] == round(65536 * 1000 / (sum(ms_3_to_12) / 10))
    assert row["windows"] == [[3, 7, round(65536 * 5000 / sum(ms_3_to_12[:5]))],
                              [8, 12, round(65536 * 5000 / sum(ms_3_to_12[5:]))]]
    assert row["tokens_per_sec_last"] == row["windows"][-1][2]
    assert row["peak_memory_gib"] == round(27916 / 1024, 2)
    assert row["steps"] == 12 and row["mode"] == "llm.c" and row["run_id"] == "h100-test"


def test_a_log_with_no_steps_after_the_warmup_is_refused():
    with pytest.raises(SystemExit, match="not more than --warmup 12"):
        llmc_result.result(LOG.read_text().splitlines(), 65536, warmup=12, window=5)


def test_a_missing_log_is_named(tmp_path):
    with pytest.raises(SystemExit, match="no llm.c log at .*absent.log"):
        llmc_result.main([str(tmp_path / "absent.log"), "--tokens_per_step", "65536", "--gpu", "x"])


def test_an_mfu_llmc_cannot_know_is_unknown_not_negative():
    # llm.c has no peak figure for an H200 and prints -100%; the time still counts.
    line = ("step   28/30 | loss 6.625693 (+nanz)| norm 2.4436 (+nanz)| lr 5.60e-04 | 606.33 ms | "
            "-100.0% bf16 MFU | 216394 tok/s")
    assert llmc_result.step_lines([line]) == {28: (606.33, None)}
    lines = [line.replace("step   28", f"step   {s:2d}") for s in range(1, 5)]
    row = llmc_result.result(lines, 131072, warmup=1, window=3)
    assert row["mfu"] is None and row["tokens_per_sec"] == round(131072 * 1000 / 606.33)


SCRIPT = ROOT / "benchmarks" / "llmc.sh"
SETTINGS = """| total batch size      | 65536                                              |
| device                | NVIDIA H100 80GB HBM3                              |
| num_layers L          | 12                                                 |"""


def test_the_gpu_size_and_command_come_from_the_log():
    lines = ["# benchmarks/llmc.sh run /opt/llm.c d12 64 65536 300 'a_*.bin' 'b_*.bin' 2",
             *SETTINGS.splitlines()]
    assert llmc_result.log_facts(lines) == {
        "config": "llm.c -e d12", "tokens_per_step": 65536, "gpu": "2x NVIDIA H100 80GB HBM3",
        "command": "benchmarks/llmc.sh run /opt/llm.c d12 64 65536 300 'a_*.bin' 'b_*.bin' 2"}
    assert llmc_result.log_facts(SETTINGS.splitlines())["gpu"] == "1x NVIDIA H100 80GB HBM3"


def test_a_recorded_row_takes_the_run_id_from_the_environment(tmp_path, monkeypatch):
    log = tmp_path / "llmc.log"
    log.write_text(SETTINGS + "\n" + LOG.read_text())
    monkeypatch.setenv("BENCH_RUN_ID", "h100-20261203-x")
    jsonl = tmp_path / "rows.jsonl"
    llmc_result.main([str(log), "--warmup", "2", "--record", str(jsonl)])
    row = json.loads(jsonl.read_text())
    assert (row["run_id"], row["gpu"], row["config"], row["tokens_per_step"]) == (
        "h100-20261203-x", "1x NVIDIA H100 80GB HBM3", "llm.c -e d12", 65536)


def test_recording_without_a_run_id_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("BENCH_RUN_ID", raising=False)
    with pytest.raises(SystemExit, match="run_id"):
        llmc_result.main([str(LOG), "--tokens_per_step", "65536", "--gpu", "x", "--config", "y",
                          "--record", str(tmp_path / "rows.jsonl")])
    assert not (tmp_path / "rows.jsonl").exists()


def test_a_log_that_does_not_say_its_gpu_asks_for_the_flag():
    with pytest.raises(SystemExit, match="does not say its gpu: pass --gpu"):
        llmc_result.main([str(LOG), "--tokens_per_step", "65536", "--config", "llm.c -e d12"])


def _commands(*args: str) -> list[str]:
    out = subprocess.run(["bash", str(SCRIPT), "command", *args], check=True, capture_output=True,
                         text=True).stdout
    return out.splitlines()


def test_one_gpu_starts_nccl_through_a_directory_not_mpi():
    # Built with NO_USE_MPI=1, llm.c's default -pi mpi exits before training, even on one GPU.
    (line,) = _commands("/opt/llm.c", "d12", "64", "65536", "300", "a_*.bin", "b_*.bin")
    assert line.startswith("cd /opt/llm.c && ./train_gpt2cu ")
    assert line.endswith(" -pi fs -pf RENDEZVOUS_DIR -pn 1 -pr 0 -pg 1")
    assert " -e d12 -b 64 -t 1024 -d 65536 " in line and " -x 300 " in line


def test_each_gpu_is_one_rank_of_the_same_rendezvous():
    lines = _commands("/opt/llm.c", "d48", "16", "65536", "25", "a_*.bin", "b_*.bin", "2")
    assert [line.split(" -pi ")[1] for line in lines] == [
        "fs -pf RENDEZVOUS_DIR -pn 2 -pr 0 -pg 2", "fs -pf RENDEZVOUS_DIR -pn 2 -pr 1 -pg 2"]


def test_run_starts_llmc_and_its_log_makes_a_row(tmp_path, monkeypatch):
    # A stand-in train_gpt2cu that prints llm.c's settings and step lines and keeps its flags.
    llmc = tmp_path / "llm.c"
    llmc.mkdir()
    binary = llmc / "train_gpt2cu"
    binary.write_text("#!/usr/bin/env bash\n"
                      f"echo \"$@\" > {tmp_path}/flags\n"
                      f"cat <<'EOF'\n{SETTINGS}\n{LOG.read_text()}EOF\n")
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "llmc.log"
    with open(log, "w") as out:
        subprocess.run(["bash", str(SCRIPT), "run", str(llmc), "d12", "64", "65536", "12",
                        "a_*.bin", "b_*.bin"], check=True, stdout=out, cwd=tmp_path)
    flags = (tmp_path / "flags").read_text().split()
    assert flags[flags.index("-pi"):flags.index("-pi") + 2] == ["-pi", "fs"]
    assert Path(flags[flags.index("-pf") + 1]).is_dir()
    assert flags[flags.index("-i") + 1] == str(tmp_path / "a_*.bin")  # a glob llm.c expands
    monkeypatch.setenv("BENCH_RUN_ID", "h100-20261203-y")
    jsonl = tmp_path / "rows.jsonl"
    llmc_result.main([str(log), "--warmup", "2", "--record", str(jsonl)])
    row = json.loads(jsonl.read_text())
    assert row["command"].startswith(f"{SCRIPT} run {llmc} d12 64 65536 12 ")
    assert row["gpu"] == "1x NVIDIA H100 80GB HBM3" and row["run_id"] == "h100-20261203-y"
