"""``archiver archive``: export every due range that has no archive holding its rows yet.

For each table of the policy: discover chunks/partitions, read the table's cold catalog, clean up
what killed runs left, decide per due range (decide.archive_decision), then export the chosen
ones, ``parallel`` at a time. Each export is streamed, read back from the store and verified
before its manifest is written, last. A range is identified by its time range and space
partition, not by its chunk's name, so a chunk re-created for the same range (by a late row or
by restore-archive) finds the same archive.

A new version never holds fewer rows than the one it replaces: late rows into a range whose
archived rows are no longer all in the database (dropped, or only partly restored) are *merged*
with them; rows deleted from an archived range are held back until the operator accepts the
deletion (``--accept-deletes``). Each version has its own object key; writing its manifest
switches readers over, and the superseded object is deleted right after.
"""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .. import __version__
from ..common.progress import NULL_PROGRESS, Progress
from ..common.result import TaskResult
from ..common.timeutil import format_bytes, isoformat, utcnow
from ..errors import ArchiverError, VerificationFailed
from ..pg.arrow import READ_LOCK_TIMEOUT_MS, ArrowConnections
from ..pg.catalog import current_database, relation_sizes
from ..pg.connect import LockTimeout, Session, session
from ..policy.schema import ArchiveConfig, Policy, StorageConfig
from ..storage.backends import open_store
from ..storage.base import Store
from ..storage.documents import FORMAT_VERSION
from . import chunks, layout, merge, migrate, parquet
from . import decisions as decide
from .catalog import Archived, TableCatalog, load_table_catalog
from .chunks import Chunk, TableInfo
from .decisions import Decision
from .export import ExportResult, Target, Unrepresentable, export_chunk
from .fingerprint import time_display
from .identity import Identity, bound_json
from .manifest import ARCHIVE_KIND, LoadedManifest, supersedes_json, switch_version
from .rangefacts import accept_command, accepts, gather
from .shard import Shard
from .steps import ColdTierFailed, MiB, archive_section, clean_table, finish, record, select_tables


@dataclass
class ExportJob:
    info: TableInfo
    identity: Identity
    chunk: Chunk | None  # None: a merge of archives whose range is no longer in the database
    manifest_key: str
    version: int
    replaces: list[LoadedManifest]
    reason: str
    kind: str  # export or merge
    size_hint: int = 0
    merge_documents: list[dict[str, Any]] = field(default_factory=list)

    @property
    def subject(self) -> str:
        return self.chunk.display if self.chunk else self.identity.describe()


@dataclass(frozen=True)
class ArchiveOptions:
    dry_run: bool = False  # print the decisions, change nothing
    table: str | None = None  # only this table (schema.table, as the policy lists it)
    accept_deletes: tuple[str, ...] = ()  # ranges whose deleted rows are deleted on purpose (--accept-deletes)
    migrate_layout: bool = False  # only move archives of an earlier layout to today's (--migrate-layout)
    shard: tuple[int, int] | None = None  # (K, N): only the ranges of shard K of N (--shard K/N)


def archive_task(policy: Policy, options: ArchiveOptions, store: Store, progress: Progress) -> TaskResult:
    """The archive task (:data:`archiver.tasks.ARCHIVE`).

    The runner's store is not handed over: the archive opens its own, with the upload budget
    shared by its parallel exports.
    """
    return run_archive(policy, dry_run=options.dry_run, table=options.table, progress=progress,
                       accept_deletes=list(options.accept_deletes), migrate_only=options.migrate_layout,
                       shard=Shard(*options.shard) if options.shard else None)


