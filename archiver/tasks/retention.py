"""``archiver retention``: drop chunks past drop_after whose archive is verified; expire cold files.

A chunk is dropped only inside a transaction that first locks it against writes (readers carry
on), recomputes its fingerprint and finds it equal to the one in its archive manifest, after the
stored object itself was re-checked (exists, size, ETag or SHA-256, Parquet footer). Anything
else is kept and reported, and the task ends "held back" (exit 5).

TimescaleDB: one ``drop_chunks(older_than => ...)`` when every chunk it would drop is verified,
otherwise ``_timescaledb_functions.drop_chunk`` one chunk at a time. Native partitions: DETACH
then DROP. Cold files expire manifest first, then data.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from .. import chunks, coldplan, db, manifest
from ..chunks import Chunk, TableInfo, key_part
from ..coldplan import DROP, EXPIRE, HOLD, REFUSE, Decision
from ..export import check_object, database_fingerprint
from ..fingerprint import Fingerprint
from ..policy import ArchiveConfig, Policy
from ..progress import NULL_PROGRESS, Progress
from ..storage import Store, open_store
from ..timeutil import format_duration, utcnow
from . import TaskResult
from .coldtier import archive_section, catalog_prefix, finish, record

LOCK_TIMEOUT_MS = 10_000
ORPHAN_GRACE = timedelta(days=1)
ORPHAN_LIMIT = 10  # more unreferenced objects than this (and than 10% of the archive): refuse to sweep
DROP_CHUNK_FUNCTION = "_timescaledb_functions.drop_chunk(regclass)"


class _Changed(Exception):
    def __init__(self, chunk: Chunk, changes: list[str]) -> None:
        super().__init__(f"{chunk.display}: {'; '.join(changes[:2])}")
        self.chunk = chunk
        self.changes = changes


@dataclass
class _Verified:
    chunk: Chunk
    document: dict[str, Any] | None  # None when require_archive is off
    reason: str


@dataclass
class _Counts:
    dropped: int = 0
    expired: int = 0
    orphans: int = 0


def run_retention(policy: Policy, *, dry_run: bool = False, now: datetime | None = None, store: Store | None = None,
                  progress: Progress = NULL_PROGRESS) -> TaskResult:
    """Drop verified chunks past drop_after and expire cold files past cold_retention."""
    config = archive_section(policy)
    dsn = policy.database.resolved_dsn()
    store = store or open_store(policy.storage)
    moment = now or utcnow()
    started = time.monotonic()
    decisions: list[Decision] = []
    counts = _Counts()
    with db.session(dsn, connect_timeout=policy.database.connect_timeout) as current:
        database = db.current_database(current)
        infos = [chunks.discover(current, entry) for entry in config.tables]
        progress.phase("retention", total=len(infos), unit="tables")
        for info in infos:
            counts.dropped += _retain_table(current, store, database, info, config, moment, decisions, dry_run)
            progress.advance(1)
        progress.done()
        _expire_cold_files(current, store, database, config, moment, decisions, dry_run, counts)
        _sweep_orphans(store, database, moment, decisions, dry_run, counts)
    return _result(policy, decisions, counts, dry_run=dry_run, seconds=time.monotonic() - started)


# --------------------------------------------------------------------------------------------
# Dropping chunks


def _retain_table(current: db.Session, store: Store, database: str, info: TableInfo, config: ArchiveConfig,
                  now: datetime, decisions: list[Decision], dry_run: bool) -> int:
    table = info.config
    if table.drop_after is None:
        record(decisions, Decision("retention", info.display, "", "keep", "no drop_after: chunks stay in the database"),
               "retention.table")
        return 0
    unit = table.time_unit
    boundary = chunks.cutoff(chunks.table_now(current, info, now), table.drop_after, unit)
    candidates = chunks.due(info.chunks, boundary)
    if info.kind == chunks.HYPERTABLE and _timescaledb_guards(current, info, config, candidates, decisions):
        return 0
    if not candidates:
        record(decisions, Decision("retention", info.display, "", "keep",
                                   f"no chunk wholly older than drop_after ({format_duration(table.drop_after)}, "
                                   f"boundary {chunks.show_value(boundary)})"), "retention.table")
        return 0
    manifests = manifest.list_archive_manifests(store, catalog_prefix(database, info))
    verified: list[_Verified] = []
    for chunk in candidates:
        loaded = manifests.get(chunks.manifest_key(database, info, chunk))
        document = loaded.document if loaded else None
        problem = check_object(store, document, footer=True) if table.require_archive and document else None
        changes = None
        if dry_run and table.require_archive and document and not problem:
            changes = _changes(current, info, chunk, document)
        action, reason = coldplan.retention_decision(loaded, problem, changes, require_archive=table.require_archive)
        if action == HOLD or dry_run:
            record(decisions, Decision("retention", info.display, chunk.display, action, reason), "retention.decision")
        else:
            verified.append(_Verified(chunk, document if table.require_archive else None, reason))
    if dry_run or not verified:
        return 0
    if info.kind == chunks.HYPERTABLE and len(verified) == len(candidates):
        dropped = _drop_all_at_once(current, info, verified, decisions)
        if dropped is not None:
            return dropped
    return sum(_drop_one(current, info, item, decisions) for item in verified)


def _timescaledb_guards(current: db.Session, info: TableInfo, config: ArchiveConfig, candidates: list[Chunk],
                        decisions: list[Decision]) -> bool:
    """Warn about or refuse next to TimescaleDB's own retention job; warn about caggs. True: refuse."""
    table = info.config
    assert table.drop_after is not None
    unit = table.time_unit
    archive_units = chunks.duration_in_units(table.archive_after, unit) if info.is_integer and unit else None
    drop_units = chunks.duration_in_units(table.drop_after, unit) if info.is_integer and unit else None
    verdict = coldplan.retention_job_verdict(db.retention_jobs(current, info.schema, info.name),
                                             allowed=config.allow_timescaledb_retention_policy,
                                             archive_after=table.archive_after, archive_after_units=archive_units)
    if verdict is not None:
        record(decisions, Decision("retention", info.display, "", verdict[0], verdict[1]), "retention.timescaledb_job")
    for warning in coldplan.cagg_warnings(db.cagg_refresh_jobs(current, info.schema, info.name),
                                          drop_after=table.drop_after, drop_after_units=drop_units):
        record(decisions, Decision("retention", info.display, "", "warn", warning), "retention.cagg")
    if verdict is not None and verdict[0] == REFUSE:
        for chunk in candidates:
            record(decisions, Decision("retention", info.display, chunk.display, HOLD,
                                       "not dropped: a TimescaleDB retention job is active on this hypertable"),
                   "retention.decision")
        return True
    return False


