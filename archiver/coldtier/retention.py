"""``archiver retention``: drop ranges past drop_after whose archive holds every row; expire cold files.

A range is dropped only inside a transaction that first locks it against writes (readers carry
on) and then proves, right there, that its archive holds every row it has: the fingerprint
equals the archived one, or (for a range brought back by restore-archive) a row-by-row
comparison finds no row the archive lacks. Before that, the stored object itself was read back
in full and checked against its manifest and its own embedded metadata. Anything else is kept
and reported, and the task ends "held back" (exit 5).

TimescaleDB: one ``drop_chunks(older_than => ...)`` when every chunk it would drop is proven,
otherwise ``_timescaledb_functions.drop_chunk`` one chunk at a time. Native partitions: DETACH
then DROP. Cold files expire manifest first, then data.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from datetime import datetime

from ..common.progress import NULL_PROGRESS, Progress
from ..common.result import TaskResult
from ..common.timeutil import format_duration, utcnow
from ..pg.catalog import (
    cagg_refresh_jobs,
    current_database,
    detach_and_drop_partition,
    drop_chunks_older_than,
    drop_timescaledb_chunk,
    lock_relations,
    retention_jobs,
    timescaledb_function_exists,
)
from ..pg.connect import LockTimeout, Session, session
from ..policy.schema import ArchiveConfig, Policy
from ..storage.backends import open_store
from ..storage.base import Store
from . import chunks
from . import decisions as decide
from .catalog import TableCatalog, load_table_catalog
from .chunks import Chunk, TableInfo
from .decisions import DROP, HOLD, REFUSE, Decision, RangeFacts
from .expiry import Counts, expire_cold_files
from .identity import show_value
from .rangefacts import accept_command, gather, with_rows
from .steps import archive_section, clean_table, finish, record

LOCK_TIMEOUT_MS = 10_000
DROP_CHUNK_FUNCTION = "_timescaledb_functions.drop_chunk(regclass)"


class _Changed(Exception):
    def __init__(self, chunk: Chunk, reason: str) -> None:
        super().__init__(f"{chunk.display}: {reason}")
        self.chunk = chunk
        self.reason = reason


@dataclass
class _Candidate:
    chunk: Chunk
    facts: RangeFacts
    document: dict[str, object] | None  # None when require_archive is off
    rehydration_key: str | None


@dataclass
class _Table:
    """What dropping the ranges of one table needs."""

    policy: str
    current: Session
    dsn: str
    store: Store
    info: TableInfo
    catalog: TableCatalog
    decisions: list[Decision]
    _drop_chunk: bool | None = None

    def can_drop_one(self) -> bool:
        """Does this TimescaleDB have the function that drops one chunk? (asked once per table)"""
        if self._drop_chunk is None:
            self._drop_chunk = timescaledb_function_exists(self.current, DROP_CHUNK_FUNCTION)
        return self._drop_chunk


@dataclass(frozen=True)
class RetentionOptions:
    dry_run: bool = False  # print the decisions, change nothing


def retention_task(policy: Policy, options: RetentionOptions, store: Store, progress: Progress) -> TaskResult:
    """The retention task (:data:`archiver.tasks.RETENTION`)."""
    return run_retention(policy, dry_run=options.dry_run, store=store, progress=progress)


def run_retention(policy: Policy, *, dry_run: bool = False, now: datetime | None = None, store: Store | None = None,
                  progress: Progress = NULL_PROGRESS) -> TaskResult:
    """Drop proven ranges past drop_after and expire cold files past cold_retention."""
    config = archive_section(policy)
    dsn = policy.database.resolved_dsn()
    store = store or open_store(policy.storage)
    moment = now or utcnow()
    started = time.monotonic()
    decisions: list[Decision] = []
    counts = Counts()
    with session(dsn, connect_timeout=policy.database.connect_timeout) as current:
        database = current_database(current)
        infos = [chunks.discover(current, entry) for entry in config.tables]
        progress.phase("retention", total=len(infos), unit="tables")
        for info in infos:
            catalog = load_table_catalog(store, database, info)
            counts.orphans += clean_table(store, catalog, decisions, task="retention", dry_run=dry_run)
            table = _Table(policy.name or "", current, dsn, store, info, catalog, decisions)
            counts.dropped += _retain_table(table, config, moment, dry_run)
            progress.advance(1)
        progress.done()
        expire_cold_files(current, store, database, config, infos, moment, decisions, dry_run, counts)
    return _result(policy, decisions, counts, dry_run=dry_run, seconds=time.monotonic() - started)


# --------------------------------------------------------------------------------------------
# Dropping ranges


def _retain_table(table: _Table, config: ArchiveConfig, now: datetime, dry_run: bool) -> int:
    info, decisions = table.info, table.decisions
    settings = info.config
    if settings.drop_after is None:
        record(decisions, Decision("retention", info.display, "", "keep", "no drop_after: chunks stay in the database"),
               "retention.table")
        return 0
    boundary = chunks.cutoff(chunks.table_now(table.current, info, now), settings.drop_after, settings.time_unit)
    candidates = chunks.due(info.chunks, boundary)
    if info.kind == chunks.HYPERTABLE and _timescaledb_guards(table.current, info, config, candidates, decisions):
        return 0
    if not candidates:
        record(decisions, Decision("retention", info.display, "", "keep",
                                   f"no chunk wholly older than drop_after ({format_duration(settings.drop_after)}, "
                                   f"boundary {show_value(boundary)})"), "retention.table")
        return 0
    chosen = [candidate for chunk in candidates
              if (candidate := _precheck(table, chunk, dry_run)) is not None]
    if dry_run or not chosen:
        return 0
    if info.kind == chunks.HYPERTABLE and len(chosen) == len(candidates):
        dropped = _drop_all_at_once(table, chosen)
        if dropped is not None:
            return dropped
    return sum(_drop_one(table, candidate) for candidate in chosen)


def _precheck(table: _Table, chunk: Chunk, dry_run: bool) -> _Candidate | None:
    """Everything that can be known before the lock; a dry run also compares the rows and says
    what it would do. Returns the chunk when it may be dropped (the rows are proven under the lock)."""
    info = table.info
    require = info.config.require_archive
    facts, archived = gather(table.current, table.dsn, table.store, info, chunk, table.catalog,
                             check_rows=dry_run and require, thorough=require)
    identity = info.identity(chunk)
    assumed = facts if dry_run or not require else dataclasses.replace(facts, database_matches=True)
    action, reason = decide.retention_decision(assumed, require_archive=require,
                                                 accept_command=accept_command(table.policy, info, identity))
    if action == HOLD or dry_run:
        record(table.decisions, Decision("retention", info.display, chunk.display, action, reason,
                                         show_value(chunk.start), show_value(chunk.end)),
               "retention.decision")
        return None
    rehydration = table.catalog.rehydrated.get(identity.stem)
    return _Candidate(chunk, facts, archived.document if archived and require else None,
                      rehydration.key if rehydration else None)


def _verdict(table: _Table, candidate: _Candidate) -> str:
    """Under the lock, right before the drop: the archive must hold every row the range has.
    The reason to drop, or _Changed with the reason not to."""
    if candidate.document is None:
        return "require_archive is off for this table: dropped without an archive check"
    facts = with_rows(table.current, table.dsn, table.store, table.info, candidate.chunk, candidate.document,
                      candidate.facts)
    identity = table.info.identity(candidate.chunk)
    action, reason = decide.retention_decision(facts, require_archive=True,
                                                 accept_command=accept_command(table.policy, table.info, identity))
    if action != DROP:
        raise _Changed(candidate.chunk, reason)
    return reason


def _timescaledb_guards(current: Session, info: TableInfo, config: ArchiveConfig, candidates: list[Chunk],
                        decisions: list[Decision]) -> bool:
    """Warn about or refuse next to TimescaleDB's own retention job; warn about caggs. True: refuse."""
    table = info.config
    assert table.drop_after is not None
    unit = table.time_unit
    archive_units = chunks.duration_in_units(table.archive_after, unit) if info.is_integer and unit else None
    drop_units = chunks.duration_in_units(table.drop_after, unit) if info.is_integer and unit else None
    verdict = decide.retention_job_verdict(retention_jobs(current, info.schema, info.name),
                                             allowed=config.allow_timescaledb_retention_policy,
                                             archive_after=table.archive_after, archive_after_units=archive_units)
    if verdict is not None:
        record(decisions, Decision("retention", info.display, "", verdict[0], verdict[1]), "retention.timescaledb_job")
    for warning in decide.cagg_warnings(cagg_refresh_jobs(current, info.schema, info.name),
                                          drop_after=table.drop_after, drop_after_units=drop_units):
        record(decisions, Decision("retention", info.display, "", "warn", warning), "retention.cagg")
    if verdict is not None and verdict[0] == REFUSE:
        for chunk in candidates:
            record(decisions, Decision("retention", info.display, chunk.display, HOLD,
                                       "not dropped: a TimescaleDB retention job is active on this hypertable"),
                   "retention.decision")
        return True
    return False


