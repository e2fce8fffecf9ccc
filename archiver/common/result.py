"""How a finished task ended: :class:`TaskResult`, which every task returns.

Failures are raised as :class:`archiver.errors.ArchiverError` subclasses; a result says how a
finished task ended. The CLI renders results; the runner and the worker turn them into metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from ..errors import ExitCode

Status = Literal["ok", "held_back", "verification_failed"]


@dataclass
class TaskResult:
    policy: str
    task: str
    status: Status = "ok"
    summary: str = ""
    lines: list[str] = field(default_factory=list)  # human-readable detail, one decision per line
    data: dict[str, Any] = field(default_factory=dict)  # JSON-able details for --json
    metrics: dict[str, float] = field(default_factory=dict)  # bytes, rows, chunks_archived, ...

    @property
    def exit_code(self) -> ExitCode:
        return {"ok": ExitCode.OK, "held_back": ExitCode.HELD_BACK,
                "verification_failed": ExitCode.VERIFICATION_FAILED}[self.status]


class TaskOptions(Protocol):
    """What every task's options say: whether this is a dry run (no lock, no run record, nothing changed)."""

    @property
    def dry_run(self) -> bool: ...
