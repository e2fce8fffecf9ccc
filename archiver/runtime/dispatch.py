"""One way to run any task: through the runner (locks, run record, metrics, notifications).

The CLI commands (``backup``, ``prune``, ``archive``, ...), ``archiver run NAME TASK`` and the
worker's child processes all come through :func:`execute`, so a task behaves the same whoever
starts it. Dry runs change nothing and therefore take no lock and leave no run record.
"""

from __future__ import annotations

from typing import Any, Callable

from ..common.progress import NULL_PROGRESS, Progress
from ..common.result import TaskResult
from ..errors import UsageError
from ..policy.schema import Policy
from ..storage.base import Store
from ..tasks import TASK_NAMES
from .metrics import Metrics
from .runner import task_run


def _backup(policy: Policy, store: Store, progress: Progress, **_: Any) -> TaskResult:
    from ..backup.task import run_backup

    return run_backup(policy, progress=progress, store=store)


def _prune(policy: Policy, store: Store, progress: Progress, *, dry_run: bool = False, **_: Any) -> TaskResult:
    from ..backup.prune import run_prune

    return run_prune(policy, dry_run=dry_run, store=store)


def _archive(policy: Policy, store: Store, progress: Progress, *, dry_run: bool = False, table: str | None = None,
             accept_deletes: list[str] | None = None, **_: Any) -> TaskResult:
    from ..coldtier.archive import run_archive

    # no store handed over: the archive opens its own, with the upload budget shared by its
    # parallel exports
    return run_archive(policy, dry_run=dry_run, table=table, progress=progress, accept_deletes=accept_deletes)


def _retention(policy: Policy, store: Store, progress: Progress, *, dry_run: bool = False, **_: Any) -> TaskResult:
    from ..coldtier.retention import run_retention

    return run_retention(policy, dry_run=dry_run, store=store, progress=progress)


def _verify(policy: Policy, store: Store, progress: Progress, *, dry_run: bool = False, backup_id: str | None = None,
            scratch: str | None = None, archives: bool | None = None, **_: Any) -> TaskResult:
    from ..restore.drill import run_verify

    if dry_run:
        raise UsageError("verify has no dry run: a drill only reads the store and writes its verdict")
    return run_verify(policy, store=store, progress=progress, backup_id=backup_id, scratch=scratch, archives=archives)


TASKS: dict[str, Callable[..., TaskResult]] = {
    "backup": _backup,
    "prune": _prune,
    "archive": _archive,
    "retention": _retention,
    "verify": _verify,
}


# The policy section each task needs; checked before any lock or connection.
TASK_SECTIONS = {"backup": "backup", "prune": "backup", "archive": "archive", "retention": "archive",
                 "verify": "verify"}


def check_task_configured(policy: Policy, task: str) -> None:
    if task not in TASKS:
        known = ", ".join(name for name in TASK_NAMES if name in TASKS)
        raise UsageError(f"unknown task {task!r} (allowed: {known})")
    section = TASK_SECTIONS[task]
    if getattr(policy, section) is None:
        raise UsageError(f"policy {policy.name!r} has no {section} section ({policy.source}), so it has no {task} task",
                         hint=f"add {section}: {{schedule: ...}} to the policy")


def execute(policy: Policy, task: str, *, dry_run: bool = False, progress: Progress = NULL_PROGRESS,
            metrics: Metrics | None = None, **options: Any) -> TaskResult:
    check_task_configured(policy, task)
    with task_run(policy, task, metrics=metrics, lock=not dry_run, record=not dry_run) as run:
        run.result = TASKS[task](policy, run.store, progress, dry_run=dry_run, **options)
    return run.result