def _forget_rehydrations(table: _Table, dropped: list[_Candidate]) -> None:
    """A range dropped again no longer holds restored rows; its rehydration record goes (after the drop)."""
    for candidate in dropped:
        if candidate.rehydration_key:
            table.store.delete(candidate.rehydration_key)


def _drop_all_at_once(table: _Table, chosen: list[_Candidate]) -> int | None:
    """One drop_chunks() call when it would drop exactly the proven chunks; None: go one by one."""
    info, current = table.info, table.current
    boundary = max(candidate.chunk.end for candidate in chosen)  # type: ignore[type-var]
    expected = {candidate.chunk.display for candidate in chosen}
    try:
        with current.transaction():
            lock_relations(current, [candidate.chunk.relation for candidate in chosen], mode="EXCLUSIVE",
                              timeout_ms=LOCK_TIMEOUT_MS)
            reasons = [_verdict(table, candidate) for candidate in chosen]
            dropped = {name.replace('"', "") for name in
                       drop_chunks_older_than(current, info.schema, info.name, boundary, info.time_sql_type)}
            if dropped != expected:
                raise _Changed(chosen[0].chunk, f"drop_chunks would drop {sorted(dropped)}, proven were "
                                                f"{sorted(expected)}")
    except (_Changed, LockTimeout) as exc:
        record(table.decisions, Decision("retention", info.display, "", "note",
                                         f"drop_chunks not used ({exc}); dropping chunk by chunk"),
               "retention.bulk_skipped")
        return None
    _forget_rehydrations(table, chosen)
    for candidate, reason in zip(chosen, reasons, strict=True):
        record(table.decisions, Decision("retention", info.display, candidate.chunk.display, "dropped",
                                         f"{reason} (drop_chunks older_than {show_value(boundary)})"),
               "retention.chunk.dropped")
    return len(chosen)


