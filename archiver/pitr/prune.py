"""``archiver prune NAME`` for point-in-time recovery: base backup retention, then the WAL they no longer need.

Base backups are kept or deleted by :func:`archiver.backup.rotation.decide` (the same GFS rules
as logical backups, by each base backup's stop time); the newest base backup that is restorable
(all the WAL it needs is archived) is always kept. Then every WAL file of a segment older than the
oldest kept base backup's start segment is deleted: only a prefix of the archive goes, so no gap
opens inside what the kept base backups need. Timeline history files are always kept.

Under ``storage.object_lock`` nothing is tried before its retain-until date: a base backup the rules
would delete stays while any of its objects is locked ("keep: object locked until ..."), and it
counts as kept for the WAL cutoff; old WAL goes oldest first up to the first locked file, which
stays with everything after it, so what remains is still one run without a gap.

Nothing is deleted on a failed or empty listing (no base backups, or no WAL at all: a wrong prefix
or credentials look exactly like that). A base backup in progress holds a lease on its id; its
objects, and the writes it or a killed ``wal-push`` left pending, are removed only once older than
``orphan_grace`` and not covered by a live lease.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

from ..backup.prune import PruneOptions, prune_task
from ..backup.rotation import Record, RotationDecision, decide
from ..common import log
from ..common.progress import Progress
from ..common.result import TaskResult
from ..common.timeutil import format_duration, isoformat, utcnow
from ..errors import ArchiverError, TaskFailed, UsageError
from ..policy.schema import Policy
from ..storage.base import ObjectInfo, Store
from ..storage.leases import BACKUP_LEASE_PREFIX, read_leases
from ..storage.objectlock import locked_until
from ..storage.uploads import UploadVerdict, abort_uploads, judge_pending_uploads
from .catalog import BASE_PREFIX, BaseBackup, base_id_of, base_manifest_key, base_prefix, pitr_config
from .state import PitrState, load_state
from .walnames import WAL_PREFIX, StoredWal

logger = log.get_logger("prune")


def prune_all_task(policy: Policy, options: PruneOptions, store: Store, progress: Progress) -> TaskResult:
    """The prune task (:data:`archiver.tasks.PRUNE`): logical backups' retention and/or base backups'."""
    pitr = policy.pitr is not None and policy.pitr.base_backup.retention is not None
    if not pitr:
        return prune_task(policy, options, store, progress)
    result = run_pitr_prune(policy, dry_run=options.dry_run, store=store)
    if policy.backup is None or policy.backup.retention is None:
        return result
    logical = prune_task(policy, options, store, progress)
    return TaskResult(policy=logical.policy, task="prune", summary=f"{logical.summary}; {result.summary}",
                      lines=logical.lines + result.lines, data={**logical.data, "pitr": result.data},
                      metrics={**logical.metrics, **{f"pitr_{key}": value for key, value in result.metrics.items()}})


def _live_leases(store: Store) -> set[str]:
    return {lease.name[len(BACKUP_LEASE_PREFIX):] for lease in read_leases(store, BACKUP_LEASE_PREFIX) if lease.live()}


def run_pitr_prune(policy: Policy, *, dry_run: bool, store: Store, now: datetime | None = None) -> TaskResult:
    config = pitr_config(policy)
    rules = config.base_backup.retention
    if rules is None or not rules.rules():
        raise UsageError(f"policy {policy.name!r} has no pitr.base_backup.retention rules: prune would have nothing "
                         "to go by", hint="add e.g. pitr.base_backup.retention: {keep_last: 2, keep_daily: 7}")
    now = now or utcnow()
    try:
        running = _live_leases(store)  # first: a base backup live now stays protected even if it ends meanwhile
        state = load_state(store)
        pending = judge_pending_uploads(store, "pitr/", older_than=now - rules.orphan_grace,
                                        protect=lambda write: _running(write.key, running))
    except ArchiverError as exc:
        raise TaskFailed(f"refusing to prune {policy.name}: listing {store.describe('pitr/')} failed: {exc}",
                         hint="prune acts only on a complete listing; nothing was deleted") from None
    if not state.bases.backups:
        raise TaskFailed(f"refusing to prune {policy.name}: no base backups found under {store.describe(BASE_PREFIX)}",
                         hint="an empty listing can mean a wrong storage.url, prefix, bucket or credentials; prune "
                              "never acts on one. Nothing was deleted")
    if not state.wal:
        raise TaskFailed(f"refusing to prune {policy.name}: no WAL found under {store.describe(WAL_PREFIX)}",
                         hint="base backups without WAL cannot be restored, so the listing is suspect; nothing was "
                              "deleted")
    decisions = [(entry, _unless_locked(store, entry, decision, now))
                 for entry, decision in _decisions(state, rules.rules(), now, rules.min_keep)]
    doomed = [entry for entry, decision in decisions if not decision.keep]
    kept = [entry for entry, decision in decisions if decision.keep]
    cutoff = min(entry.start_segno for entry in kept)
    segment_size = state.index.segment_size
    old_wal, locked_wal = _deletable_wal(store, [item for item in state.wal if item.file.kind != "history"
                                                 and item.file.segno(segment_size) < cutoff], segment_size, now)
    orphans, locked_orphans = _unlocked(store, [info for info in state.bases.orphans
                                                if _orphan_removable(info, running, now, rules.orphan_grace)], now)
    lines = [f"base {entry.id}  {entry.stop_time:%Y-%m-%d %H:%M:%S}  {decision.text}" for entry, decision in decisions]
    lines += _wal_lines(old_wal, locked_wal, state, cutoff)
    lines += [f"orphan  {info.key}  delete: no manifest, older than orphan_grace "
              f"{format_duration(rules.orphan_grace)}" for info in orphans]
    lines += [f"orphan  {info.key}  keep: object locked until {isoformat(until)}" for info, until in locked_orphans]
    lines += [verdict.line(now) for verdict in pending]
    if not dry_run:
        for entry in doomed:
            _delete_base(store, entry)
        for item in old_wal:
            store.delete(item.key)
        for info in orphans:
            if store.head(base_manifest_key(base_id_of(info.key) or "-")) is None:
                store.delete(info.key)
        abort_uploads(store, pending)
    return _result(policy, dry_run, kept, doomed, old_wal, orphans, pending, lines, decisions)


def _running(key: str, running: set[str]) -> str | None:
    backup_id = base_id_of(key)
    return f"base backup {backup_id} is running (its lease is live)" if backup_id in running else None


def _orphan_removable(info: ObjectInfo, running: set[str], now: datetime, grace: Any) -> bool:
    return _running(info.key, running) is None and info.modified < now - grace


def _decisions(state: PitrState, rules: dict[str, int], now: datetime,
               min_keep: int) -> list[tuple[BaseBackup, RotationDecision]]:
    entries = {entry.id: entry for entry in state.bases.backups}
    records = [Record(entry.id, entry.stop_time, entry.verified == "yes") for entry in state.bases.backups]
    decisions = decide(records, rules, now, min_keep=min_keep)
    restorable = [span.base.id for span in state.window.spans if span.restorable]
    newest_restorable = max(restorable, key=lambda backup_id: (entries[backup_id].stop_time, backup_id), default=None)
    adjusted = []
    for decision in decisions:
        if decision.record.id == newest_restorable and not decision.keep:
            decision = RotationDecision(decision.record, True, ("newest restorable base backup (its WAL is complete)",))
        adjusted.append((entries[decision.record.id], decision))
    if not any(decision.keep for _, decision in adjusted):
        raise TaskFailed("refusing to prune: the retention rules would delete every base backup (a bug; nothing deleted)")
    return adjusted


def _unless_locked(store: Store, entry: BaseBackup, decision: RotationDecision, now: datetime) -> RotationDecision:
    """A base backup the rules would delete stays while any of its objects is locked: prune never tries early."""
    if decision.keep:
        return decision
    until = locked_until(store, sorted({base_manifest_key(entry.id), *entry.object_keys,
                                        *(info.key for info in entry.stored)}), now)
    if until is None:
        return decision
    return replace(decision, keep=True, reasons=(f"object locked until {isoformat(until)} (retention alone would "
                                                 f"delete it: {', '.join(decision.reasons)})",))


LockedWal = tuple[list[StoredWal], datetime] | None


def _deletable_wal(store: Store, old_wal: list[StoredWal], segment_size: int,
                   now: datetime) -> tuple[list[StoredWal], LockedWal]:
    """Of the WAL older than the cutoff, oldest first, what precedes the first locked file; that file and every
    later one stay (with that file's retain-until date), so no gap opens in what remains."""
    ordered = sorted(old_wal, key=lambda item: (item.file.segno(segment_size), item.file.timeline, item.completed))
    for index, item in enumerate(ordered):
        until = locked_until(store, [item.key], now)
        if until is not None:
            return ordered[:index], (ordered[index:], until)
    return ordered, None


def _unlocked(store: Store, infos: list[ObjectInfo],
              now: datetime) -> tuple[list[ObjectInfo], list[tuple[ObjectInfo, datetime]]]:
    free, locked = [], []
    for info in infos:
        until = locked_until(store, [info.key], now)
        if until is None:
            free.append(info)
        else:
            locked.append((info, until))
    return free, locked


def _wal_lines(old_wal: list[StoredWal], locked: LockedWal, state: PitrState, cutoff: int) -> list[str]:
    lines = []
    if old_wal:
        names = sorted(item.name for item in old_wal)
        lines.append(f"wal  {len(old_wal)} file(s) {names[0]} .. {names[-1]}  delete: older than the oldest kept base "
                     f"backup's start segment (of {len(state.wal)} stored)")
    if locked is not None:
        names = sorted(item.name for item in locked[0])
        lines.append(f"wal  {len(names)} file(s) {names[0]} .. {names[-1]}  keep: object locked until "
                     f"{isoformat(locked[1])} (older than the oldest kept base backup's start segment; the WAL "
                     "after a locked file stays too, so no gap opens)")
    return lines or [f"wal  nothing older than segment {cutoff:X} (the oldest kept base backup's start)"]


def _delete_base(store: Store, entry: BaseBackup) -> None:
    """Manifest first: from then on the rest is an orphan at worst, never a broken base backup."""
    store.delete(base_manifest_key(entry.id))
    prefix = base_prefix(entry.id)
    for key in sorted({info.key for info in entry.stored} | set(entry.object_keys)):
        if key.startswith(prefix) and key != base_manifest_key(entry.id):
            store.delete(key)
    logger.info("prune.base_deleted", extra=log.fields(base_backup=entry.id))


def _result(policy: Policy, dry_run: bool, kept: list[BaseBackup], doomed: list[BaseBackup], old_wal: list[StoredWal],
            orphans: list[ObjectInfo], pending: list[UploadVerdict], lines: list[str],
            decisions: list[tuple[BaseBackup, RotationDecision]]) -> TaskResult:
    freed = sum(entry.size for entry in doomed) + sum(item.size for item in old_wal)
    verb = "would delete" if dry_run else "deleted"
    summary = (f"{'dry run: ' if dry_run else ''}{policy.name}: kept {len(kept)} base backup(s), {verb} {len(doomed)} "
               f"and {len(old_wal)} WAL file(s) ({freed / 2**20:.1f} MiB)")
    logger.info("prune.pitr_done", extra=log.fields(policy=policy.name, dry_run=dry_run, kept=len(kept),
                                                    deleted=len(doomed), wal_deleted=len(old_wal)))
    data = {"dry_run": dry_run,
            "decisions": [{"id": entry.id, "keep": decision.keep, "reasons": list(decision.reasons)}
                          for entry, decision in decisions],
            "wal_deleted": [item.key for item in old_wal], "orphans": [info.key for info in orphans],
            "pending": [verdict.to_json() for verdict in pending]}
    metrics = {"kept": float(len(kept)), "deleted": float(0 if dry_run else len(doomed)),
               "wal_deleted": float(0 if dry_run else len(old_wal)), "bytes_freed": float(0 if dry_run else freed)}
    return TaskResult(policy=policy.name or "", task="prune", summary=summary, lines=lines, data=data, metrics=metrics)
