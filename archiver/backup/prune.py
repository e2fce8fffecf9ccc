"""``archiver prune NAME``: backup retention, applied.

The decisions come from :func:`archiver.backup.rotation.decide` (a pure function); this module lists,
refuses when unsure, prints every decision with its reason and deletes. A backup goes manifest
first, so a crash midway leaves at worst data objects without a manifest (orphans, removed by a
later run), never a manifest pointing at missing data.

A backup in progress owns objects that have no manifest yet. It holds a lease
(``locks/backup-<id>.json``, renewed while it runs): whatever is under ``backups/<id>/`` of a
live lease is kept, however old. Objects without a manifest and writes never completed (pending
multipart uploads, temp files) of runs without a live lease are removed once older than
``orphan_grace``, counted from the later of the store's time and the backup's start.

The leases are read before the listings: a backup running when prune starts stays protected
even if it finishes (and releases its lease) while prune works, and one that starts later is
younger than ``orphan_grace`` (at least an hour). Right before an orphan is deleted, prune
checks once more that its backup still has no manifest.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from ..common import log
from ..common.progress import Progress
from ..common.result import TaskResult
from ..common.timeutil import format_duration, isoformat, utcnow
from ..errors import ArchiverError, TaskFailed, UsageError
from ..policy.schema import Policy
from ..storage.backends import open_store
from ..storage.base import IncompleteWrite, ObjectInfo, Store
from ..storage.leases import BACKUP_LEASE_PREFIX, LeaseRecord, read_leases
from ..storage.objectlock import locked_until
from ..storage.uploads import UploadVerdict, abort_uploads, judge_pending_uploads
from .manifest import (
    BACKUPS_PREFIX,
    BackupEntry,
    backup_id_of,
    backup_manifest_key,
    backup_prefix,
    id_time,
    scan_backups,
    verification_key,
)
from .rotation import Record, RotationDecision, decide
from .task import backup_config

logger = log.get_logger("prune")


@dataclass(frozen=True)
class Leftover:
    """An object under backups/ that no manifest references, an incomplete write, or a dead backup's lease."""

    key: str
    since: datetime
    what: str  # "no manifest" / "multipart upload ..." / "temp file ..." / "lease of a backup that died"
    size: int
    remove: bool
    reason: str
    write: IncompleteWrite | None = None


def _age(now: datetime, since: datetime) -> str:
    return format_duration(max(timedelta(0), now - since))


def _born(key: str) -> datetime | None:
    """The start of the backup run that wrote ``key`` (a backup id is its start time)."""
    backup_id = backup_id_of(key)
    return id_time(backup_id) if backup_id else None


class _BackupLeases:
    """The backup leases in the store, as read before the listings they protect."""

    def __init__(self, store: Store) -> None:
        self.by_backup = {lease.name[len(BACKUP_LEASE_PREFIX):]: lease
                          for lease in read_leases(store, BACKUP_LEASE_PREFIX)}

    def protects(self, key: str) -> str | None:
        """Why ``key`` must stay: the backup it belongs to is running (its lease is live, by the real clock)."""
        backup_id = backup_id_of(key)
        lease = self.by_backup.get(backup_id or "")
        if lease is None or not lease.live():
            return None
        return f"backup {backup_id} is running ({lease.describe()})"

    def dead(self) -> list[LeaseRecord]:
        return [lease for lease in self.by_backup.values() if not lease.live()]


class _Judge:
    """Keep what a live backup lease covers or what is younger than orphan_grace; the rest goes."""

    def __init__(self, leases: _BackupLeases, now: datetime, grace: timedelta) -> None:
        self.leases, self.grace, self.cutoff = leases, grace, now - grace

    def __call__(self, key: str, since: datetime) -> tuple[bool, str]:
        running = self.leases.protects(key)
        if running is not None:
            return False, running
        if since >= self.cutoff:
            return False, f"younger than orphan_grace {format_duration(self.grace)} (a running backup may own it)"
        return True, f"older than orphan_grace {format_duration(self.grace)}"


def _orphans(orphans: list[ObjectInfo], judge: _Judge) -> list[Leftover]:
    found: list[Leftover] = []
    for info in orphans:
        born = _born(info.key)
        since = max(info.modified, born) if born else info.modified
        remove, reason = judge(info.key, since)
        found.append(Leftover(info.key, since, "no manifest", info.size, remove, reason))
    return found


