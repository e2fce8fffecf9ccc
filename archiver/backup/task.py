"""``archiver backup NAME`` and ``archiver backups list``: logical backups and their catalog.

A backup is pg_dump (custom format, uncompressed) streamed through zstd/gzip into the store,
the cluster's roles (pg_dumpall --globals-only) as a second object, and a manifest written
last. Row counts and content checksums are taken in the snapshot pg_dump dumps. Nothing of a
failed run stays visible: uploads are aborted, committed objects removed, no manifest written.

For its whole run a backup holds a lease on its id (``locks/backup-<id>.json``, renewed), so
prune leaves its objects alone however long it takes; right before the manifest is written,
every object it will reference is looked at again (present, with the size written), and the
manifest is not written otherwise.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .. import __version__
from ..common import log, sysinfo
from ..common.process import StderrCapture, StreamingCommand
from ..common.progress import NULL_PROGRESS, Progress
from ..common.result import TaskResult
from ..common.timeutil import format_bytes, isoformat, utcnow
from ..errors import ArchiverError, UsageError
from ..pg.binaries import Tool, find_tool
from ..pg.dsn import dsn_env, parse_dsn, redact_dsn
from ..pg.snapshot import SnapshotSession, exported_snapshot
from ..pg.stats import (
    CHECKSUM_METHOD,
    PINNED_SETTINGS,
    ContentStats,
    DatabaseFacts,
    HypertableStats,
    MatviewRef,
    TableFilter,
    TableRef,
)
from ..policy.schema import BackupConfig, PgDumpConfig, Policy
from ..storage.backends import open_store
from ..storage.base import PutResult, Store
from ..storage.compress import SUFFIXES, CompressingWriter
from ..storage.crypt import SUFFIX as AGE_SUFFIX
from ..storage.crypt import sealed
from ..storage.documents import FORMAT_VERSION, write_json
from ..storage.leases import backup_lease
from ..storage.uploads import check_before_manifest, remove_quietly
from . import manifest as backup_manifest
from .dump import (
    child_env,
    is_expected_warning,
    lock_wait_timeout_ms,
    parse_name_pattern,
    pg_dump_argv,
    pg_dumpall_globals_argv,
    schema_pattern,
)
from .manifest import backup_manifest_key, dump_key, globals_key, new_id

logger = log.get_logger("backup")

NOTHING_KEPT = "nothing of this backup was kept; earlier backups are untouched"


def backup_config(policy: Policy) -> BackupConfig:
    if policy.backup is None:
        raise UsageError(f"policy {policy.name!r} has no backup section ({policy.source})",
                         hint="add backup: {schedule: ...} to the policy to take backups")
    return policy.backup


def table_filter(options: PgDumpConfig) -> TableFilter:
    """pg_dump's exclusions as regexes, so the counts describe what the dump holds."""
    def tables(patterns: Iterable[str]) -> tuple[tuple[str | None, str], ...]:
        parsed = [parse_name_pattern(p) for p in patterns]
        return tuple((p.schema, p.name) for p in parsed)
    return TableFilter(exclude_schemas=tuple(schema_pattern(p) for p in options.exclude_schemas),
                          exclude_tables=tables(options.exclude_tables),
                          exclude_table_data=tables(options.exclude_table_data))


@dataclass
class StoredObject:
    result: PutResult
    codec: str
    level: int
    uncompressed_size: int
    encryption: dict[str, Any] | None = None  # {"format": age, "recipients": fingerprints}

    def to_json(self, **extra: Any) -> dict[str, Any]:
        entry: dict[str, Any] = {"key": self.result.key, "size": self.result.size, "sha256": self.result.sha256,
                                 "codec": self.codec, "uncompressed_size": self.uncompressed_size, **extra}
        if self.encryption:
            entry["encryption"] = self.encryption
        if self.codec != "none":
            entry["level"] = self.level
        if self.result.etag:
            entry["etag"] = self.result.etag
        return entry


