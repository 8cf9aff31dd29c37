"""The trainer's step lines (each the mean over the steps since the previous line or pause), and
the loop, not the log, stopping a run whose steps keep failing."""

import json

import pytest

from gpt2_jax.errors import TrainingDiverged
from gpt2_jax.training.loop import stop_if_diverged
from gpt2_jax.training.metrics import MetricsLog
from gpt2_jax.training.step_log import StepLog

METRICS = {"loss": 1.0, "grad_norm": 1.0, "lr": 1e-3, "skipped": 0, "bad_streak": 0,
           "loss_zscore": 0.0, "grad_zscore": 0.0}


class FakeClock:
    """Steps finish at the time the test has set when they are dispatched."""

    def __init__(self):
        self.time = 0.0
        self.finished = {}

    def now(self) -> float:
        return self.time

    def watch(self, step, arrays):
        self.finished[step] = self.time

    def finished_at(self, step):
        return self.finished.pop(step)


def test_a_line_after_a_pause_counts_only_the_steps_since_the_pause(tmp_path):
    clock, lines = FakeClock(), []
    steps = StepLog(MetricsLog(tmp_path, tensorboard=False), lines.append, max_steps=6,
                    tokens_per_step=1000, flops_per_step=1.0, start_time=0.0, clock=clock)
    clock.time = 10.0  # step 1: compilation
    steps.dispatched(1, METRICS, log_now=True)
    steps.flush()
    for step, time in ((2, 11.0), (3, 12.0)):  # 1 s each, no line
        clock.time = time
        steps.dispatched(step, METRICS, log_now=False)
    clock.time = 112.0  # a 100 s evaluation after step 3
    steps.pause_clock(3)
    for step, time in ((4, 114.0), (5, 116.0)):  # 2 s each, a line at step 5
        clock.time = time
        steps.dispatched(step, METRICS, log_now=step == 5)
    steps.flush()
    clock.time = 119.0  # 3 s, a line at step 6
    steps.dispatched(6, METRICS, log_now=True)
    steps.flush()

    rows = {r["step"]: r for r in map(json.loads, (tmp_path / "metrics.jsonl").open())}
    assert lines[0] == "compiled and ran step 1 in 10.0 s"
    assert rows[5]["tokens_per_sec"] == 1000 / 2.0  # steps 4-5, not 2-5 in the pause-less time
    assert rows[6]["tokens_per_sec"] == 1000 / 3.0
    assert "2000.0 ms" in lines[1] and "3000.0 ms" in lines[2]


def test_the_log_reports_a_bad_streak_and_the_loop_stops_on_it(tmp_path):
    clock, lines = FakeClock(), []
    steps = StepLog(MetricsLog(tmp_path, tensorboard=False), lines.append, max_steps=6,
                    tokens_per_step=1000, flops_per_step=1.0, start_time=0.0, clock=clock)
    nan = {**METRICS, "loss": float("nan"), "skipped": 3, "bad_streak": 3}
    assert steps.dispatched(1, METRICS, log_now=True, read_now=True)[0]["step"] == 1
    clock.time = 1.0
    steps.dispatched(2, nan, log_now=True)
    read = steps.dispatched(3, METRICS, log_now=False)  # reads step 2 back, and does not raise
    assert [(r["step"], r["bad_streak"]) for r in read] == [(2, 3)]
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])["loss"] is None

    stop_if_diverged(read, max_bad_steps=4)
    with pytest.raises(TrainingDiverged, match=r"^stopping at step 2: 3 consecutive steps with "
                                               r"non-finite loss or gradients"):
        stop_if_diverged(read, max_bad_steps=3)
    assert steps.flush() == []  # nothing pending
