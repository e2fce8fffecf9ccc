"""What ``restore`` and ``restore --pitr`` share on the command line: the confirmation (the plan on
stderr, then yes/no, never without a terminal) and how the result is printed."""

from __future__ import annotations

import sys
from collections.abc import Iterable

import click

from ..common.result import TaskResult
from ..errors import UsageError
from .jsonout import emit, task_document


def confirmed(lines: Iterable[str], question: str, *, yes: bool) -> bool:
    """Print the plan's ``lines``; True with ``--yes``, else ask ``question`` on a terminal (a "no"
    aborts) and refuse, exit 2, when stdin is not one."""
    for line in lines:
        click.echo(line, err=True)
    if yes:
        return True
    if not sys.stdin.isatty():
        raise UsageError("refusing to restore without a confirmation: stdin is not a terminal",
                         hint="read the plan above, then rerun with --yes")
    return click.confirm(question, default=False, err=True, abort=True)


def print_restore(result: TaskResult, *, as_json: bool, dry_run: bool) -> int:
    """The result's lines on stdout and its summary on stderr, or one ``restore`` JSON document."""
    if as_json:
        emit("restore", task_document(result, dry_run=dry_run))
        return int(result.exit_code)
    for line in result.lines:
        click.echo(line)
    click.echo(result.summary, err=True)
    return int(result.exit_code)
