"""``archiver prune NAME``: backup retention, applied.

The decisions come from :func:`archiver.retention.decide` (a pure function); this module lists,
refuses when unsure, prints every decision with its reason and deletes. A backup goes manifest
first, so a crash midway leaves at worst data objects without a manifest (orphans, removed by a
later run), never a manifest pointing at missing data. Objects without a manifest and writes
never completed are removed only once older than ``orphan_grace``: a backup in progress owns
objects that have no manifest yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from .. import log, manifest, retention
from ..errors import ArchiverError, TaskFailed, UsageError
from ..policy import Policy
from ..storage import IncompleteWrite, ObjectInfo, Store, open_store
from ..timeutil import format_duration, isoformat, utcnow
from . import TaskResult
from .backup import backup_config

logger = log.get_logger("prune")


@dataclass(frozen=True)
class Leftover:
    """An object under backups/ that no manifest references, or an incomplete write."""

    key: str
    since: datetime
    what: str  # "no manifest" / "multipart upload ..." / "temp file ..."
    size: int
    remove: bool
    write: IncompleteWrite | None = None


def _age(now: datetime, since: datetime) -> str:
    return format_duration(max(timedelta(0), now - since))


def _leftovers(orphans: list[ObjectInfo], incomplete: list[IncompleteWrite], now: datetime,
               grace: timedelta) -> list[Leftover]:
    cutoff = now - grace

    def since(key: str, stored_time: datetime) -> datetime:
        # The later of the store's time and the time of the run that made it (a backup id is
        # its start time): some S3-compatible stores report odd times (moto dates every
        # multipart upload 2010-11-10), and a young run must never lose its objects.
        backup_id = manifest.backup_id_of(key)
        born = manifest.id_time(backup_id) if backup_id else None
        return max(stored_time, born) if born else stored_time

    found: list[Leftover] = []
    for info in orphans:
        moment = since(info.key, info.modified)
        found.append(Leftover(info.key, moment, "no manifest", info.size, moment < cutoff))
    for write in incomplete:
        moment = since(write.key, write.started)
        found.append(Leftover(write.key, moment, write.description, 0, moment < cutoff, write))
    return found


def _leftover_line(item: Leftover, now: datetime, grace: timedelta) -> str:
    verdict = (f"delete: older than orphan_grace {format_duration(grace)}" if item.remove
               else f"keep: younger than orphan_grace {format_duration(grace)} (a running backup may own it)")
    return f"orphan  {item.key}  ({item.what}, {_age(now, item.since)} old)  {verdict}"


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
    where = store.describe(manifest.BACKUPS_PREFIX)
    try:
        scan = manifest.scan_backups(store)
        incomplete = store.incomplete_writes(manifest.BACKUPS_PREFIX)
    except ArchiverError as exc:
        raise TaskFailed(f"refusing to prune {policy.name}: listing {where} failed: {exc}",
                         hint="prune acts only on a complete listing; nothing was deleted") from None
    if not scan.backups:
        raise TaskFailed(f"refusing to prune {policy.name}: no backups found under {where}",
                         hint="an empty listing can mean a wrong storage.url, prefix, bucket or credentials; "
                              "prune never acts on one. Nothing was deleted")
    records = [retention.Record(entry.id, entry.time, entry.verified == "yes") for entry in scan.backups]
    decisions = retention.decide(records, rules.rules(), now, min_keep=rules.min_keep)
    _check_safe(decisions)
    leftovers = _leftovers(scan.orphans, incomplete, now, rules.orphan_grace)
    entries = {entry.id: entry for entry in scan.backups}

    lines = [f"{d.record.id}  {d.record.time:%Y-%m-%d %H:%M:%S}  {d.text}" for d in decisions]
    lines += [_leftover_line(item, now, rules.orphan_grace) for item in leftovers]
    doomed = [entries[d.record.id] for d in decisions if not d.keep]
    removable = [item for item in leftovers if item.remove]
    if not dry_run:
        for entry in doomed:
            _delete_backup(store, entry)
        for item in removable:
            _delete_leftover(store, item)
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
        "leftovers": [{"key": item.key, "what": item.what, "since": isoformat(item.since), "delete": item.remove}
                      for item in leftovers],
    }
    metrics = {"kept": float(kept), "deleted": float(0 if dry_run else len(doomed)),
               "leftovers_deleted": float(0 if dry_run else len(removable)), "bytes_freed": float(0 if dry_run else freed)}
    return TaskResult(policy=policy.name or "", task="prune", summary=summary, lines=lines, data=data, metrics=metrics)


def _check_safe(decisions: list[retention.Decision]) -> None:
    """Independent of the rules' arithmetic: something stays, and the newest verified backup stays."""
    if not any(d.keep for d in decisions):
        raise TaskFailed("refusing to prune: the retention rules would delete every backup (a bug; nothing deleted)")
    verified = [d for d in decisions if d.record.verified]
    if verified and not max(verified, key=lambda d: (d.record.time, d.record.id)).keep:
        raise TaskFailed("refusing to prune: the newest verified backup would be deleted (a bug; nothing deleted)")


def _delete_backup(store: Store, entry: manifest.BackupEntry) -> None:
    """Manifest first: from then on the rest is an orphan at worst, never a broken backup."""
    manifest_key = manifest.backup_manifest_key(entry.id)
    store.delete(manifest_key)
    prefix = manifest.backup_prefix(entry.id)
    rest = {info.key for info in entry.stored} | set(entry.object_keys) | {manifest.verification_key(entry.id)}
    for key in sorted(key for key in rest - {manifest_key} if key.startswith(prefix)):
        store.delete(key)
    logger.info("prune.deleted", extra=log.fields(backup_id=entry.id, objects=len(rest)))


def _delete_leftover(store: Store, item: Leftover) -> None:
    if item.write is not None:
        store.discard_incomplete(item.write)
    else:
        store.delete(item.key)
    logger.info("prune.leftover_deleted", extra=log.fields(key=item.key, what=item.what))
