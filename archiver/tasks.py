"""The tasks: one descriptor each, the one place that says what a task is.

A :class:`Task` names the policy section it needs, the locks the runner takes for it, whether it
only touches the store, its schedule in a policy, the metrics it reports, what an interrupted run
leaves behind, and the function that does the work with its typed options. The CLI, the runner
(:mod:`archiver.ops.runner`), the worker, ``archiver status`` and the deployment tests read these
descriptors; nothing else keeps a list of tasks.

A task function is ``run(policy, options, store, progress) -> TaskResult``; failures are raised as
:class:`archiver.errors.ArchiverError` subclasses. The functions and their options classes are imported
when a task runs, not when this module is: ``archiver --help`` reads the descriptors without loading
pyarrow, boto3 or psycopg, and a backup never loads what only the archive task needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from .coldtier.lock import COLD_TIER
from .common.progress import Progress
from .common.result import TaskOptions, TaskResult
from .errors import UsageError
from .pg.lockspec import DatabaseLock
from .policy.schema import Policy
from .storage.base import Store

if TYPE_CHECKING:
    from .backup.prune import PruneOptions
    from .backup.task import BackupOptions
    from .coldtier.archive import ArchiveOptions
    from .coldtier.retention import RetentionOptions
    from .pitr.basebackup import BaseBackupOptions
    from .restore.drill import VerifyOptions

OptionsT = TypeVar("OptionsT", bound=TaskOptions)


@dataclass(frozen=True)
class Locks:
    """What the runner holds while a task runs: an advisory lock on the policy's database (work that
    must not overlap shares one), and/or a lease in the store (store-only work must not depend on the
    database being up)."""

    database: DatabaseLock | None = None
    store: bool = False


@dataclass(frozen=True)
class Task(Generic[OptionsT]):
    name: str
    section: Literal["backup", "archive", "verify", "pitr"]  # the policy section it needs
    locks: Locks
    store_only: bool  # touches only the store: the policy's database variables need not be set
    schedule: Callable[[Policy], str | None]  # its cron expression in a policy (None: not scheduled there)
    metrics: tuple[str, ...]  # result metrics it reports that are exported (archiver.ops.metrics.RESULT_METRICS)
    interrupted: str  # what a run stopped by SIGINT/SIGTERM leaves behind, unless the task says more precisely
    run: Callable[[Policy, OptionsT, Store, Progress], TaskResult]  # the runner's store, and progress reporting
    options: Callable[[], OptionsT]  # the options of a scheduled run (archiver run, the worker)
    newest_backup: Literal["taken", "verified"] | None = None  # a success moves this freshness gauge
    refreshes_status: bool = False  # the worker re-reads the policy's status (backup ages) after a run
    also_with: tuple[str, ...] = ()  # other sections that give the task something to do (prune: pitr)
    locks_for: Callable[[OptionsT], Locks] | None = None  # locks that depend on the options (a shard's)

    def locks_of(self, options: OptionsT) -> Locks:
        return self.locks_for(options) if self.locks_for else self.locks

    def configured(self, policy: Policy) -> None:
        """Refuse (exit 2) a policy without the section this task needs, before any lock or connection."""
        if all(getattr(policy, section) is None for section in (self.section, *self.also_with)):
            raise UsageError(f"policy {policy.name!r} has no {self.section} section ({policy.source}), so it has no "
                             f"{self.name} task", hint=f"add {self.section}: {{schedule: ...}} to the policy")


def _backup_schedule(policy: Policy) -> str | None:
    return policy.backup.schedule if policy.backup else None


def _basebackup_schedule(policy: Policy) -> str | None:
    return policy.pitr.base_backup.schedule if policy.pitr else None


def _prune_schedule(policy: Policy) -> str | None:
    """Prune follows the backup schedule unless it has its own (it then waits for the backup: tasks of one
    policy run one after another); a policy with base backups only prunes after its base backups."""
    if policy.backup is None or policy.backup.retention is None:
        if policy.pitr is not None and policy.pitr.base_backup.retention is not None:
            return policy.pitr.base_backup.schedule
        return None
    return policy.backup.prune_schedule or policy.backup.schedule


def _archive_schedule(policy: Policy) -> str | None:
    return policy.archive.schedule if policy.archive else None


def _retention_schedule(policy: Policy) -> str | None:
    """Retention follows the archive schedule unless it has its own."""
    return (policy.archive.retention_schedule or policy.archive.schedule) if policy.archive else None


def _verify_schedule(policy: Policy) -> str | None:
    return policy.verify.schedule if policy.verify else None


# The work of each task, imported when it runs (see the module's docstring).

def _backup(policy: Policy, options: BackupOptions, store: Store, progress: Progress) -> TaskResult:
    from .backup.task import backup_task
    return backup_task(policy, options, store, progress)


def _backup_options() -> BackupOptions:
    from .backup.task import BackupOptions
    return BackupOptions()


def _prune_all(policy: Policy, options: PruneOptions, store: Store, progress: Progress) -> TaskResult:
    """Logical backups and, with a pitr section, base backups and the WAL they no longer need."""
    from .pitr.prune import prune_all_task
    return prune_all_task(policy, options, store, progress)


def _prune_options() -> PruneOptions:
    from .backup.prune import PruneOptions
    return PruneOptions()


def _basebackup(policy: Policy, options: BaseBackupOptions, store: Store, progress: Progress) -> TaskResult:
    from .pitr.basebackup import basebackup_task
    return basebackup_task(policy, options, store, progress)


def _basebackup_options() -> BaseBackupOptions:
    from .pitr.basebackup import BaseBackupOptions
    return BaseBackupOptions()


def _archive(policy: Policy, options: ArchiveOptions, store: Store, progress: Progress) -> TaskResult:
    from .coldtier.archive import archive_task
    return archive_task(policy, options, store, progress)


def _archive_options() -> ArchiveOptions:
    from .coldtier.archive import ArchiveOptions
    return ArchiveOptions()


def _retention(policy: Policy, options: RetentionOptions, store: Store, progress: Progress) -> TaskResult:
    from .coldtier.retention import retention_task
    return retention_task(policy, options, store, progress)


def _retention_options() -> RetentionOptions:
    from .coldtier.retention import RetentionOptions
    return RetentionOptions()


def _verify(policy: Policy, options: VerifyOptions, store: Store, progress: Progress) -> TaskResult:
    from .restore.drill import verify_task
    return verify_task(policy, options, store, progress)


def _verify_options() -> VerifyOptions:
    from .restore.drill import VerifyOptions
    return VerifyOptions()


BACKUP: Task[BackupOptions] = Task(
    name="backup", section="backup", locks=Locks(database=DatabaseLock("backup")), store_only=False,
    schedule=_backup_schedule, metrics=("bytes", "rows", "peak_rss_bytes"),
    interrupted="nothing was changed (no manifest was written; a backup without one is not a backup)",
    run=_backup, options=_backup_options, newest_backup="taken", refreshes_status=True)

BASEBACKUP: Task[BaseBackupOptions] = Task(
    name="basebackup", section="pitr", locks=Locks(database=DatabaseLock("basebackup")), store_only=False,
    schedule=_basebackup_schedule, metrics=("bytes", "peak_rss_bytes"),
    interrupted="nothing was changed (no manifest was written; a base backup without one is not a base backup)",
    run=_basebackup, options=_basebackup_options, refreshes_status=True)

PRUNE: Task[PruneOptions] = Task(
    name="prune", section="backup", locks=Locks(store=True), store_only=True,
    schedule=_prune_schedule, metrics=(),
    interrupted="nothing else was changed: backups deleted before the interruption stay deleted (see the log)",
    run=_prune_all, options=_prune_options, refreshes_status=True, also_with=("pitr",))

def _archive_locks(options: ArchiveOptions) -> Locks:
    """One shard of a run shares the cold-tier lock with the other shards (see DatabaseLock)."""
    if options.shard is None:
        return Locks(database=COLD_TIER)
    index, count = options.shard
    return Locks(database=COLD_TIER.for_part(f"shard {index}/{count}"))


ARCHIVE: Task[ArchiveOptions] = Task(
    name="archive", section="archive", locks=Locks(database=COLD_TIER), store_only=False,
    schedule=_archive_schedule, metrics=("bytes", "rows", "chunks_archived", "chunks_held_back", "peak_rss_bytes"),
    interrupted="archives finished before the interruption are kept (see the log); the export in flight left "
                "no manifest",
    run=_archive, options=_archive_options, locks_for=_archive_locks)

RETENTION: Task[RetentionOptions] = Task(
    name="retention", section="archive", locks=Locks(database=COLD_TIER, store=True), store_only=False,
    schedule=_retention_schedule,
    metrics=("chunks_dropped", "chunks_held_back", "cold_files_expired", "peak_rss_bytes"),
    interrupted="chunks dropped and files expired before the interruption stay so (see the log); the step in "
                "flight was rolled back",
    run=_retention, options=_retention_options)

VERIFY: Task[VerifyOptions] = Task(
    name="verify", section="verify", locks=Locks(store=True), store_only=True,
    schedule=_verify_schedule, metrics=("rows", "bytes"),
    interrupted="nothing was changed (no verdict was written; the scratch instance was removed)",
    run=_verify, options=_verify_options, newest_backup="verified", refreshes_status=True, also_with=("pitr",))

# In the order a policy's tasks are listed and scheduled.
TASKS: tuple[Task[BackupOptions], Task[BaseBackupOptions], Task[PruneOptions], Task[ArchiveOptions],
             Task[RetentionOptions], Task[VerifyOptions]] = (BACKUP, BASEBACKUP, PRUNE, ARCHIVE, RETENTION, VERIFY)
TASK_NAMES = tuple(task.name for task in TASKS)


def named(name: str) -> Task[Any]:
    """The task called ``name``; UsageError (exit 2) naming the tasks there are."""
    for task in TASKS:
        if task.name == name:
            return task
    raise UsageError(f"unknown task {name!r} (allowed: {', '.join(TASK_NAMES)})")


def task_schedules(policy: Policy) -> dict[str, str]:
    """Cron expression per task of ``policy``, in task order (what the worker schedules)."""
    return {task.name: schedule for task in TASKS if (schedule := task.schedule(policy)) is not None}
