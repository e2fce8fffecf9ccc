"""``archiver basebackup NAME``: pg_basebackup over the replication protocol, streamed into the store.

``pg_basebackup -D - -Ft -X none`` writes the data directory as one tar to stdout (WAL comes from
the archive, not the backup); the stream is compressed into the store as it comes (no temp file
of the backup's size), the server's ``backup_manifest`` (appended to that tar by pg_basebackup) is
picked out on the way and stored beside it, and our manifest is written last: objects with
SHA-256 and sizes, start and stop LSN, timeline, start and stop time (the stop time on the
server's clock), PostgreSQL and extension versions. With ``encryption.recipients`` the tar is
compressed, then age-encrypted, then stored (``base.tar.zst.age``; the manifest records the
recipients' fingerprints and the SHA-256 of the stored bytes); the server's ``backup_manifest`` (file
names, sizes and checksums, no data) stays readable, like our manifest.

Like pg_dump it works from any host that may open a replication connection (the role needs
REPLICATION, pg_hba.conf a ``replication`` line). Tablespaces other than the default are refused:
pg_basebackup streams only the main data directory to stdout. For its whole run the backup holds a
lease on its id, so prune leaves its objects alone.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .. import __version__
from ..backup.dump import child_env
from ..backup.manifest import new_id
from ..backup.task import StoredObject
from ..common import log, sysinfo
from ..common.process import StreamingCommand
from ..common.progress import Progress
from ..common.result import TaskResult
from ..common.timeutil import format_bytes, isoformat, utcnow
from ..errors import ArchiverError, TaskFailed, UsageError
from ..pg.binaries import Tool, find_tool
from ..pg.dsn import dsn_env, parse_dsn, redact_dsn
from ..pg.replication import ServerFacts, server_clock, server_facts, slot_state
from ..policy.schema import PitrConfig, Policy
from ..storage.base import PutResult, Store
from ..storage.compress import SUFFIXES, CompressingWriter
from ..storage.crypt import SUFFIX as AGE_SUFFIX
from ..storage.crypt import sealed
from ..storage.documents import FORMAT_VERSION, write_json
from ..storage.leases import backup_lease
from ..storage.uploads import check_before_manifest, remove_quietly
from .catalog import SERVER_MANIFEST, base_manifest_key, base_tar_key, pitr_config, server_manifest_key
from .tarstream import TarMemberCapture
from .walnames import format_lsn, parse_lsn, segment_name, segno_of
from .walstore import wal_recipients

logger = log.get_logger("basebackup")
NOTHING_KEPT = "nothing of this base backup was kept; earlier base backups are untouched"


@dataclass(frozen=True)
class BaseBackupOptions:
    """``archiver basebackup`` takes a base backup as the policy says: no options, no dry run."""

    @property
    def dry_run(self) -> bool:
        return False


def basebackup_task(policy: Policy, options: BaseBackupOptions, store: Store, progress: Progress) -> TaskResult:
    """The basebackup task (:data:`archiver.tasks.BASEBACKUP`)."""
    return run_basebackup(policy, store=store, progress=progress)


def basebackup_argv(program: str, *, checkpoint: str, label: str) -> list[str]:
    """pg_basebackup writing one tar of the main data directory to stdout, without WAL (the archive has it)."""
    return [program, "--pgdata=-", "--format=tar", "--wal-method=none", f"--checkpoint={checkpoint}",
            f"--label={label}", "--no-password", "--verbose"]


def refuse_unsuitable(facts: ServerFacts, config: PitrConfig) -> list[str]:
    """Refuse (exit 2) a server a base backup cannot be taken from, or whose WAL nobody archives;
    the warnings that are not fatal."""
    if facts.tablespaces:
        names = ", ".join(f"{name} ({location})" for name, location in facts.tablespaces)
        raise UsageError(f"the server has tablespaces other than the default ({names}): pg_basebackup can stream only "
                         "the main data directory into the store, so archiver refuses to take a base backup that "
                         "would lack them", hint="move those objects to pg_default, or use a logical backup")
    if facts.settings.get("wal_level") == "minimal":
        raise UsageError("the server runs with wal_level = minimal: its WAL cannot replay a base backup",
                         hint="set wal_level = replica (and restart the server)")
    if not facts.can_replicate:
        raise UsageError("the policy's role may not open a replication connection (it lacks the REPLICATION attribute)",
                         hint="ALTER ROLE <role> REPLICATION, and allow it in pg_hba.conf for the replication database")
    warnings = []
    if config.wal.method == "archive_command" and facts.settings.get("archive_mode") not in ("on", "always"):
        raise UsageError(f"pitr.wal.method is archive_command but the server runs with archive_mode = "
                         f"{facts.settings.get('archive_mode')}: no WAL would reach the store, and a base backup "
                         "without its WAL cannot be restored",
                         hint="set archive_mode = on and archive_command = 'archiver wal-push NAME %p' (restart)")
    command = facts.settings.get("archive_command") or ""
    if config.wal.method == "archive_command" and command and "wal-push" not in command:
        warnings.append(f"the server's archive_command ({command!r}) does not call archiver wal-push")
    return warnings


def run_basebackup(policy: Policy, *, store: Store, progress: Progress) -> TaskResult:
    config = pitr_config(policy)
    dsn = policy.database.resolved_dsn()
    log.register_secret(parse_dsn(dsn).get("password"))
    started, clock = utcnow(), time.monotonic()
    facts = server_facts(dsn, connect_timeout=policy.database.connect_timeout)
    warnings = refuse_unsuitable(facts, config) + _stream_warnings(dsn, config)
    tool = find_tool("pg_basebackup", facts.server_version_num, policy.database.pg_bin_dir)
    backup_id = new_id(started)
    logger.info("basebackup.start", extra=log.fields(policy=policy.name, backup_id=backup_id, store=store.url,
                                                     database=redact_dsn(dsn)))
    written: list[str] = []
    with backup_lease(store, backup_id, policy.name or "").held():
        try:
            base, server_manifest = _stream_base(store, backup_id, dsn, tool, config, progress, written,
                                                 wal_recipients(policy))
            stored_manifest = store.put_bytes(server_manifest_key(backup_id), server_manifest, if_absent=True,
                                              content_type="application/json")
            written.append(stored_manifest.key)
            stop_time = server_clock(dsn, connect_timeout=policy.database.connect_timeout)
            document = _manifest(policy, backup_id, dsn, facts, tool, config, base, stored_manifest,
                                 json.loads(server_manifest), started, stop_time, time.monotonic() - clock)
            check_before_manifest(store, [base.result, stored_manifest])
            manifest = write_json(store, base_manifest_key(backup_id), document, if_absent=True)
        except BaseException as exc:
            remove_quietly(store, written, event="basebackup.cleanup_failed")
            if isinstance(exc, ArchiverError) and exc.hint is None:
                exc.hint = NOTHING_KEPT
            logger.error("basebackup.failed", extra=log.fields(policy=policy.name, backup_id=backup_id, error=str(exc)))
            raise
    return _result(policy, document, manifest, base, warnings)


def _stream_warnings(dsn: str, config: PitrConfig) -> list[str]:
    if config.wal.method != "stream" or config.wal.slot is None:
        return []
    state = slot_state(dsn, config.wal.slot)
    if not state.exists:
        return [f"replication slot {config.wal.slot!r} does not exist: no receiver has run yet, so the WAL this base "
                "backup needs may not reach the store (start archiver wal-receive or the worker)"]
    if not state.active:
        return [f"replication slot {config.wal.slot!r} is not in use: the receiver is not running right now"]
    return []


def _stream_base(store: Store, backup_id: str, dsn: str, tool: Tool, config: PitrConfig, progress: Progress,
                 written: list[str], recipients: list[str]) -> tuple[StoredObject, bytes]:
    """pg_basebackup -> compress -> encrypt (with recipients) -> store, streaming."""
    compression = config.base_backup.compression
    key = base_tar_key(backup_id, SUFFIXES[compression.codec] + (AGE_SUFFIX if recipients else ""))
    argv = basebackup_argv(str(tool.path), checkpoint=config.base_backup.checkpoint, label=f"archiver {backup_id}")
    env = child_env(dsn_env(dsn), f"archiver pg_basebackup {backup_id}")
    capture = TarMemberCapture(SERVER_MANIFEST)
    progress.phase("base backup")
    with StreamingCommand(argv, env, "pg_basebackup", what=f"base backup {backup_id} failed") as child:
        with store.writer(key, if_absent=True, content_type="application/x-tar") as out, \
                sealed(out, recipients) as sink:
            written.append(key)
            compressor = CompressingWriter(sink, compression.codec, compression.effective_level(), compression.threads)
            for chunk in child.chunks():
                capture.feed(chunk)
                compressor.write(chunk)
                progress.advance(len(chunk))
            child.finish()
            compressor.finish()
            sink.finish()
    progress.done()
    if capture.captured is None:
        raise TaskFailed(f"the tar pg_basebackup wrote holds no {SERVER_MANIFEST} (PostgreSQL 13+ writes one; was it "
                         "disabled with --no-manifest?)")
    assert out.result is not None
    return (StoredObject(out.result, compression.codec, compressor.level, compressor.bytes_in, sink.describe()),
            capture.captured)


def _wal_range(server_manifest: dict[str, Any]) -> tuple[int, int, int]:
    """(timeline, start LSN, stop LSN) from the server's manifest (``WAL-Ranges``, oldest first)."""
    ranges = server_manifest.get("WAL-Ranges") or []
    if not ranges:
        raise TaskFailed("the server's backup_manifest has no WAL-Ranges: cannot tell which WAL this backup needs")
    return int(ranges[-1]["Timeline"]), parse_lsn(str(ranges[0]["Start-LSN"])), parse_lsn(str(ranges[-1]["End-LSN"]))