def _pending(verdicts: list[UploadVerdict], judge: _Judge) -> list[Leftover]:
    """Pending uploads as leftovers, with prune's own words for the verdict (the same rules decided it)."""
    return [Leftover(v.key, v.since, v.write.description, 0, v.abort, judge(v.key, v.since)[1], v.write)
            for v in verdicts]


def _dead_leases(leases: _BackupLeases, judge: _Judge) -> list[Leftover]:
    """Leases of backups that died (no longer renewed): removed with the rest once past orphan_grace."""
    found = []
    for lease in leases.dead():
        holder_gone = lease.owner is not None and lease.owner.known_dead()
        remove = holder_gone or lease.expires_at < judge.cutoff
        if holder_gone:
            reason = f"its backup died ({lease.owner.describe() if lease.owner else ''} is gone)"
        elif remove:
            reason = f"its backup died (not renewed, expired {isoformat(lease.expires_at)})"
        else:
            reason = (f"expired {isoformat(lease.expires_at)}, removed once older than orphan_grace "
                      f"{format_duration(judge.grace)}")
        found.append(Leftover(lease.key, lease.expires_at, f"lease of {lease.holder}", 0, remove, reason))
    return found


def _leftover_line(item: Leftover, now: datetime) -> str:
    return f"orphan  {item.key}  ({item.what}, {_age(now, item.since)} old)  " \
           f"{'delete' if item.remove else 'keep'}: {item.reason}"


@dataclass(frozen=True)
class PruneOptions:
    dry_run: bool = False  # print the decisions, change nothing


def prune_task(policy: Policy, options: PruneOptions, store: Store, progress: Progress) -> TaskResult:
    """The prune task (:data:`archiver.tasks.PRUNE`)."""
    return run_prune(policy, dry_run=options.dry_run, store=store)


def run_prune(policy: Policy, *, dry_run: bool = False, now: datetime | None = None,
              store: Store | None = None) -> TaskResult:
    """Apply the policy's backup retention; with ``dry_run`` only say what would happen."""
    config = backup_config(policy)
    rules = config.retention
    if rules is None or not rules.rules():
        raise UsageError(f"policy {policy.name!r} has no backup.retention rules: prune would have nothing to go by",
                         hint="add e.g. backup.retention: {keep_last: 7, keep_daily: 14}")
    store = store or open_store(policy.storage)
    now = now or utcnow()
    where = store.describe(BACKUPS_PREFIX)
    try:
        leases = _BackupLeases(store)  # first: see the module's docstring
        judge = _Judge(leases, now, rules.orphan_grace)
        scan = scan_backups(store)
        pending = judge_pending_uploads(store, BACKUPS_PREFIX, older_than=judge.cutoff,
                                        protect=lambda write: leases.protects(write.key), born=_born)
        leftovers = _orphans(scan.orphans, judge) + _pending(pending, judge) + _dead_leases(leases, judge)
    except ArchiverError as exc:
        raise TaskFailed(f"refusing to prune {policy.name}: listing {where} failed: {exc}",
                         hint="prune acts only on a complete listing; nothing was deleted") from None
    if not scan.backups:
        raise TaskFailed(f"refusing to prune {policy.name}: no backups found under {where}",
                         hint="an empty listing can mean a wrong storage.url, prefix, bucket or credentials; "
                              "prune never acts on one. Nothing was deleted")
    records = [Record(entry.id, entry.time, entry.verified == "yes") for entry in scan.backups]
    decisions = decide(records, rules.rules(), now, min_keep=rules.min_keep)
    _check_safe(decisions)
    entries = {entry.id: entry for entry in scan.backups}
    decisions = [_unless_locked(store, d, entries[d.record.id], now) for d in decisions]
    leftovers = [_leftover_unless_locked(store, item, now) for item in leftovers]

    lines = [f"{d.record.id}  {d.record.time:%Y-%m-%d %H:%M:%S}  {d.text}" for d in decisions]
    lines += [_leftover_line(item, now) for item in leftovers]
    doomed = [entries[d.record.id] for d in decisions if not d.keep]
    removable = [item for item in leftovers if item.remove]
    if not dry_run:
        for entry in doomed:
            _delete_backup(store, entry)
        abort_uploads(store, pending)
        removable = [item for item in removable if item.write is not None or _delete_leftover(store, item)]
    freed = sum(entry.size for entry in doomed) + sum(item.size for item in removable)
    kept = len(decisions) - len(doomed)
    verb = "would delete" if dry_run else "deleted"
    summary = (f"{'dry run: ' if dry_run else ''}{policy.name}: kept {kept} backup{'s' if kept != 1 else ''}, "
               f"{verb} {len(doomed)} ({freed / 2**20:.1f} MiB) and {len(removable)} leftover object"
               f"{'s' if len(removable) != 1 else ''}")
    logger.info("prune.done", extra=log.fields(policy=policy.name, dry_run=dry_run, kept=kept, deleted=len(doomed),
                                               leftovers=len(removable), bytes_freed=freed))
    data: dict[str, Any] = {
        "dry_run": dry_run,
        "decisions": [{"id": d.record.id, "time": isoformat(d.record.time), "keep": d.keep, "reasons": list(d.reasons)}
                      for d in decisions],
        "leftovers": [{"key": item.key, "what": item.what, "since": isoformat(item.since), "delete": item.remove,
                       "reason": item.reason} for item in leftovers],
    }
    metrics = {"kept": float(kept), "deleted": float(0 if dry_run else len(doomed)),
               "leftovers_deleted": float(0 if dry_run else len(removable)), "bytes_freed": float(0 if dry_run else freed)}
    return TaskResult(policy=policy.name or "", task="prune", summary=summary, lines=lines, data=data, metrics=metrics)