def run_archive(policy: Policy, *, dry_run: bool = False, table: str | None = None, now: datetime | None = None,
                store: Store | None = None, progress: Progress = NULL_PROGRESS,
                accept_deletes: list[str] | None = None, migrate_only: bool = False,
                shard: Shard | None = None) -> TaskResult:
    """Export due ranges of the policy's tables (or only ``table``) to verified Parquet archives, and
    move archives of an earlier layout to today's (``migrate_only``: only that). With ``shard``,
    only the ranges of that shard (see archiver.coldtier.shard)."""
    config = archive_section(policy)
    tables = select_tables(config, table)
    dsn = policy.database.resolved_dsn()
    store = store or open_store(_shared_upload_budget(policy.storage, config.parallel))
    moment = now or utcnow()
    started = time.monotonic()
    decisions: list[Decision] = []
    jobs: list[ExportJob] = []
    pending: list[migrate.Move] = []
    with session(dsn, connect_timeout=policy.database.connect_timeout) as current:
        database = current_database(current)
        for info in [chunks.discover(current, entry) for entry in tables]:
            catalog = load_table_catalog(store, database, info)
            if shard is not None:
                info, catalog = _shard_of(info, catalog, shard)
            clean_table(store, catalog, decisions, task="archive", dry_run=dry_run, shard=shard)
            planned = [] if migrate_only else _plan_table(current, dsn, store, database, info, catalog, moment, config,
                                                          decisions, accept_deletes or [], policy.name or "")
            jobs += planned
            pending += migrate.moves(info, catalog, decisions, skip={job.identity.stem for job in planned})
    _unused_acceptances(accept_deletes or [], decisions)
    results: list[ExportResult] = []
    if not dry_run and jobs:
        results = _run_exports(dsn, store, database, policy, config, jobs, decisions, progress)
    moved = migrate.migrate(store, database, pending, decisions, dry_run=dry_run, settings=_writer_settings(config))
    return _result(policy, decisions, results, jobs, dry_run=dry_run, seconds=time.monotonic() - started,
                   moved=moved, migrate_only=migrate_only)


def _shard_of(info: TableInfo, catalog: TableCatalog, shard: Shard) -> tuple[TableInfo, TableCatalog]:
    """The table as one shard sees it: its chunks and archived ranges only."""
    mine = dataclasses.replace(info, chunks=[chunk for chunk in info.chunks if shard.holds(info.identity(chunk).stem)])
    catalog.archived = {stem: archived for stem, archived in catalog.archived.items() if shard.holds(stem)}
    catalog.rehydrated = {stem: record for stem, record in catalog.rehydrated.items() if shard.holds(stem)}
    return mine, catalog


