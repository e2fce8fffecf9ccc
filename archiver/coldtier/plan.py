"""``archiver plan``: what archive and retention would do now, per table, and why.

It runs both tasks as dry runs (the same code and decisions as the real runs, changing nothing)
and groups their decisions by table.
"""

from __future__ import annotations

from datetime import datetime

from ..common.result import TaskResult
from ..policy.schema import Policy
from ..storage.backends import open_store
from ..storage.base import Store
from .archive import run_archive
from .decisions import Decision
from .retention import run_retention
from .steps import archive_section
from .summary import summarise, summary_line

_SEVERITY = {"ok": 0, "held_back": 1, "verification_failed": 2}
_TASK_LABEL = {"archive": "archive", "retention": "retention", "expiry": "cold files"}


def run_plan(policy: Policy, *, now: datetime | None = None, store: Store | None = None) -> TaskResult:
    config = archive_section(policy)
    store = store or open_store(policy.storage)
    archive = run_archive(policy, dry_run=True, now=now, store=store)
    retention = run_retention(policy, dry_run=True, now=now, store=store)
    decisions = archive.data["decisions"] + retention.data["decisions"]
    order = [table.qualified_name for table in config.tables]
    order += sorted({d["table"] for d in decisions} - set(order))
    lines: list[str] = []
    every: list[str] = []
    for table in order:
        mine = [Decision(**d) for d in decisions if d["table"] == table]
        if not mine:
            continue
        lines.append(table or "storage")
        every.append(table or "storage")
        for task in _TASK_LABEL:
            of_task = [d for d in mine if d.task == task]
            lines += [f"  {_TASK_LABEL[task]:<10} {line}" for line in summarise(of_task, dry_run=True, table=False)]
            every += [f"  {_TASK_LABEL[task]:<10} {summary_line([d], dry_run=True, table=False)}" for d in of_task]
    result = TaskResult(policy=policy.name or "", task="plan", lines=every,
                        summary=f"archive: {archive.summary.removeprefix('dry run: ')}; "
                                f"retention: {retention.summary.removeprefix('dry run: ')}")
    result.status = max((archive.status, retention.status), key=lambda status: _SEVERITY[status])
    result.data = {"decisions": decisions, "summary_lines": lines}
    result.metrics = {f"archive_{k}": v for k, v in archive.metrics.items()}
    result.metrics.update({f"retention_{k}": v for k, v in retention.metrics.items()})
    return result