def _manifest(policy: Policy, backup_id: str, dsn: str, facts: ServerFacts, tool: Tool, config: PitrConfig,
              base: StoredObject, stored_manifest: PutResult, server_manifest: dict[str, Any], started: datetime,
              stop_time: datetime, duration: float) -> dict[str, Any]:
    timeline, start_lsn, stop_lsn = _wal_range(server_manifest)
    segment_size = facts.wal_segment_size
    return {
        "format_version": FORMAT_VERSION, "kind": "base_backup", "id": backup_id, "policy": policy.name,
        "wal_method": config.wal.method,
        "server": {"version": facts.server_version, "version_num": facts.server_version_num,
                   "system_identifier": facts.system_identifier, "wal_segment_size": segment_size,
                   "data_checksums": facts.settings.get("data_checksums"), "wal_level": facts.settings.get("wal_level"),
                   "connection": redact_dsn(dsn)},
        "database": {"name": facts.database, "extensions": facts.extensions},
        "timeline": timeline, "start_lsn": format_lsn(start_lsn), "stop_lsn": format_lsn(stop_lsn),
        "start_wal": segment_name(timeline, segno_of(start_lsn, segment_size), segment_size),
        "stop_wal": segment_name(timeline, segno_of(stop_lsn, segment_size), segment_size),
        "started_at": isoformat(started), "finished_at": isoformat(utcnow()), "stop_time": isoformat(stop_time),
        "duration_seconds": round(duration, 3),
        "tools": {"archiver": __version__, "pg_basebackup": {"path": str(tool.path), "version": tool.version}},
        "objects": {"base": base.to_json(format="tar"),
                    "backup_manifest": {"key": stored_manifest.key, "size": stored_manifest.size,
                                        "sha256": stored_manifest.sha256, "codec": "none",
                                        "uncompressed_size": stored_manifest.size,
                                        **({"etag": stored_manifest.etag} if stored_manifest.etag else {})}},
    }


