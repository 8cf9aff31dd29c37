"""benchmarks/llmc_result.py reads llm.c's log the way our bench reports: tokens/s from the mean
step time after the warmup (llm.c's own tok/s column is an EMA), whole windows only."""

import importlib.util
import json
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
                      "--jsonl", str(jsonl)])
    row = json.loads(jsonl.read_text())
    ms_3_to_12 = [120.31, 119.25, 118.47, 118.82, 121.24, 127.02, 128.31, 124.03, 121.61, 120.06]
    assert row["tokens_per_sec"] == round(65536 * 1000 / (sum(ms_3_to_12) / 10))
    assert row["windows"] == [[3, 7, round(65536 * 5000 / sum(ms_3_to_12[:5]))],
                              [8, 12, round(65536 * 5000 / sum(ms_3_to_12[5:]))]]
    assert row["tokens_per_sec_last"] == row["windows"][-1][2]
    assert row["peak_memory_gib"] == round(27916 / 1024, 2)
    assert row["steps"] == 12 and row["mode"] == "llm.c"


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