class _StatsJob:
    """Row counts and checksums on the snapshot session, beside pg_dump (they read the same snapshot)."""

    def __init__(self, session: SnapshotSession, tables: list[TableRef], checksums: bool,
                 matviews: list[MatviewRef]) -> None:
        self._session = session
        self._tables = tables
        self._checksums = checksums
        self._matviews = matviews
        self._stop = threading.Event()
        self._result: ContentStats | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="backup-stats", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            self._result = self._session.content_stats(self._tables, checksums=self._checksums,
                                                       stop=self._stop.is_set, matviews=self._matviews)
        except BaseException as exc:  # handed to the main thread by result()
            self._error = exc

    def result(self) -> ContentStats:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def cancel(self) -> None:
        if not self._thread.is_alive():
            return
        self._stop.set()
        self._session.cancel()
        self._thread.join()


@dataclass(frozen=True)
class BackupOptions:
    """``archiver backup`` takes a backup as the policy says: it has no options and no dry run."""

    @property
    def dry_run(self) -> bool:
        return False


def backup_task(policy: Policy, options: BackupOptions, store: Store, progress: Progress) -> TaskResult:
    """The backup task (:data:`archiver.tasks.BACKUP`)."""
    return run_backup(policy, progress=progress, store=store)


def run_backup(policy: Policy, *, progress: Progress = NULL_PROGRESS, store: Store | None = None) -> TaskResult:
    """Take one backup of the policy's database now."""
    config = backup_config(policy)
    dsn = policy.database.resolved_dsn()
    log.register_secret(parse_dsn(dsn).get("password"))
    store = store or open_store(policy.storage)
    started = utcnow()
    clock = time.monotonic()
    backup_id = new_id(started)
    recipients = list(policy.encryption.recipients) if policy.encryption else []
    lock_timeout = config.pg_dump.lock_wait_timeout
    logger.info("backup.start", extra=log.fields(policy=policy.name, backup_id=backup_id, store=store.url,
                                                 database=redact_dsn(dsn)))
    written: list[str] = []
    with backup_lease(store, backup_id, policy.name or "").held() as lease, \
            exported_snapshot(dsn, connect_timeout=policy.database.connect_timeout,
                                 lock_timeout_ms=lock_wait_timeout_ms(lock_timeout) if lock_timeout else None
                                 ) as session:
        facts = session.facts()
        pg_dump = find_tool("pg_dump", facts.server_version_num, policy.database.pg_bin_dir)
        pg_dumpall = find_tool("pg_dumpall", facts.server_version_num, policy.database.pg_bin_dir) \
            if config.globals else None
        hypertables = session.hypertables()
        properties = session.database_properties()
        exclusions = table_filter(config.pg_dump)
        stats_job = _StatsJob(session, session.tables(exclusions), config.table_checksums,
                              session.materialized_views(exclusions))
        try:
            globals_object = None
            if pg_dumpall is not None:
                globals_object = _dump_globals(store, backup_id, dsn, facts, pg_dumpall, config, recipients)
                written.append(globals_object.result.key)
            stats_job.start()
            argv = pg_dump_argv(pg_dump.path, config.pg_dump, session.snapshot_id)
            dump_object, stderr = _dump_database(store, backup_id, dsn, facts, argv, config, progress, recipients)
            written.append(dump_object.result.key)
            stats = stats_job.result()
            finished = utcnow()
            duration = time.monotonic() - clock
            document = _manifest_document(
                policy=policy, backup_id=backup_id, dsn=dsn, facts=facts, started=started, finished=finished,
                duration=duration, pg_dump=pg_dump, pg_dumpall=pg_dumpall, argv=argv, config=config,
                dump_object=dump_object, globals_object=globals_object, stats=stats, stderr=stderr,
                hypertables=hypertables, properties=properties)
            check_before_manifest(store, [obj.result for obj in (dump_object, globals_object) if obj is not None],
                                  meanwhile=f"; the backup's lease {lease.key} was lost meanwhile" if lease.lost else "")
            manifest_result = write_json(store, backup_manifest_key(backup_id), document,
                                                  if_absent=True)
        except BaseException as exc:
            stats_job.cancel()
            remove_quietly(store, written, event="backup.cleanup_failed")
            if isinstance(exc, ArchiverError) and exc.hint is None:
                exc.hint = NOTHING_KEPT
            logger.error("backup.failed", extra=log.fields(policy=policy.name, backup_id=backup_id, error=str(exc)))
            raise
    return _result(policy, backup_id, document, manifest_result, dump_object, globals_object, stats, duration)


