"""``archiver status``: per policy, is everything as it should be?

Built from the store alone (manifests, verification records, run records), so it answers even
when a database is down: newest backup and its age against the schedule (stale when older
than two intervals), the newest backup a drill proved, each task's last success and failure,
and what retention held back. Anything stale or failing makes the policy unhealthy. A run
stopped by SIGINT/SIGTERM is shown as interrupted, which is not failing unless the task then
missed its schedule (no success for two intervals). Archive coverage (archived, hot, dropped
ranges and gaps) comes from the archive manifests, and from the database's chunks when its DSN
is set and it answers. A policy file that does not load is a failing row of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ..backup.manifest import list_backups
from ..coldtier.manifest import ARCHIVE_CATALOG_PREFIX, list_archive_manifests
from ..common import log
from ..common.cron import cron_interval
from ..common.timeutil import format_duration, isoformat, parse_timestamp, utcnow
from ..errors import ArchiverError
from ..pitr.overview import pitr_overview
from ..policy.protect import protection
from ..policy.schema import Policy
from ..storage.backends import open_store
from ..storage.base import Store
from ..tasks import task_schedules
from .runner import read_run_record

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
    pitr: dict[str, Any] | None = None  # point-in-time recovery: window, WAL lag against rpo
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # shown, but not a problem (an interrupted run)
    protection: dict[str, Any] | None = None  # encryption and object lock, as the policy says
    source: str | None = None  # the policy file, for a file that did not load
    error: str | None = None  # why that file did not load: its first problem, file:line:col key: message

    @property
    def healthy(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        document = {"policy": self.policy, "healthy": self.healthy, "checked_at": isoformat(self.checked_at),
                    "newest_backup": self.newest_backup, "newest_verified": self.newest_verified,
                    "tasks": self.tasks, "held_back": self.held_back, "archive": self.archive, "pitr": self.pitr,
                    "problems": self.problems, "notes": self.notes, "protection": self.protection}
        if self.error is not None:
            document.update(source=self.source, error=self.error)
        return document


def broken_policy_status(name: str, source: str, error: str, *, now: datetime | None = None) -> PolicyStatus:
    """The row of a policy file that does not load: failing, with the file and its first problem."""
    return PolicyStatus(name, now or utcnow(), problems=[f"the policy file does not load: {error}"], source=source,
                        error=error)


def _backup_status(policy: Policy, store: Store, now: datetime, status: PolicyStatus) -> None:
    if policy.backup is None:
        return
    backups = list_backups(store)
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
                            "verified": newest.verified == "yes"}
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


def _finished(entry: dict[str, Any] | None) -> str:
    return str((entry or {}).get("finished_at") or "")


def _task_status(policy: Policy, store: Store, status: PolicyStatus) -> None:
    for task, schedule in task_schedules(policy).items():
        record = read_run_record(store, task)
        success, failure = record.get("last_success"), record.get("last_failure")
        interrupted = record.get("last_interrupted")
        entry: dict[str, Any] = {"last_success": (success or {}).get("finished_at"),
                                 "last_failure": (failure or {}).get("finished_at"),
                                 "last_interrupted": (interrupted or {}).get("finished_at")}
        failing = bool(failure) and (not success or _finished(failure) > _finished(success))
        entry["failing"] = failing
        if failing and failure:
            entry["error"] = failure.get("error") or failure.get("summary")
            status.problems.append(f"{task} is failing since {failure['finished_at']}: "
                                   f"{str(entry['error'])[:300]}")
        entry["interrupted"] = bool(interrupted) and _finished(interrupted) > max(_finished(success),
                                                                                 _finished(failure))
        if entry["interrupted"] and interrupted:
            _interrupted_status(task, schedule, interrupted, success, status)
        last = record.get("last_run") or {}
        if task == "retention" and last.get("held_back"):
            status.held_back = list(last["held_back"])
            entry["held_back"] = len(status.held_back)
        status.tasks[task] = entry


def _interrupted_status(task: str, schedule: str, interrupted: dict[str, Any], success: dict[str, Any] | None,
                        status: PolicyStatus) -> None:
    """An interrupted run is a note; it becomes a problem only when the task has missed its schedule
    (no success for two intervals). A backup's schedule is already judged by the newest backup's age."""
    when = interrupted.get("finished_at")
    text = f"{task} was interrupted at {when} ({interrupted.get('signal', 'signal')}): {interrupted.get('outcome', '')}"
    interval = cron_interval(schedule, now=status.checked_at)
    since = parse_timestamp(str((success or interrupted).get("finished_at") or when))
    if task != "backup" and status.checked_at - since > 2 * interval:
        last = f"last success {success['finished_at']}" if success else "no success recorded"
        status.problems.append(f"{text}; {last}, and the schedule ({schedule}) runs every "
                               f"{format_duration(interval)}: missed")
    else:
        status.notes.append(text)


Range = tuple[datetime, datetime]


def _merged(ranges: list[Range]) -> list[Range]:
    merged: list[Range] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _gaps(ranges: list[Range], limit: int = 10) -> list[dict[str, str]]:
    merged = _merged(ranges)
    holes = [{"from": isoformat(a[1]), "to": isoformat(b[0])} for a, b in zip(merged, merged[1:], strict=False)]
    return holes[:limit]


def _span(ranges: list[Range]) -> dict[str, Any]:
    return {"count": len(ranges), "from": isoformat(min(r[0] for r in ranges)) if ranges else None,
            "to": isoformat(max(r[1] for r in ranges)) if ranges else None}


def _archived_ranges(store: Store) -> dict[str, dict[str, tuple[Range, int, int, int]]]:
    """table -> range (its identity's stem) -> (UTC range, rows, object bytes, objects), from the
    current archive manifests. Ranges, not chunk names: a chunk re-created for an archived range
    (by a late row or restore-archive) has another name and is the same range."""
    from ..coldtier.catalog import superseded_keys
    from ..coldtier.identity import of_manifest
    from ..coldtier.manifest import objects_of

    found: dict[str, dict[str, tuple[Range, int, int, int]]] = {}
    manifests = list_archive_manifests(store, ARCHIVE_CATALOG_PREFIX)
    superseded = superseded_keys(manifests.values())
    for key, loaded in manifests.items():
        document = loaded.document
        if not document or key in superseded:
            continue
        span = document.get("range", {})
        if not span.get("start_utc") or not span.get("end_utc"):
            continue
        objects = objects_of(document)
        found.setdefault(str(document["table"]), {})[of_manifest(document).stem] = (
            (parse_timestamp(span["start_utc"]), parse_timestamp(span["end_utc"])), int(document.get("rows", 0)),
            sum(int(entry.get("size") or 0) for entry in objects), len(objects))
    return found


def _hot_ranges(policy: Policy) -> tuple[dict[str, dict[str, Range]] | None, str]:
    """table -> chunk -> UTC range of what is in the database now; None with the reason when the
    database is not reachable from here (status answers from the store alone then)."""
    from ..coldtier import chunks
    from ..pg.connect import probe_server, session

    assert policy.archive is not None
    try:
        dsn = policy.database.resolved_dsn()
        if "${" in dsn:
            return None, "not checked (its DSN variable is not set here)"
        probe_server(dsn, timeout=3)
        hot: dict[str, dict[str, Range]] = {}
        with session(dsn, connect_timeout=5) as current:
            for table in policy.archive.tables:
                info = chunks.discover(current, table)
                unit = table.time_unit
                hot[info.display] = {info.identity(chunk).stem: (_utc(chunk.start, unit), _utc(chunk.end, unit))
                                     for chunk in info.chunks if chunk.start is not None and chunk.end is not None}
        return hot, "checked"
    except ArchiverError as exc:
        return None, f"not reachable: {str(exc).splitlines()[0][:200]}"


def _utc(value: Any, unit: str | None) -> datetime:
    from ..coldtier.chunks import integer_to_datetime

    if isinstance(value, int):
        return integer_to_datetime(value, unit or "s")
    return value if isinstance(value, datetime) else datetime.combine(value, datetime.min.time(), tzinfo=UTC)


def _lag_seconds(waiting: list[Range], archive_after: timedelta, now: datetime) -> int:
    """How long the oldest range not archived yet has been due (its end + archive_after); 0: none is due."""
    due = [now - (end + archive_after) for _, end in waiting if end + archive_after <= now]
    return int(max(due).total_seconds()) if due else 0


def _archive_status(policy: Policy, store: Store, status: PolicyStatus, *, check_database: bool) -> None:
    if policy.archive is None:
        return
    archived = _archived_ranges(store)
    hot, database_state = _hot_ranges(policy) if check_database else (None, "not checked")
    tables: dict[str, Any] = {}
    for table in policy.archive.tables:
        name = table.qualified_name
        cold = archived.get(name, {})
        entry: dict[str, Any] = {"archived": {**_span([r for r, _, _, _ in cold.values()]),
                                              "rows": sum(rows for _, rows, _, _ in cold.values()),
                                              "bytes": sum(size for _, _, size, _ in cold.values()),
                                              "objects": sum(count for _, _, _, count in cold.values())}}
        ranges = [r for r, _, _, _ in cold.values()]
        if hot is not None:
            in_db = hot.get(name, {})
            waiting = [in_db[c] for c in set(in_db) - set(cold)]
            entry["hot"] = _span(list(in_db.values()))
            entry["hot_not_archived"] = len(waiting)
            entry["dropped"] = _span([cold[c][0] for c in set(cold) - set(in_db)])
            entry["lag_seconds"] = _lag_seconds(waiting, table.archive_after, status.checked_at)
            ranges += list(in_db.values())
        entry["gaps"] = _gaps(ranges)
        tables[name] = entry
    status.archive = {"database": database_state, "tables": tables}


def _pitr_status(policy: Policy, store: Store, now: datetime, status: PolicyStatus) -> None:
    if policy.pitr is None:
        return
    overview = pitr_overview(policy, store, now)
    status.pitr = {**overview.to_json(), "window_text": overview.describe_window()}
    status.problems += overview.problems


def policy_status(policy: Policy, *, store: Store | None = None, now: datetime | None = None,
                  check_database: bool = True) -> PolicyStatus:
    """``check_database``: also look at the hot chunks (when the DSN is set and the server answers)."""
    now = now or utcnow()
    status = PolicyStatus(policy.name or "", now, protection=protection(policy))
    try:
        store = store or open_store(policy.storage)
        _backup_status(policy, store, now, status)
        _task_status(policy, store, status)
        _archive_status(policy, store, status, check_database=check_database)
        _pitr_status(policy, store, now, status)
    except ArchiverError as exc:
        status.problems.append(f"cannot read the store: {exc}")
    return status


def all_status(policies: list[Policy], *, now: datetime | None = None, check_database: bool = True) -> list[PolicyStatus]:
    return [policy_status(policy, now=now, check_database=check_database)
            for policy in sorted(policies, key=lambda p: p.name or "")]
