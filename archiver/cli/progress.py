"""A live progress line on a terminal (stderr), nothing when output is not a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from ..common.progress import NULL_PROGRESS, Progress
from ..common.timeutil import format_bytes


def _human(amount: float, unit: str) -> str:
    return format_bytes(amount) if unit == "B" else f"{int(amount):,} {unit}"


class TerminalProgress:
    """``phase: 1.2 GiB / 3.4 GiB (35%)  48.0 MiB/s`` redrawn at most 5 times a second."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.name = ""
        self.total: int | None = None
        self.unit = "B"
        self.count = 0
        self.started = 0.0
        self.last_draw = 0.0

    def phase(self, name: str, total: int | None = None, unit: str = "B") -> None:
        self.done()
        self.name, self.total, self.unit, self.count = name, total, unit, 0
        self.started = self.last_draw = time.monotonic()
        self._draw(force=True)

    def advance(self, amount: int) -> None:
        self.count += amount
        self._draw()

    def done(self) -> None:
        if self.name:
            if self.total and self.count:
                self.total = self.count  # the step is finished: what it counted is its whole (100%)
            self._draw(force=True)
            self.stream.write("\n")
            self.stream.flush()
            self.name = ""

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_draw < 0.2:
            return
        self.last_draw = now
        text = f"{self.name}: {_human(self.count, self.unit)}"
        if self.total:
            text += f" / {_human(self.total, self.unit)} ({min(100, 100 * self.count // self.total)}%)"
        elapsed = now - self.started
        if elapsed > 0.5:
            text += f"  {_human(self.count / elapsed, self.unit)}/s"
        self.stream.write("\r\033[K" + text)
        self.stream.flush()


def progress_for_terminal(quiet: bool = False) -> Progress:
    stream = sys.stderr
    return TerminalProgress(stream) if stream.isatty() and not quiet else NULL_PROGRESS
