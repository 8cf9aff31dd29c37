"""The train loop's step lines and metrics.jsonl rows, read back from the device one step late so
that the device always has the next step queued. Logging only reports: what the loop does about a
step's figures (stopping a diverged run) is decided by the loop."""

from __future__ import annotations

import queue
import threading
import time

import jax

from gpt2_jax.training import metrics


class ReadyClock:
    """When each watched step finished on the device, as seen by a thread that does nothing but
    wait for it. The loop itself is often busy when a step finishes (reading the next batch,
    dispatching the next step), and a step's time must not include that."""

    def __init__(self):
        self._watched: queue.SimpleQueue = queue.SimpleQueue()
        self._finished: dict[int, float] = {}
        self._changed = threading.Condition()
        threading.Thread(target=self._wait_for_steps, daemon=True, name="ready-clock").start()

    @staticmethod
    def now() -> float:
        return time.perf_counter()

    def watch(self, step: int, arrays) -> None:
        self._watched.put((step, arrays))

    def finished_at(self, step: int) -> float:
        with self._changed:
            self._changed.wait_for(lambda: step in self._finished)
            return self._finished.pop(step)

    def stop(self) -> None:
        self._watched.put(None)

    def _wait_for_steps(self) -> None:
        while (watched := self._watched.get()) is not None:
            step, arrays = watched
            try:
                jax.block_until_ready(arrays)
            except Exception:  # noqa: BLE001 - the loop's own read of the step reports the error
                pass
            with self._changed:
                self._finished[step] = time.perf_counter()
                self._changed.notify_all()


class StepLog:
    """Turns the logged steps' metrics into console lines and metrics.jsonl rows. Each line's
    step time is the mean over the steps since the previous line (or since the last pause)."""

    def __init__(self, log: metrics.MetricsLog, say, max_steps: int, tokens_per_step: int,
                 flops_per_step: float, start_time: float, clock: ReadyClock | None = None):
        self.log, self.say, self.max_steps = log, say, max_steps
        self.tokens_per_step, self.flops_per_step = tokens_per_step, flops_per_step
        self.device, self.n_devices = jax.local_devices()[0], jax.device_count()
        self.clock = clock or ReadyClock()
        self.skipped = 0  # updates the guard skipped, as of the last line
        self.pending = None  # (step, metrics) dispatched but not yet read
        self.last_step, self.last_time = None, start_time  # the step the next line's time starts at
        self.first_loss = self.last_loss = self.compile_seconds = None

    def dispatched(self, step: int, step_metrics, log_now: bool,
                   read_now: bool = False) -> list[dict]:
        """Step `step` is queued on the device. Reads back the previous logged step (it has
        finished, or is about to) and, with `read_now`, this one too (waiting for it); returns
        the metrics read, each with its "step"."""
        read = self.flush()
        if log_now:
            self.clock.watch(step, step_metrics)
            self.pending = (step, step_metrics)
        if read_now:
            read += self.flush()
        return read

    def flush(self) -> list[dict]:
        """Read back the pending step, if any (this waits for it to finish): its line and row are
        written, and its metrics returned (an empty list: nothing was pending)."""
        if self.pending is None:
            return []
        step, step_metrics = self.pending
        self.pending = None
        values = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
        finished = self.clock.finished_at(step)
        first = self.last_step is None
        if first:  # compilation dominates the first step: report it as such
            self.compile_seconds = finished - self.last_time
            self.say(f"compiled and ran step {step} in {self.compile_seconds:.1f} s")
            step_seconds = float("nan")
        else:
            step_seconds = (finished - self.last_time) / (step - self.last_step)
        self.last_step, self.last_time = step, finished
        self.first_loss = values["loss"] if self.first_loss is None else self.first_loss
        self.last_loss = values["loss"]
        tokens_per_sec = self.tokens_per_step / step_seconds
        mfu = metrics.mfu(self.flops_per_step / step_seconds, self.n_devices, self.device)
        if not first:
            self.say(metrics.step_line(step, self.max_steps, values["loss"], values["grad_norm"],
                                       values["lr"], 1000 * step_seconds, tokens_per_sec, mfu))
        self.log.write({"step": step, "loss": values["loss"], "lr": values["lr"],
                        "grad_norm": values["grad_norm"], "tokens_per_sec": tokens_per_sec,
                        "mfu": mfu, "skipped": int(values["skipped"]),
                        "loss_zscore": values["loss_zscore"], "grad_zscore": values["grad_zscore"]})
        if values["skipped"] > self.skipped:
            self.say(f"step {step}: the guard skipped {int(values['skipped']) - self.skipped} "
                     f"update(s) since the last line (loss or grad-norm z-score over its threshold, "
                     f"or non-finite); {int(values['skipped'])} in all")
            self.skipped = int(values["skipped"])
        return [{"step": step, **values}]

    def pause_clock(self, step: int) -> None:
        """Exclude time spent outside train steps (evaluation, checkpoints) from step times: the
        next line's time starts now, at `step` (finished, since the pause waited for it)."""
        self.last_step, self.last_time = step, self.clock.now()
