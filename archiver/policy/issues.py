"""Policy problems: each with its file, line, column and dotted key.

``file:line:col  dotted.key: what is wrong (got X; allowed Y)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import UsageError

KeyPath = tuple[str | int, ...]

# --------------------------------------------------------------------------------------------
# Issues


@dataclass(frozen=True)
class PolicyIssue:
    file: str
    line: int
    column: int
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        return f"{where}  {self.key}: {self.message}" if self.key else f"{where}  {self.message}"


def dotted(path: KeyPath) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value) if len(value) <= 60 else repr(value[:57] + "...")
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


class PolicyError(UsageError):
    """One or more problems in policy files; ``issues`` holds every one of them."""

    def __init__(self, issues: list[PolicyIssue]) -> None:
        self.issues = issues
        lines = [str(issue) for issue in issues]
        super().__init__("\n".join(lines) if lines else "invalid policy")

