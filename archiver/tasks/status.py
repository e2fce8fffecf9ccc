"""``archiver status``: per policy, is everything as it should be?

Built from the store alone (manifests, verification records, run records), so it answers even
when a database is down: newest backup and its age against the schedule (stale when older
than two intervals), the newest backup a drill proved, each task's last success and failure,
and what retention held back. Anything stale or failing makes the policy unhealthy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .. import log, manifest
from ..errors import ArchiverError
from ..policy import Policy, task_schedules
from ..runner import read_run_record

from ..storage import Store, open_store
from ..timeutil import cron_interval, format_duration, isoformat, parse_timestamp, utcnow

_log = log.get_logger("status")


@dataclass
class PolicyStatus:
    policy: str
    checked_at: datetime
    newest_backup: dict[str, Any] | None = None
    newest_verified: dict[str, Any] | None = None
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    held_back: list[Any] = field(default_factory=list)
    archive: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {"policy": self.policy, "healthy": self.healthy, "checked_at": isoformat(self.checked_at),
                "newest_backup": self.newest_backup, "newest_verified": self.newest_verified, "tasks": self.tasks,
                "held_back": self.held_back, "archive": self.archive, "problems": self.problems}


def _backup_status(policy: Policy, store: Store, now: datetime, status: PolicyStatus) -> None:
    if policy.backup is None:
        return
    backups = manifest.list_backups(store)
    interval = cron_interval(policy.backup.schedule, now=now)
    if not backups:
        status.problems.append("no backup yet")
        return
    newest = backups[0]
    age = now - newest.time
    stale = age > 2 * interval
    status.newest_backup = {"id": newest.id, "time": isoformat(newest.time), "age_seconds": int(age.total_seconds()),
                            "size": newest.size, "schedule": policy.backup.schedule,
                            "interval_seconds": int(interval.total_seconds()), "stale": stale,
                            "verified": newest.verified}
    if stale:
        status.problems.append(f"newest backup {newest.id} is {format_duration(age)} old; the schedule "
                               f"({policy.backup.schedule}) runs every {format_duration(interval)} "
                               f"(stale after {format_duration(2 * interval)})")
    proven = next((entry for entry in backups if entry.verified == "yes"), None)
    if proven is not None:
        verified_at = parse_timestamp(str((proven.verification or {}).get("finished_at") or isoformat(proven.time)))
        status.newest_verified = {"id": proven.id, "time": isoformat(proven.time), "verified_at": isoformat(verified_at),
                                  "age_seconds": int((now - proven.time).total_seconds())}
    if newest.verified == "failed":
        status.problems.append(f"the restore drill of the newest backup {newest.id} failed")


def _task_status(policy: Policy, store: Store, status: PolicyStatus) -> None:
    for task in task_schedules(policy):
        record = read_run_record(store, task)
        success, failure = record.get("last_success"), record.get("last_failure")
        entry: dict[str, Any] = {"last_success": (success or {}).get("finished_at"),
                                 "last_failure": (failure or {}).get("finished_at")}
        failing = bool(failure) and (not success or str(failure["finished_at"]) > str(success["finished_at"]))
        entry["failing"] = failing
        if failing:
            entry["error"] = failure.get("error") or failure.get("summary")
            status.problems.append(f"{task} is failing since {failure['finished_at']}: "
                                   f"{str(entry['error'])[:300]}")
        last = record.get("last_run") or {}
        if task == "retention" and last.get("held_back"):
            status.held_back = list(last["held_back"])
            entry["held_back"] = len(status.held_back)
        status.tasks[task] = entry


def policy_status(policy: Policy, *, store: Store | None = None, now: datetime | None = None) -> PolicyStatus:
    now = now or utcnow()
    status = PolicyStatus(policy.name or "", now)
    try:
        store = store or open_store(policy.storage)
        _backup_status(policy, store, now, status)
        _task_status(policy, store, status)
    except ArchiverError as exc:
        status.problems.append(f"cannot read the store: {exc}")
    return status


def all_status(policies: list[Policy], *, now: datetime | None = None) -> list[PolicyStatus]:
    return [policy_status(policy, now=now) for policy in sorted(policies, key=lambda p: p.name or "")]
