"""The ``--json`` documents: one shape per command, each with ``"schema": "archiver.<command>/1"``.

docs/schemas/archiver.<command>.v1.json describes each (tests validate real outputs against them).
Conventions: durations are numbers named ``*_seconds``, yes/no answers are booleans, times are RFC 3339
in UTC (``2026-01-01T02:00:00Z``). A new key may appear in a version; a key that changes meaning or
goes away makes the next version (``/2``).
"""

from __future__ import annotations

import json
from typing import Any

import click

from ..common.result import TaskResult


def emit(command: str, document: dict[str, Any], *, indent: int | None = 2) -> None:
    click.echo(json.dumps({"schema": f"archiver.{command}/1", **document}, indent=indent, default=str))


def task_document(result: TaskResult, *, dry_run: bool) -> dict[str, Any]:
    """A finished task (prune, archive, retention, plan, restore, restore-archive, run)."""
    return {"policy": result.policy, "task": result.task, "status": result.status,
            "exit_code": int(result.exit_code), "dry_run": dry_run, "summary": result.summary,
            "lines": result.lines, "metrics": result.metrics, "data": result.data}