def _result(policy: Policy, document: dict[str, Any], manifest: PutResult, base: StoredObject,
            warnings: list[str]) -> TaskResult:
    backup_id = document["id"]
    lines = [f"base      {base.result.key}  {format_bytes(base.result.size)} ({format_bytes(base.uncompressed_size)} "
             f"before {base.codec})",
             f"manifest  {manifest.key}",
             f"wal       timeline {document['timeline']}, {document['start_lsn']} .. {document['stop_lsn']} "
             f"({document['start_wal']} .. {document['stop_wal']}), restorable once that WAL is archived"]
    lines += [f"warning   {text}" for text in warnings]
    for text in warnings:
        logger.warning("basebackup.warning", extra=log.fields(policy=policy.name, warning=text))
    metrics = {"bytes": float(base.result.size), "data_bytes": float(base.uncompressed_size),
               "duration_seconds": float(document["duration_seconds"]), "peak_rss_bytes": float(sysinfo.peak_rss_bytes())}
    summary = (f"base backup {backup_id} of {document['server']['connection']}: {format_bytes(base.uncompressed_size)} "
               f"stored as {format_bytes(base.result.size)} ({base.codec}) in {document['duration_seconds']:.1f}s")
    logger.info("basebackup.done", extra=log.fields(policy=policy.name, backup_id=backup_id, metrics=metrics))
    return TaskResult(policy=policy.name or "", task="basebackup", summary=summary, lines=lines,
                      data={"id": backup_id, "manifest": manifest.key, "stop_time": document["stop_time"]},
                      metrics=metrics)