def _unless_locked(store: Store, decision: RotationDecision, entry: BackupEntry, now: datetime) -> RotationDecision:
    """A backup the rules would delete stays while any of its objects is locked: prune never tries early."""
    if decision.keep:
        return decision
    keys = {backup_manifest_key(entry.id), *entry.object_keys, *(info.key for info in entry.stored)}
    until = locked_until(store, sorted(keys), now)
    if until is None:
        return decision
    return replace(decision, keep=True, reasons=(f"object locked until {isoformat(until)} (retention alone would "
                                                 f"delete it: {', '.join(decision.reasons)})",))


def _leftover_unless_locked(store: Store, item: Leftover, now: datetime) -> Leftover:
    if not item.remove or item.write is not None:
        return item
    until = locked_until(store, [item.key], now)
    return item if until is None else replace(item, remove=False, reason=f"object locked until {isoformat(until)}")


def _check_safe(decisions: list[RotationDecision]) -> None:
    """Independent of the rules' arithmetic: something stays, and the newest verified backup stays."""
    if not any(d.keep for d in decisions):
        raise TaskFailed("refusing to prune: the retention rules would delete every backup (a bug; nothing deleted)")
    verified = [d for d in decisions if d.record.verified]
    if verified and not max(verified, key=lambda d: (d.record.time, d.record.id)).keep:
        raise TaskFailed("refusing to prune: the newest verified backup would be deleted (a bug; nothing deleted)")


def _delete_backup(store: Store, entry: BackupEntry) -> None:
    """Manifest first: from then on the rest is an orphan at worst, never a broken backup."""
    manifest_key = backup_manifest_key(entry.id)
    store.delete(manifest_key)
    prefix = backup_prefix(entry.id)
    rest = {info.key for info in entry.stored} | set(entry.object_keys) | {verification_key(entry.id)}
    for key in sorted(key for key in rest - {manifest_key} if key.startswith(prefix)):
        store.delete(key)
    logger.info("prune.deleted", extra=log.fields(backup_id=entry.id, objects=len(rest)))


def _delete_leftover(store: Store, item: Leftover) -> bool:
    """Delete an orphan or a dead lease, unless its backup got a manifest since the listing."""
    backup_id = backup_id_of(item.key)
    if backup_id and store.head(backup_manifest_key(backup_id)) is not None:
        logger.warning("prune.leftover_kept", extra=log.fields(key=item.key, reason="its backup has a manifest now"))
        return False
    store.delete(item.key)
    logger.info("prune.leftover_deleted", extra=log.fields(key=item.key, what=item.what))
    return True
