"""``archiver archive``: export every due chunk that has no verified archive yet.

For each table of the policy: discover chunks/partitions, decide per due chunk (export, or skip
because a verified archive still matches its rows), then export the chosen ones, ``parallel`` at
a time. Each export is streamed, read back from the store and verified before its manifest is
written, last. A re-export (late data, lost or altered object) replaces the object at the same
key in one atomic put and then the manifest, so a reader listing ``archive/`` never sees two
versions of a chunk.
"""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .. import __version__, chunks, coldplan, db, manifest, parquet
from ..chunks import Chunk, TableInfo
from ..coldplan import Decision
from ..errors import ArchiverError, VerificationFailed
from ..export import ExportResult, Unrepresentable, check_object, database_fingerprint, export_chunk
from ..fingerprint import Fingerprint, time_display
from ..policy import ArchiveConfig, Policy, StorageConfig
from ..progress import NULL_PROGRESS, Progress
from ..storage import Store, open_store
from ..timeutil import format_bytes, isoformat, utcnow
from . import TaskResult
from .coldtier import MiB, ColdTierFailed, archive_section, catalog_prefix, finish, record, select_tables


@dataclass
class ExportJob:
    info: TableInfo
    chunk: Chunk
    key: str
    manifest_key: str
    version: int
    previous: dict[str, Any] | None
    size_hint: int


def run_archive(policy: Policy, *, dry_run: bool = False, table: str | None = None, now: datetime | None = None,
                store: Store | None = None, progress: Progress = NULL_PROGRESS) -> TaskResult:
    """Export due chunks of the policy's tables (or only ``table``) to verified Parquet archives."""
    config = archive_section(policy)
    tables = select_tables(config, table)
    dsn = policy.database.resolved_dsn()
    store = store or open_store(_shared_upload_budget(policy.storage, config.parallel))
    moment = now or utcnow()
    started = time.monotonic()
    decisions: list[Decision] = []
    with db.session(dsn, connect_timeout=policy.database.connect_timeout) as current:
        database = db.current_database(current)
        infos = [chunks.discover(current, entry) for entry in tables]
        jobs = [job for info in infos
                for job in _plan_table(current, store, database, info, moment, config, decisions)]
    results: list[ExportResult] = []
    if not dry_run and jobs:
        results = _run_exports(dsn, store, database, policy, config, jobs, decisions, progress)
    return _result(policy, decisions, results, jobs, dry_run=dry_run, seconds=time.monotonic() - started)


