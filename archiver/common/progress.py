"""Progress reporting for long steps (dump bytes, chunks exported, restore bytes).

The core reports through this small interface; the CLI decides how to show it (a live line on a
terminal, nothing otherwise). Reporting must never slow the data path: implementations throttle.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def phase(self, name: str, total: int | None = None, unit: str = "B") -> None:
        """A new step begins; ``total`` in ``unit`` when known (bytes, chunks, rows)."""

    def advance(self, amount: int) -> None:
        """``amount`` more units of the current step are done."""

    def done(self) -> None:
        """The current step is finished."""


class NullProgress:
    def phase(self, name: str, total: int | None = None, unit: str = "B") -> None:
        return None

    def advance(self, amount: int) -> None:
        return None

    def done(self) -> None:
        return None


NULL_PROGRESS: Progress = NullProgress()