def _dump_globals(store: Store, backup_id: str, dsn: str, facts: DatabaseFacts, tool: Tool,
                  config: BackupConfig, recipients: list[str]) -> StoredObject:
    """pg_dumpall --globals-only, compressed like the dump (small: roles, memberships, tablespaces)."""
    codec = config.compression.codec
    argv = pg_dumpall_globals_argv(tool.path, database=facts.name,
                                        include_role_passwords=config.include_role_passwords)
    env = child_env(dsn_env(dsn), "archiver pg_dumpall")
    key = globals_key(backup_id, SUFFIXES[codec] + (AGE_SUFFIX if recipients else ""))
    with StreamingCommand(argv, env, "pg_dumpall", what=f"dump of roles for backup {backup_id} failed") as child:
        with store.writer(key, if_absent=True, content_type="application/octet-stream") as out, \
                sealed(out, recipients) as sink:
            compressor = CompressingWriter(sink, codec, config.compression.effective_level(), threads=1)
            for chunk in child.chunks():
                compressor.write(chunk)
            child.finish()
            compressor.finish()
            sink.finish()
    assert out.result is not None
    return StoredObject(out.result, codec, compressor.level, compressor.bytes_in, sink.describe())


def _dump_total(store: Store, facts: DatabaseFacts) -> tuple[int | None, str]:
    """Progress total: the previous backup's uncompressed dump, else the database's size on disk (says which)."""
    try:
        newest = backup_manifest.list_backups(store)[:1]
        previous = sum(int(((e.manifest.get("objects") or {}).get("dump") or {}).get("uncompressed_size") or 0) for e in newest)
        if previous > 0:
            return previous, f"the previous backup's {format_bytes(previous)}"
    except ArchiverError as exc:  # progress is advisory: the backup goes on
        logger.debug("backup.progress_total", extra=log.fields(error=str(exc)))
    return (facts.size_bytes or None), "the database's size on disk, an estimate"


def _dump_database(store: Store, backup_id: str, dsn: str, facts: DatabaseFacts, argv: list[str],
                   config: BackupConfig, progress: Progress, recipients: list[str]) -> tuple[StoredObject, StderrCapture]:
    """pg_dump -> compressor -> store, streaming; the part size follows the database's size."""
    compression = config.compression
    key = dump_key(backup_id, SUFFIXES[compression.codec] + (AGE_SUFFIX if recipients else ""))
    env = child_env(dsn_env(dsn), f"archiver pg_dump {backup_id}")
    what = f"backup {backup_id} of database {facts.name!r} failed"
    total, against = _dump_total(store, facts)
    progress.phase(f"dump {facts.name} (total: {against})", total=total)
    with StreamingCommand(argv, env, "pg_dump", what=what) as child:
        with store.writer(key, size_hint=facts.size_bytes, if_absent=True,
                          content_type="application/octet-stream") as out, sealed(out, recipients) as sink:
            compressor = CompressingWriter(sink, compression.codec, compression.effective_level(), compression.threads)
            for chunk in child.chunks():
                compressor.write(chunk)
                progress.advance(len(chunk))
            child.finish()
            compressor.finish()
            sink.finish()
    progress.done()
    assert out.result is not None
    return (StoredObject(out.result, compression.codec, compressor.level, compressor.bytes_in, sink.describe()),
            child.stderr)