def _shared_upload_budget(storage: StorageConfig, parallel: int) -> StorageConfig:
    """``upload_concurrency`` bounds the parts in flight (and their memory) for the whole run, so
    parallel exports share it rather than multiply it."""
    return dataclasses.replace(storage, upload_concurrency=max(1, storage.upload_concurrency // parallel))


def _plan_table(current: db.Session, store: Store, database: str, info: TableInfo, now: datetime,
                config: ArchiveConfig, decisions: list[Decision]) -> list[ExportJob]:
    for note in info.notes:
        record(decisions, Decision("archive", info.display, "", "note", note), "archive.note")
    boundary = chunks.cutoff(chunks.table_now(current, info, now), info.config.archive_after, info.config.time_unit)
    due = chunks.due(info.chunks, boundary)
    manifests = manifest.list_archive_manifests(store, catalog_prefix(database, info))
    plans = info.plans()
    jobs = []
    for chunk in due:
        manifest_key = chunks.manifest_key(database, info, chunk)
        loaded = manifests.get(manifest_key)
        document = loaded.document if loaded else None
        problem = check_object(store, document) if document else None
        changes = None
        if document and not problem and config.late_data_check:
            stored = Fingerprint.from_json(document["fingerprint"])
            changes = stored.differences(database_fingerprint(current, chunk, plans, info.time_column),
                                         mine="archive", theirs="database")
        action, reason = coldplan.archive_decision(loaded, problem, changes, late_data_check=config.late_data_check)
        record(decisions, Decision("archive", info.display, chunk.display, action, reason), "archive.decision")
        if action == coldplan.EXPORT:
            jobs.append(ExportJob(info, chunk, chunks.data_key(database, info, chunk), manifest_key,
                                  int(document["version"]) + 1 if document else 1, document,
                                  db.relation_size(current, chunk.schema, chunk.name)))
    waiting = len(info.chunks) - len(due)
    if waiting:
        reason = f"{waiting} chunk(s) not due yet (ranges ending after {chunks.show_value(boundary)})"
        record(decisions, Decision("archive", info.display, "", "wait", reason), "archive.waiting")
    return jobs


def _run_exports(dsn: str, store: Store, database: str, policy: Policy, config: ArchiveConfig, jobs: list[ExportJob],
                 decisions: list[Decision], progress: Progress) -> list[ExportResult]:
    settings = parquet.WriterSettings(zstd_level=config.zstd_level, row_group_rows=config.row_group_rows,
                                      row_group_bytes=config.row_group_mib * MiB // config.parallel)
    results: list[ExportResult] = []
    progress.phase("archive", total=len(jobs), unit="chunks")
    with ThreadPoolExecutor(max_workers=config.parallel, thread_name_prefix="archiver-export") as pool:
        futures = {pool.submit(_export_one, dsn, store, database, policy, job, settings): job for job in jobs}
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


def _collect(future: Future[ExportResult], job: ExportJob, results: list[ExportResult],
             decisions: list[Decision]) -> None:
    """One finished export as a decision line; errors of the task's own kinds do not stop the others."""
    where = (job.info.display, job.chunk.display)
    try:
        outcome = future.result()
    except Unrepresentable as exc:
        record(decisions, Decision("archive", *where, coldplan.HOLD, f"not archived: {'; '.join(exc.problems)} "
                                                                     f"({exc.hint})"), "archive.chunk.held_back")
        return
    except VerificationFailed as exc:
        record(decisions, Decision("archive", *where, "mismatch", exc.message), "archive.chunk.verification_failed")
        return
    except ArchiverError as exc:
        record(decisions, Decision("archive", *where, coldplan.FAIL, str(exc)), "archive.chunk.failed")
        return
    results.append(outcome)
    record(decisions, Decision("archive", *where, "exported",
                               f"v{job.version}: {outcome.fingerprint.rows} rows, {format_bytes(outcome.put.size)}, "
                               f"verified, {outcome.key}"), "archive.chunk.exported")


def _export_one(dsn: str, store: Store, database: str, policy: Policy, job: ExportJob,
                settings: parquet.WriterSettings) -> ExportResult:
    result = export_chunk(dsn, store, database=database, info=job.info, chunk=job.chunk, key=job.key,
                          settings=settings, size_hint=job.size_hint, now=utcnow)
    document = archive_manifest(policy, database, job, result)
    manifest.write_json(store, job.manifest_key, document)  # written last: now the archive exists
    old_key = ((job.previous or {}).get("object") or {}).get("key")
    if old_key and old_key != job.key:
        store.delete(old_key)  # the superseded version lived under another key
    return result


def _range_json(value: chunks.TimeValue | None) -> str | int | None:
    if value is None or isinstance(value, int):
        return value
    return isoformat(value)


def _range_utc(value: chunks.TimeValue | None, time_unit: str | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, int):
        return isoformat(chunks.integer_to_datetime(value, time_unit or "s"))
    return isoformat(value)


def archive_manifest(policy: Policy, database: str, job: ExportJob, result: ExportResult) -> dict[str, Any]:
    """The archive manifest: what was exported, where, and the fingerprint that proves it."""
    info, chunk = job.info, job.chunk
    plans = info.plans()
    time_kind = next(plan.kind for plan in plans if plan.name == info.time_column)
    return {
        "format_version": manifest.FORMAT_VERSION,
        "kind": manifest.ARCHIVE_KIND,
        "version": job.version,
        "policy": policy.name,
        "database": database,
        "table": info.display,
        "table_kind": info.kind,
        "chunk": {"schema": chunk.schema, "name": chunk.name, "compressed": chunk.compressed},
        "time_column": info.time_column,
        "time_type": info.time_type,
        "time_unit": info.config.time_unit if info.is_integer else None,
        "range": {"start": _range_json(chunk.start), "end": _range_json(chunk.end),
                  "start_utc": _range_utc(chunk.start, info.config.time_unit),
                  "end_utc": _range_utc(chunk.end, info.config.time_unit)},
        "rows": result.fingerprint.rows,
        "min_time": time_display(result.fingerprint.time_min, time_kind),
        "max_time": time_display(result.fingerprint.time_max, time_kind),
        "fingerprint": result.fingerprint.to_json(),
        "object": {"key": result.key, "size": result.put.size, "sha256": result.put.sha256, "etag": result.put.etag},
        "parquet": {**result.summary.to_json(),
                    "columns": [{"name": plan.name, "pg_type": plan.pg_type, "arrow_type": str(plan.arrow_type),
                                 "text_form": plan.text_form} for plan in plans]},
        "exported_at": isoformat(result.exported_at),
        "verified_at": isoformat(result.verified_at),
        "seconds": round(result.seconds, 3),
        "archiver_version": __version__,
    }


def _result(policy: Policy, decisions: list[Decision], results: list[ExportResult], jobs: list[ExportJob], *,
            dry_run: bool, seconds: float) -> TaskResult:
    count = {action: sum(1 for d in decisions if d.action == action)
             for action in ("skip", "hold", "fail", "mismatch", "export")}
    rows = sum(r.fingerprint.rows for r in results)
    size = sum(r.put.size for r in results)
    metrics: dict[str, float] = {
        "chunks_archived": len(results), "chunks_skipped": count["skip"], "chunks_held_back": count["hold"],
        "chunks_failed": count["fail"], "chunks_mismatched": count["mismatch"], "rows": rows, "bytes": size,
        "source_bytes": sum(job.size_hint for job in jobs if any(r.chunk == job.chunk for r in results)),
        "seconds": seconds, "rows_per_second": rows / seconds if seconds > 0 else 0.0,
    }
    result = TaskResult(policy=policy.name or "", task="archive")
    if dry_run:
        result.summary = f"dry run: would export {count['export']} chunk(s), skip {count['skip']}"
    else:
        result.summary = (f"archived {len(results)} chunk(s) ({rows:,} rows, {format_bytes(size)}), "
                          f"skipped {count['skip']}, held back {count['hold']}")
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
