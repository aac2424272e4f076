"""A one-line progress bar for long CLI runs: processed/total, rate, ETA. Silent when not a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO

WIDTH = 30
REDRAW_S = 0.2


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return (
        f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else (f"{seconds // 60}:{seconds % 60:02d}")
    )


class Progress:
    def __init__(self, label: str, out: TextIO | None = None, *, enabled: bool | None = None) -> None:
        self.label = label
        self.out = out if out is not None else sys.stderr
        self.enabled = self.out.isatty() if enabled is None else enabled
        self._started = time.monotonic()
        self._drawn = 0.0
        self._shown = False

    def line(self, done: int, total: int, now: float) -> str:
        elapsed = max(now - self._started, 1e-9)
        rate = done / elapsed
        fraction = done / total if total else 1.0
        filled = int(WIDTH * fraction)
        eta = _duration((total - done) / rate) if rate > 0 and done < total else "0:00"
        return (
            f"{self.label} [{'#' * filled}{'.' * (WIDTH - filled)}] {done:,}/{total:,} events  {rate:,.0f}/s  ETA {eta}"
        )

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._drawn < REDRAW_S and done < total:
            return
        self._drawn = now
        self._shown = True
        self.out.write("\r" + self.line(done, total, now))
        self.out.flush()

    def close(self) -> None:
        if self._shown:
            self.out.write("\n")
            self.out.flush()