def _drop_one(table: _Table, candidate: _Candidate) -> int:
    info, current, chunk = table.info, table.current, candidate.chunk
    if info.kind == chunks.HYPERTABLE and not table.can_drop_one():
        record(table.decisions, Decision("retention", info.display, chunk.display, HOLD,
                                         f"this TimescaleDB has no {DROP_CHUNK_FUNCTION} to drop a single chunk safely"),
               "retention.decision")
        return 0
    try:
        with current.transaction():
            lock_relations(current, [chunk.relation], mode="EXCLUSIVE", timeout_ms=LOCK_TIMEOUT_MS)
            reason = _verdict(table, candidate)
            if info.kind == chunks.HYPERTABLE:
                drop_timescaledb_chunk(current, chunk.schema, chunk.name)
            else:
                detach_and_drop_partition(current, info.schema, info.name, chunk.schema, chunk.name)
    except _Changed as exc:
        record(table.decisions, Decision("retention", info.display, chunk.display, HOLD, exc.reason),
               "retention.decision")
        return 0
    except LockTimeout:
        record(table.decisions, Decision("retention", info.display, chunk.display, HOLD,
                                         f"busy: no lock within {LOCK_TIMEOUT_MS // 1000} s; the next run tries again"),
               "retention.decision")
        return 0
    _forget_rehydrations(table, [candidate])
    record(table.decisions, Decision("retention", info.display, chunk.display, "dropped", reason),
           "retention.chunk.dropped")
    return 1


def _result(policy: Policy, decisions: list[Decision], counts: Counts, *, dry_run: bool, seconds: float) -> TaskResult:
    held = sum(1 for d in decisions if d.action == HOLD)
    refused = any(d.action == REFUSE for d in decisions)
    would_drop = sum(1 for d in decisions if d.action == DROP)
    would_expire = sum(1 for d in decisions if d.action == decide.EXPIRE)
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
                                 "duration_seconds": seconds}
    return finish(result, decisions, dry_run=dry_run, metrics=metrics, event="retention.done")