def _changes(current: db.Session, info: TableInfo, chunk: Chunk, document: dict[str, Any]) -> list[str]:
    stored = Fingerprint.from_json(document["fingerprint"])
    return stored.differences(database_fingerprint(current, chunk, info.plans(), info.time_column),
                              mine="archive", theirs="database")


def _recheck(current: db.Session, info: TableInfo, item: _Verified) -> None:
    """Under the lock, right before the drop: the rows must still be the archived ones."""
    if item.document is None:
        return
    changes = _changes(current, info, item.chunk, item.document)
    if changes:
        raise _Changed(item.chunk, changes)


def _drop_all_at_once(current: db.Session, info: TableInfo, verified: list[_Verified],
                      decisions: list[Decision]) -> int | None:
    """One drop_chunks() call when it would drop exactly the verified chunks; None: go one by one."""
    boundary = max(item.chunk.end for item in verified)  # type: ignore[type-var]
    expected = {item.chunk.display for item in verified}
    try:
        with current.transaction():
            db.lock_relations(current, [item.chunk.relation for item in verified], mode="EXCLUSIVE",
                              timeout_ms=LOCK_TIMEOUT_MS)
            for item in verified:
                _recheck(current, info, item)
            dropped = {name.replace('"', "") for name in
                       db.drop_chunks_older_than(current, info.schema, info.name, boundary, info.time_sql_type)}
            if dropped != expected:
                raise _Changed(verified[0].chunk, [f"drop_chunks would drop {sorted(dropped)}, verified were "
                                                   f"{sorted(expected)}"])
    except (_Changed, db.LockTimeout) as exc:
        record(decisions, Decision("retention", info.display, "", "note",
                                   f"drop_chunks not used ({exc}); dropping chunk by chunk"), "retention.bulk_skipped")
        return None
    for item in verified:
        record(decisions, Decision("retention", info.display, item.chunk.display, "dropped",
                                   f"{item.reason} (drop_chunks older_than {chunks.show_value(boundary)})"),
               "retention.chunk.dropped")
    return len(verified)


def _drop_one(current: db.Session, info: TableInfo, item: _Verified, decisions: list[Decision]) -> int:
    chunk = item.chunk
    if info.kind == chunks.HYPERTABLE and not db.timescaledb_function_exists(current, DROP_CHUNK_FUNCTION):
        record(decisions, Decision("retention", info.display, chunk.display, HOLD,
                                   f"this TimescaleDB has no {DROP_CHUNK_FUNCTION} to drop a single chunk safely"),
               "retention.decision")
        return 0
    try:
        with current.transaction():
            db.lock_relations(current, [chunk.relation], mode="EXCLUSIVE", timeout_ms=LOCK_TIMEOUT_MS)
            _recheck(current, info, item)
            if info.kind == chunks.HYPERTABLE:
                db.drop_timescaledb_chunk(current, chunk.schema, chunk.name)
            else:
                db.detach_and_drop_partition(current, info.schema, info.name, chunk.schema, chunk.name)
    except _Changed as exc:
        record(decisions, Decision("retention", info.display, chunk.display, HOLD,
                                   f"rows changed since it was archived ({'; '.join(exc.changes[:2])}); run "
                                   "`archiver archive` to export them first"), "retention.decision")
        return 0
    except db.LockTimeout:
        record(decisions, Decision("retention", info.display, chunk.display, HOLD,
                                   f"busy: no lock within {LOCK_TIMEOUT_MS // 1000} s; the next run tries again"),
               "retention.decision")
        return 0
    record(decisions, Decision("retention", info.display, chunk.display, "dropped", item.reason),
           "retention.chunk.dropped")
    return 1