def _manifest_document(*, policy: Policy, backup_id: str, dsn: str, facts: DatabaseFacts, started: datetime,
                       finished: datetime, duration: float, pg_dump: Tool, pg_dumpall: Tool | None,
                       argv: list[str], config: BackupConfig, dump_object: StoredObject,
                       globals_object: StoredObject | None, stats: ContentStats,
                       stderr: StderrCapture, hypertables: list[HypertableStats],
                       properties: dict[str, Any]) -> dict[str, Any]:
    objects: dict[str, Any] = {"dump": dump_object.to_json(format="custom")}
    if globals_object is not None:
        objects["globals"] = globals_object.to_json(format="sql", scope="cluster",
                                                    role_passwords=config.include_role_passwords)
    tools: dict[str, Any] = {"archiver": __version__, "pg_dump": {"path": str(pg_dump.path), "version": pg_dump.version}}
    if pg_dumpall is not None:
        tools["pg_dumpall"] = {"path": str(pg_dumpall.path), "version": pg_dumpall.version}
    warnings = [{"text": text, "expected": is_expected_warning(text, facts.extensions)}
                for text in stderr.warnings]
    content: dict[str, Any] = {
        "method": CHECKSUM_METHOD if config.table_checksums else None,
        "settings": PINNED_SETTINGS,
        "rows": stats.rows,
        "tables": [entry.to_json() for entry in stats.tables],
        "large_objects": stats.large_objects.to_json(),
        # pg_dump keeps a materialized view's definition; a restore re-computes its rows
        "materialized_views": [view.to_json() for view in stats.materialized_views],
    }
    if "timescaledb" in facts.extensions:
        content["hypertables"] = [hypertable.to_json() for hypertable in hypertables]  # chunk counts, for drills
    return {
        "format_version": FORMAT_VERSION,
        "kind": "backup",
        "id": backup_id,
        "policy": policy.name,
        "database": {
            "name": facts.name,
            "connection": redact_dsn(dsn),
            "server_version": facts.server_version,
            "server_version_num": facts.server_version_num,
            "size_bytes": facts.size_bytes, "relations": facts.relations,
            "extensions": facts.extensions,
            "extension_schemas": facts.extension_schemas,
            # encoding, locale, owner, settings, comment, privileges: a restore re-creates them
            "properties": properties,
        },
        "timescaledb_version": facts.extensions.get("timescaledb"),
        "snapshot_time": isoformat(facts.snapshot_time),
        "started_at": isoformat(started),
        "finished_at": isoformat(finished),
        "duration_seconds": round(duration, 3),
        "tools": tools,
        "pg_dump_options": argv[1:],
        "objects": objects,
        "content": content,
        "warnings": warnings,
        "warnings_dropped": stderr.dropped_warnings,
    }


def _result(policy: Policy, backup_id: str, document: dict[str, Any], manifest_result: PutResult,
            dump_object: StoredObject, globals_object: StoredObject | None, stats: ContentStats,
            duration: float) -> TaskResult:
    stored = dump_object.result.size + (globals_object.result.size if globals_object else 0)
    lines = [f"dump      {dump_object.result.key}  {format_bytes(dump_object.result.size)} "
             f"({format_bytes(dump_object.uncompressed_size)} before {dump_object.codec})"]
    if globals_object is not None:
        lines.append(f"globals   {globals_object.result.key}  {format_bytes(globals_object.result.size)}")
    lines.append(f"manifest  {manifest_result.key}")
    unexpected = [w["text"] for w in document["warnings"] if not w["expected"]]
    lines += [f"pg_dump {text}" for text in unexpected]
    metrics = {
        "bytes": float(stored),
        "dump_bytes": float(dump_object.uncompressed_size),
        "rows": float(stats.rows),
        "tables": float(len(stats.tables)),
        "duration_seconds": round(duration, 3),
        "peak_rss_bytes": float(sysinfo.peak_rss_bytes()),
    }
    summary = (f"backup {backup_id} of {document['database']['name']}: {format_bytes(dump_object.uncompressed_size)} dump "
               f"stored as {format_bytes(stored)} ({dump_object.codec}) in {duration:.1f}s, "
               f"{len(stats.tables)} tables, {stats.rows:,} rows")
    for text in unexpected:
        logger.warning("backup.pg_dump_warning", extra=log.fields(backup_id=backup_id, warning=text))
    logger.info("backup.done", extra=log.fields(policy=policy.name, backup_id=backup_id, metrics=metrics))
    return TaskResult(policy=policy.name or "", task="backup", summary=summary, lines=lines,
                      data={"id": backup_id, "manifest": manifest_result.key}, metrics=metrics)
