"""The confirmation a restore asks for: its plan on stderr, then yes/no (never without a terminal)."""

from __future__ import annotations

import sys
from collections.abc import Iterable

import click

from ..errors import UsageError


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
