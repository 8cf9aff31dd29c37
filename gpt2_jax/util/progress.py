"""Progress that suits where it is written: tqdm's bar on a terminal; piped to a log file, a plain
line every few seconds (a bar's carriage-return redraws would pile up by the thousand)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable

from tqdm import tqdm


class LineProgress:
    """The part of tqdm's interface we use, printing `desc: n/total unit (rate) key=value` lines
    at most every `interval` seconds, and once at the end."""

    def __init__(self, iterable: Iterable | None, total: float | None, desc: str, unit: str,
                 stream, interval: float):
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.stream, self.interval = stream, interval
        self.n, self.postfix = 0, ""
        self.started = self.printed = time.monotonic()

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def update(self, n: float = 1) -> None:
        self.n += n
        if time.monotonic() - self.printed >= self.interval:
            self._print()

    def set_postfix(self, refresh: bool = False, **values) -> None:
        self.postfix = " ".join(f"{key}={value}" for key, value in values.items())

    def close(self) -> None:
        self._print()

    def _print(self) -> None:
        self.printed = time.monotonic()
        rate = self.n / max(self.printed - self.started, 1e-9)
        total = f"/{self.total:,.0f}" if self.total else ""
        print(f"{self.desc}: {self.n:,.0f}{total} {self.unit.strip()} ({rate:,.0f}/s) "
              f"{self.postfix}".rstrip(), file=self.stream, flush=True)


def progress(iterable: Iterable | None = None, *, total: float | None = None, desc: str = "",
             unit: str = "it", disable: bool = False, interval: float = 10.0, stream=None):
    """A progress bar on a terminal, progress lines elsewhere (both on stderr by default)."""
    stream = stream or sys.stderr
    if disable:
        return tqdm(iterable, total=total, disable=True)
    if stream.isatty():
        return tqdm(iterable, total=total, desc=desc, unit=unit, unit_scale=True,
                    dynamic_ncols=True, file=stream)
    return LineProgress(iterable, total, desc, unit, stream, interval)
