"""Decision lines for people: a run of chunks that share a decision and its reason is one line.

On a table with 10,000 chunks a plan or a dry run would otherwise print 10,000 lines. Chunk
decisions (those that carry a chunk's range) are grouped while they follow each other, in chunk
order, with the same task, table, action and reason, numbers aside ("verified archive v1 still
matches (12 rows)" and "(15 rows)" group); a chunk whose reason differs keeps its own line.
``--verbose`` and ``--json`` still give every chunk.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from .decisions import Decision

_NUMBERS = re.compile(r"\d[\d,.]*")


def _shape(decision: Decision) -> tuple[str, str, str, str]:
    return decision.task, decision.table, decision.action, _NUMBERS.sub("#", decision.reason)


def _runs(decisions: Iterable[Decision]) -> Iterator[list[Decision]]:
    run: list[Decision] = []
    for decision in decisions:
        if run and (not decision.start or not run[-1].start or _shape(decision) != _shape(run[-1])):
            yield run
            run = []
        run.append(decision)
    if run:
        yield run


def summary_line(run: list[Decision], *, dry_run: bool, table: bool = True) -> str:
    """``verb  [table] chunk: reason``, or for several ``verb  [table] N chunks from A to B: reason``."""
    first, last = run[0], run[-1]
    if len(run) == 1:
        subject = first.subject
        alike = ""
    else:
        span = f" from {first.start} to {last.end}" if first.start and last.end else ""
        subject = f"{len(run):,} chunks{span}"
        alike = "" if all(d.reason == first.reason for d in run) else " (and alike, with other numbers)"
    where = f"{first.table} {subject}".strip() if table else subject
    verb = first.verb(dry_run=dry_run)
    return f"{verb:<14} {where}: {first.reason}{alike}" if where else f"{verb:<14} {first.reason}{alike}"


def summarise(decisions: Iterable[Decision], *, dry_run: bool, table: bool = True) -> list[str]:
    """One line per run of alike decisions (see the module's docstring)."""
    return [summary_line(run, dry_run=dry_run, table=table) for run in _runs(decisions)]