# --------------------------------------------------------------------------------------------
# Cold files


def _expire_cold_files(current: db.Session, store: Store, database: str, config: ArchiveConfig, now: datetime,
                       decisions: list[Decision], dry_run: bool, counts: _Counts) -> None:
    if config.cold_retention is None:
        return
    cold_cutoff = now - config.cold_retention
    for key, loaded in sorted(manifest.list_archive_manifests(store, catalog_prefix(database)).items()):
        document = loaded.document
        exists = bool(document) and db.relation_exists(current, document["chunk"]["schema"],  # type: ignore[index]
                                                       document["chunk"]["name"])  # type: ignore[index]
        verdict = coldplan.expiry_decision(loaded, cold_cutoff, chunk_exists=exists,
                                           cold_retention=config.cold_retention)
        if verdict is None:
            continue
        action, reason = verdict
        table = document["table"] if document else "?"
        subject = f"{document['chunk']['schema']}.{document['chunk']['name']}" if document else key
        if action == EXPIRE and not dry_run:
            store.delete(key)  # manifest first: from here on the file is no archive
            store.delete(document["object"]["key"])  # type: ignore[index]
            counts.expired += 1
            action, reason = "expired", f"{reason}; removed {document['object']['key']}"  # type: ignore[index]
        record(decisions, Decision("expiry", table, subject, action, reason), "retention.expiry")


def _sweep_orphans(store: Store, database: str, now: datetime, decisions: list[Decision], dry_run: bool,
                   counts: _Counts) -> None:
    """Remove Parquet objects no manifest references (left by exports killed before their manifest)."""
    manifests = manifest.list_archive_manifests(store, catalog_prefix(database))
    if any(loaded.document is None for loaded in manifests.values()):
        record(decisions, Decision("expiry", "", "", "keep", "orphan sweep skipped: an archive manifest is unreadable, "
                                                             "so what it references is unknown"), "retention.orphans")
        return
    referenced = {loaded.data_key for loaded in manifests.values()}
    orphans = [info for info in store.list(f"archive/{key_part(database)}/")
               if info.key.endswith(".parquet") and info.key not in referenced]
    if not orphans:
        return
    if not referenced:
        record(decisions, Decision("expiry", "", "", HOLD,
                                   f"{len(orphans)} Parquet object(s) under archive/ but no archive manifest at all: "
                                   "they cannot be told apart from archives whose catalog/ was lost, so none is "
                                   "deleted (the next archive run replaces those of chunks still in the database)"),
               "retention.orphans")
        return
    if len(orphans) > max(ORPHAN_LIMIT, len(referenced) // 10):
        record(decisions, Decision("expiry", "", "", HOLD,
                                   f"{len(orphans)} Parquet object(s) under archive/ have no manifest, against "
                                   f"{len(referenced)} archived; not deleting that many - check the catalog/ prefix"),
               "retention.orphans")
        return
    for info in orphans:
        action, reason = coldplan.orphan_decision(info.modified, now, ORPHAN_GRACE)
        if action == EXPIRE and not dry_run:
            store.delete(info.key)
            counts.orphans += 1
            action = "removed"
        record(decisions, Decision("expiry", "", info.key, action, reason), "retention.orphan")


def _result(policy: Policy, decisions: list[Decision], counts: _Counts, *, dry_run: bool, seconds: float) -> TaskResult:
    held = sum(1 for d in decisions if d.action == HOLD)
    refused = any(d.action == REFUSE for d in decisions)
    would_drop = sum(1 for d in decisions if d.action == DROP)
    would_expire = sum(1 for d in decisions if d.action == EXPIRE)
    result = TaskResult(policy=policy.name or "", task="retention")
    if dry_run:
        result.summary = (f"dry run: would drop {would_drop} chunk(s), hold back {held}, expire {would_expire} cold "
                          "file(s)")
    else:
        result.summary = (f"dropped {counts.dropped} chunk(s), held back {held}, expired {counts.expired} cold "
                          f"file(s)" + (f", removed {counts.orphans} orphan(s)" if counts.orphans else ""))
    if held or refused:
        result.status = "held_back"
    metrics: dict[str, float] = {"chunks_dropped": counts.dropped, "chunks_held_back": held,
                                 "cold_files_expired": counts.expired, "orphans_removed": counts.orphans,
                                 "seconds": seconds}
    return finish(result, decisions, dry_run=dry_run, metrics=metrics, event="retention.done")
