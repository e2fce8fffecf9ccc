"""What ``archiver status`` knows, as gauges: schedules, the newest backups, archive lag, the cold tier, the
WAL archive.

The worker sets them after every status check; ``archiver run`` sets the policy's schedules on every
push, and the archive tables' gauges after an archive or retention run (so a Pushgateway has them too).
"""

from __future__ import annotations

from ..common.cron import cron_interval
from ..common.timeutil import parse_timestamp, utcnow
from ..policy.protect import protection
from ..policy.schema import Policy
from ..tasks import task_schedules
from .metrics import Metrics
from .status import PolicyStatus


def set_schedules(metrics: Metrics, policy: Policy) -> None:
    """archiver_task_schedule_interval_seconds: what the alerts measure an age against."""
    now = utcnow()
    metrics.set_schedules(policy.name or "", {task: cron_interval(expression, now=now).total_seconds()
                                              for task, expression in task_schedules(policy).items()})
    found = protection(policy)  # on every push and status check, beside the schedules
    metrics.set_protection(policy.name or "", {"backup_encryption": found["backups_encrypted"],
                                               "archive_encryption": found["archives_encrypted"],
                                               "object_lock": found["object_lock"] is not None})


def set_backups(metrics: Metrics, status: PolicyStatus) -> None:
    newest, proven = status.newest_backup, status.newest_verified
    metrics.set_newest_backup(status.policy, parse_timestamp(newest["time"]) if newest else None,
                              size=int(newest["size"]) if newest and newest.get("size") is not None else None)
    metrics.set_newest_backup(status.policy, parse_timestamp(proven["time"]) if proven else None, verified=True)


def set_archive(metrics: Metrics, status: PolicyStatus) -> None:
    for table, entry in ((status.archive or {}).get("tables") or {}).items():
        archived = entry.get("archived") or {}
        objects = archived.get("objects", archived.get("count"))
        metrics.set_archive_table(status.policy, table, lag_seconds=entry.get("lag_seconds"),
                                  cold_bytes=int(archived.get("bytes") or 0), cold_objects=int(objects or 0))


def set_pitr(metrics: Metrics, status: PolicyStatus) -> None:
    """The WAL archive's gauges (a status that could not read the store leaves them as they were; the worker's
    receivers move the last-archived one as each segment is stored)."""
    if status.pitr is None:
        return
    archived, window = status.pitr.get("last_archived_at"), status.pitr.get("window") or []
    metrics.pitr.archived(status.policy, parse_timestamp(archived) if archived else None)
    metrics.pitr.window(status.policy, parse_timestamp(window[0]["from"]) if window else None)


def set_all(metrics: Metrics, policy: Policy, status: PolicyStatus) -> None:
    set_schedules(metrics, policy)
    set_backups(metrics, status)
    set_archive(metrics, status)
    set_pitr(metrics, status)