def _shared_upload_budget(storage: StorageConfig, parallel: int) -> StorageConfig:
    """``upload_concurrency`` bounds the parts in flight (and their memory) for the whole run, so
    parallel exports share it rather than multiply it."""
    return dataclasses.replace(storage, upload_concurrency=max(1, storage.upload_concurrency // parallel))


def _plan_table(current: Session, dsn: str, store: Store, database: str, info: TableInfo, catalog: TableCatalog,
                now: datetime, config: ArchiveConfig, decisions: list[Decision],
                accept_deletes: list[str], policy: str) -> list[ExportJob]:
    for note in info.notes:
        record(decisions, Decision("archive", info.display, "", "note", note), "archive.note")
    boundary = chunks.cutoff(chunks.table_now(current, info, now), info.config.archive_after, info.config.time_unit)
    due = chunks.due(info.chunks, boundary)
    jobs = []
    for chunk in due:
        identity = info.identity(chunk)
        facts, archived = gather(current, dsn, store, info, chunk, catalog, check_rows=config.late_data_check,
                                 accept_deletes=accepts(accept_deletes, chunk, identity))
        action, reason = decide.archive_decision(facts, late_data_check=config.late_data_check,
                                                   accept_command=accept_command(policy, info, identity))
        record(decisions, Decision("archive", info.display, chunk.display, action, reason, *_span(chunk)),
               "archive.decision")
        if action in (decide.EXPORT, decide.MERGE):
            jobs.append(_job(current, database, info, identity, chunk, archived, action, reason))
    present = {info.identity(chunk).stem for chunk in info.chunks}
    for archived in catalog.archived.values():
        if archived.duplicates and archived.identity.stem not in present:
            reason = (f"{len(archived.duplicates) + 1} archives claim this range, which is no longer in the database "
                      f"(written by an archiver that keyed archives by chunk name): merging them into "
                      f"v{archived.version + 1}, no row twice")
            record(decisions, Decision("archive", info.display, archived.identity.describe(), decide.MERGE, reason),
                   "archive.decision")
            jobs.append(_job(current, database, info, archived.identity, None, archived, decide.MERGE, reason))
    waiting = len(info.chunks) - len(due)
    if waiting:
        reason = f"{waiting} chunk(s) not due yet (ranges ending after {chunks.show_value(boundary)})"
        record(decisions, Decision("archive", info.display, "", "wait", reason), "archive.waiting")
    sizes = relation_sizes(current, [(job.chunk.schema, job.chunk.name) for job in jobs if job.chunk])
    for job in jobs:
        if job.chunk:
            job.size_hint = sizes.get((job.chunk.schema, job.chunk.name), 0)
    return jobs


def _job(current: Session, database: str, info: TableInfo, identity: Identity, chunk: Chunk | None,
         archived: Archived | None, action: str, reason: str) -> ExportJob:
    version = archived.version + 1 if archived else 1
    replaces = archived.all_manifests if archived else []
    documents = [loaded.document for loaded in replaces if loaded.document is not None]
    return ExportJob(info, identity, chunk, chunks.manifest_key(database, info, identity), version, replaces, reason,
                     action, merge_documents=documents if action == decide.MERGE else [])


def _span(chunk: Chunk) -> tuple[str, str]:
    """A chunk's range for summary lines (integer time as its integer)."""
    return chunks.show_value(chunk.start), chunks.show_value(chunk.end)


def _unused_acceptances(accept_deletes: list[str], decisions: list[Decision]) -> None:
    """An --accept-deletes value that names no range is a mistake worth saying (it changed nothing)."""
    for value in accept_deletes:
        if not any(value in decision.subject or value in decision.reason for decision in decisions):
            record(decisions, Decision("archive", "", value, "note",
                                       "--accept-deletes names no range of this run (give START/END as printed in "
                                       "the hold line, or the chunk's name)"), "archive.accept_deletes.unused")


def _run_exports(dsn: str, store: Store, database: str, policy: Policy, config: ArchiveConfig, jobs: list[ExportJob],
                 decisions: list[Decision], progress: Progress) -> list[ExportResult]:
    settings = _writer_settings(config)
    results: list[ExportResult] = []
    progress.phase("archive", total=len(jobs), unit="chunks")
    with ArrowConnections(dsn) as connections, \
            ThreadPoolExecutor(max_workers=config.parallel, thread_name_prefix="archiver-export") as pool:
        futures = {pool.submit(_export_one, dsn, store, database, policy, job, settings, connections): job
                   for job in jobs}
        try:
            for future in as_completed(futures):
                _collect(future, futures[future], results, decisions)
                progress.advance(1)
        except BaseException:  # a bug or an interrupt: start nothing new, let it surface
            for future in futures:
                future.cancel()
            raise
    progress.done()
    return results


def _writer_settings(config: ArchiveConfig) -> parquet.WriterSettings:
    return parquet.WriterSettings(zstd_level=config.zstd_level, row_group_rows=config.row_group_rows,
                                  row_group_bytes=config.row_group_mib * MiB // config.parallel)


def _collect(future: Future[ExportResult], job: ExportJob, results: list[ExportResult],
             decisions: list[Decision]) -> None:
    """One finished export as a decision line; errors of the task's own kinds do not stop the others."""
    where = (job.info.display, job.subject)
    try:
        outcome = future.result()
    except Unrepresentable as exc:
        record(decisions, Decision("archive", *where, decide.HOLD, f"not archived: {'; '.join(exc.problems)} "
                                                                     f"({exc.hint})"), "archive.chunk.held_back")
        return
    except VerificationFailed as exc:
        record(decisions, Decision("archive", *where, "mismatch", exc.message), "archive.chunk.verification_failed")
        return
    except LockTimeout:
        record(decisions, Decision("archive", *where, decide.HOLD,
                                   f"busy: no lock on the chunk within {READ_LOCK_TIMEOUT_MS // 1000} s (another "
                                   "session, e.g. a TimescaleDB job, is waiting to change it); the next run tries "
                                   "again"), "archive.chunk.held_back")
        return
    except ArchiverError as exc:
        record(decisions, Decision("archive", *where, decide.FAIL, str(exc)), "archive.chunk.failed")
        return
    results.append(outcome)
    verb = "merged" if job.kind == decide.MERGE else "exported"
    record(decisions, Decision("archive", *where, verb,
                               f"v{job.version}: {outcome.fingerprint.rows} rows, {format_bytes(outcome.size)}, "
                               f"verified, {outcome.describe()}"), f"archive.chunk.{verb}")


def _export_one(dsn: str, store: Store, database: str, policy: Policy, job: ExportJob,
                settings: parquet.WriterSettings, connections: ArrowConnections) -> ExportResult:
    if job.kind == decide.MERGE:
        source = merge.MergeSource(job.identity, job.chunk, job.merge_documents)
        target = Target(database, job.info, source.as_chunk(job.info), job.version)
        result = merge.export_merged(dsn, store, info=job.info, source=source, target=target, settings=settings,
                                     now=utcnow)
    else:
        assert job.chunk is not None
        target = Target(database, job.info, job.chunk, job.version)
        result = export_chunk(dsn, store, target=target, settings=settings, size_hint=job.size_hint, now=utcnow,
                              connections=connections)
    switch_version(store, job.manifest_key, archive_manifest(policy, database, job, result), job.replaces,
                   result.keys)
    return result


def archive_manifest(policy: Policy, database: str, job: ExportJob, result: ExportResult) -> dict[str, Any]:
    """The archive manifest: what was exported, where, the fingerprint that proves it, what it replaces."""
    info, chunk = job.info, result.chunk
    plans = info.plans()
    time_kind = next(plan.kind for plan in plans if plan.name == info.time_column)
    unit = info.config.time_unit
    return {
        "format_version": FORMAT_VERSION,
        "kind": ARCHIVE_KIND,
        "version": job.version,
        "policy": policy.name,
        "database": database,
        "table": info.display,
        "table_kind": info.kind,
        "identity": job.identity.to_json(),
        "chunk": {"schema": chunk.schema, "name": chunk.name, "compressed": chunk.compressed,
                  "in_database": job.chunk is not None},
        "time_column": info.time_column,
        "time_type": info.time_type,
        "time_unit": unit if info.is_integer else None,
        "range": {"start": bound_json(job.identity.start), "end": bound_json(job.identity.end),
                  "start_utc": _range_utc(job.identity.start, unit), "end_utc": _range_utc(job.identity.end, unit)},
        "rows": result.fingerprint.rows,
        "min_time": time_display(result.fingerprint.time_min, time_kind),
        "max_time": time_display(result.fingerprint.time_max, time_kind),
        "fingerprint": result.fingerprint.to_json(),
        # rows of this version that were not in the database when it was written (kept from
        # earlier versions): the database may lack that many without anything being deleted
        "archived_only_rows": result.archived_only_rows,
        **({"database_fingerprint": result.database_fingerprint.to_json()} if result.database_fingerprint else {}),
        "layout": layout.layout_json(info.config.partition_key),
        "objects": [piece.to_json() for piece in result.pieces],
        "parquet": {**result.parquet_json(), "profile": info.config.profile,
                    "columns": [plan.to_json() for plan in plans]},
        "change": {"kind": job.kind, "reason": job.reason},
        "supersedes": supersedes_json(job.replaces),
        "exported_at": isoformat(result.exported_at),
        "verified_at": isoformat(result.verified_at),
        "seconds": round(result.seconds, 3),
        "archiver_version": __version__,
    }


def _range_utc(value: chunks.TimeValue | None, time_unit: str | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, int):
        return isoformat(chunks.integer_to_datetime(value, time_unit or "s"))
    return isoformat(value)


def _result(policy: Policy, decisions: list[Decision], results: list[ExportResult], jobs: list[ExportJob], *,
            dry_run: bool, seconds: float, moved: int = 0, migrate_only: bool = False) -> TaskResult:
    count = {action: sum(1 for d in decisions if d.action == action)
             for action in ("skip", "hold", "fail", "mismatch", "export", "merge", decide.MOVE)}
    rows = sum(r.fingerprint.rows for r in results)
    size = sum(r.size for r in results)
    metrics: dict[str, float] = {
        "chunks_archived": len(results), "chunks_skipped": count["skip"], "chunks_held_back": count["hold"],
        "chunks_failed": count["fail"], "chunks_mismatched": count["mismatch"], "rows": rows, "bytes": size,
        "source_bytes": sum(job.size_hint for job in jobs if any(r.chunk == job.chunk for r in results)),
        "duration_seconds": seconds, "rows_per_second": rows / seconds if seconds > 0 else 0.0, "archives_moved": moved,
    }
    result = TaskResult(policy=policy.name or "", task="archive")
    if migrate_only:
        result.summary = (f"dry run: would move {count[decide.MOVE]} archive(s) to the current layout" if dry_run else
                          f"moved {moved} archive(s) to the current layout") + f", held back {count['hold']}"
    elif dry_run:
        result.summary = (f"dry run: would export {count['export']} chunk(s)"
                          + (f", merge {count['merge']}" if count["merge"] else "") + f", skip {count['skip']}"
                          + (f", move {count[decide.MOVE]} archive(s) to the current layout" if count[decide.MOVE]
                             else ""))
    else:
        result.summary = (f"archived {len(results)} chunk(s) ({rows:,} rows, {format_bytes(size)}), "
                          f"skipped {count['skip']}, held back {count['hold']}"
                          + (f", moved {moved} archive(s) to the current layout" if moved else ""))
    if count["mismatch"]:
        result.status = "verification_failed"
        result.summary += f"; {count['mismatch']} failed verification"
    elif count["hold"]:
        result.status = "held_back"
    finish(result, decisions, dry_run=dry_run, metrics=metrics, event="archive.done")
    if count["fail"]:
        raise ColdTierFailed(f"archive of policy {policy.name!r}: {count['fail']} chunk(s) failed:\n"
                             + "\n".join(d.line() for d in decisions if d.action == "fail"), result)
    return result
