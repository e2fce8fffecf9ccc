"""``archiver verify NAME``: a restore drill that proves a backup restores and holds what it claims.

A throw-away PostgreSQL is started (``local``: initdb + pg_ctl, reachable only through a socket in
a private directory, TimescaleDB preloaded when the backup needs it; or ``container``: docker /
podman ``run --rm`` of the policy's image), the backup is restored into it by exactly the code
``archiver restore`` runs, and then checked: every table of the manifest with its row count and
content checksum (taken in the dump's snapshot), large objects, TimescaleDB hypertables and their
chunk counts, ``pg_amcheck``, and the policy's own SQL checks; with ``--archives`` also every cold
archive (object present, SHA-256 and Parquet row count as recorded). The verdict is written next to the
backup (``backups/<id>/verification.json``): ``backups list`` shows it and ``prune`` keeps the
newest backup whose drill passed.

Exit codes: 4 when the backup does not hold what its manifest says (a stored object missing or
altered, a table's rows differ, a check fails, the dump does not restore); 1 when the drill could
not run (no scratch instance, a target that lacks the TimescaleDB version, no disk space). Only a
drill that ran writes a verdict. A missing object counts as 4: the manifest vouches for it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .. import __version__
from ..backup.manifest import BackupEntry, verification_key
from ..coldtier import identity
from ..coldtier.catalog import superseded_keys
from ..coldtier.manifest import ARCHIVE_CATALOG_PREFIX, list_archive_manifests
from ..coldtier.objects import check_object
from ..common import log, sysinfo
from ..common.progress import NULL_PROGRESS, Progress
from ..common.result import TaskResult
from ..common.timeutil import isoformat, utcnow
from ..errors import ExternalCommandFailed, TaskFailed, UsageError, set_outcome
from ..pg import binaries
from ..pg.connect import server_version_num
from ..pg.dsn import dsn_with
from ..pg.scratch import ContainerPostgres, LocalPostgres
from ..policy.protect import cold_store, reading_keyring
from ..policy.schema import Policy, ScratchConfig, VerifyConfig
from ..storage.agekeys import Keyring
from ..storage.backends import open_store
from ..storage.base import Store
from ..storage.documents import FORMAT_VERSION, write_json
from ..storage.integrity import ObjectMismatch, check_decryptable
from .checks import (
    Check,
    check_amcheck,
    check_database_properties,
    check_hypertables,
    check_large_objects,
    check_matviews,
    check_sql,
)
from .compare import compare_tables
from .execute import execute_restore
from .pitr_drill import run_pitr_drill
from .plan import plan_restore
from .props import TargetUnsuitable
from .select import Source, select_backup

logger = log.get_logger("verify")

# pg_restore failures that say the scratch instance ran out of something, not that the backup is bad.
ENVIRONMENT_FAILURES = ("No space left on device", "could not extend file", "out of shared memory",
                        "max_locks_per_transaction", "could not connect to server", "connection to server",
                        "server closed the connection", "terminating connection", "Cannot allocate memory")
# A scratch cluster lets a restore hold a lock per table, index and chunk in one transaction:
# at least this many per connection, more when the backup has more relations.
SCRATCH_LOCKS_PER_TRANSACTION = 1024
SCRATCH_CONNECTIONS = 60


def scratch_settings(source: Source) -> dict[str, str]:
    """Server settings of a drill's scratch instance, sized for this backup."""
    locks = max(SCRATCH_LOCKS_PER_TRANSACTION, -(-2 * source.locks_needed // SCRATCH_CONNECTIONS))
    return {"max_locks_per_transaction": str(locks)}


@dataclass
class Drill:
    source: Source
    kind: str
    started_at: datetime
    checks: list[Check]
    durations: dict[str, float]
    scratch: dict[str, Any]
    versions: dict[str, Any]

    @property
    def passed(self) -> bool:
        return not any(check.status == "fail" for check in self.checks)

    def record(self, policy: str) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION, "kind": "verification", "backup_id": self.source.entry.id,
            "backup_time": isoformat(self.source.entry.time), "policy": policy, "result": "passed" if self.passed else "failed",
            "started_at": isoformat(self.started_at), "finished_at": isoformat(utcnow()),
            "durations": {key: round(value, 3) for key, value in self.durations.items()},
            "scratch": self.scratch, "versions": self.versions,
            "checks": [check.to_json() for check in self.checks],
            "failed": [f"{check.kind} {check.name}" for check in self.checks if check.status == "fail"],
        }


# -- scratch instances ---------------------------------------------------------------------------

@contextlib.contextmanager
def scratch_instance(kind: str, config: ScratchConfig, source: Source, *, owner: str,
                     pg_bin_dir: str | None) -> Iterator[LocalPostgres | ContainerPostgres]:
    """A started scratch PostgreSQL for ``source``; stopped and removed on the way out, whatever happens."""
    try:
        if kind == "container":
            if not config.image:
                raise UsageError("verify.scratch.image is not set: a container drill needs an image",
                                 hint="e.g. image: timescale/timescaledb:2.17.2-pg15 (matching the backup's versions)")
            instance: LocalPostgres | ContainerPostgres = ContainerPostgres(
                config.image, engine=config.engine, engine_args=config.engine_args, run_args=config.run_args,
                startup_timeout=config.startup_timeout.total_seconds(), owner=owner)
        else:
            initdb = binaries.find("initdb", server_major=source.major or None, configured=config.pg_bin_dir or pg_bin_dir)
            instance = LocalPostgres(bin_dir=str(initdb.parent), base_dir=config.work_dir,
                                     timescaledb=bool(source.timescaledb), settings=scratch_settings(source),
                                     startup_timeout=config.startup_timeout.total_seconds(), listen_tcp=False)
        instance.start()
    except UsageError as exc:
        raise TaskFailed(f"the drill could not start its {kind} scratch instance: {exc.message}", hint=exc.hint) from None
    try:
        if isinstance(instance, ContainerPostgres):
            log.register_secret(instance.password)
        yield instance
    except KeyboardInterrupt as exc:  # SIGINT/SIGTERM: what the restore inside undid was the scratch's
        set_outcome(exc, "nothing was changed (no verdict was written; the scratch instance was removed)")
        raise
    finally:
        instance.stop()


def _scratch_facts(kind: str, config: ScratchConfig, instance: LocalPostgres | ContainerPostgres) -> dict[str, Any]:
    facts: dict[str, Any] = {"kind": kind, "server_version_num": server_version_num(instance.dsn())}
    if isinstance(instance, ContainerPostgres):
        facts.update(image=instance.image, engine=instance.engine)
    else:
        facts.update(bin_dir=str(instance.bindir), timescaledb_preloaded=instance.timescaledb)
    if instance.swept:
        facts["swept"] = instance.swept  # scratch instances of drills that died, removed before this one started
    return facts


# -- the drill -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class VerifyOptions:
    backup_id: str | None = None  # the backup to drill (default: the newest)
    scratch: str | None = None  # "local" or "container" (default: the policy's)
    archives: bool | None = None  # also check every cold archive object (default: the policy's)
    pitr: bool | None = None  # a point-in-time drill (default: when the policy has pitr and no backup section)
    to_time: datetime | None = None  # --pitr: the point (default: a random point inside the recoverable window)

    @property
    def dry_run(self) -> bool:
        return False  # a drill only reads the store and writes its verdict: it has no dry run


def verify_task(policy: Policy, options: VerifyOptions, store: Store, progress: Progress) -> TaskResult:
    """The verify task (:data:`archiver.tasks.VERIFY`): a restore drill."""
    if options.pitr or (options.pitr is None and policy.pitr is not None and policy.backup is None):
        return run_pitr_drill(policy, store=store, progress=progress, to_time=options.to_time, scratch=options.scratch)
    return run_verify(policy, store=store, progress=progress, backup_id=options.backup_id,
                      scratch=options.scratch, archives=options.archives)


def run_verify(policy: Policy, *, store: Store | None = None, progress: Progress = NULL_PROGRESS,
               backup_id: str | None = None, scratch: str | None = None, archives: bool | None = None) -> TaskResult:
    """Restore a backup (the newest by default) into a scratch instance, check it, record the verdict."""
    config = verify_config(policy)
    keyring = reading_keyring(policy.encryption, "verify")
    store = store or open_store(policy.storage)
    kind = scratch or config.scratch.kind
    if kind not in ("local", "container"):
        raise UsageError(f"--scratch {kind!r}: allowed local or container")
    entry = _backup_to_drill(store, backup_id, policy)
    source = Source(entry)
    check_decryptable(store, source.dump, f"the dump object of backup {entry.id}", keyring)  # before a scratch starts
    started_at, clock = utcnow(), time.monotonic()
    logger.info("verify.start", extra=log.fields(policy=policy.name, backup_id=entry.id, scratch=kind))
    progress.phase(f"start {kind} scratch PostgreSQL", unit="steps")
    with scratch_instance(kind, config.scratch, source, owner=policy.name or "archiver",
                          pg_bin_dir=policy.database.pg_bin_dir) as instance:
        progress.done()
        drill = Drill(source, kind, started_at, [], {"scratch_start": time.monotonic() - clock},
                      _scratch_facts(kind, config.scratch, instance), {"archiver": __version__})
        target = dsn_with(instance.dsn(), dbname=str(source.database.get("name") or "restored"))
        if _restore(drill, policy, store, target, config, progress, keyring):
            _check_restored(drill, target, config, instance, progress)
    if archives if archives is not None else config.archives:
        encrypt = bool(policy.archive and policy.archive.encrypt)
        drill.checks += _archive_checks(cold_store(store, policy.encryption, encrypt, "verify"), progress)
    drill.durations["total"] = time.monotonic() - clock
    record = drill.record(policy.name or "")
    write_json(store, verification_key(entry.id), record)
    return _result(policy, drill, record)


def _backup_to_drill(store: Store, backup_id: str | None, policy: Policy) -> BackupEntry:
    """The backup named, or the newest; a store without backups means the drill cannot run (exit 1)."""
    try:
        return select_backup(store, backup_id=backup_id, policy=policy.name or "")
    except UsageError as exc:
        if backup_id is not None:
            raise  # a --backup ID that is not there is a usage error (exit 2)
        raise TaskFailed(f"the drill could not run: {exc.message}", hint=exc.hint) from None


def verify_config(policy: Policy) -> VerifyConfig:
    if policy.verify is None:
        raise UsageError(f"policy {policy.name!r} has no verify section ({policy.source})",
                         hint="add verify: {schedule: ...} to the policy")
    return policy.verify


def _restore(drill: Drill, policy: Policy, store: Store, target: str, config: VerifyConfig,
             progress: Progress, keyring: Keyring | None) -> bool:
    """Restore as ``archiver restore`` does; False (with a failed check) when the backup does not restore."""
    clock = time.monotonic()
    entry = drill.source.entry
    try:
        plan = plan_restore(store, entry, target, policy=policy.name or "",
                            pg_bin_dir=config.scratch.pg_bin_dir or policy.database.pg_bin_dir, keyring=keyring)
        drill.versions.update(pg_restore=plan.pg_restore.version, timescaledb=drill.source.timescaledb)
        outcome = execute_restore(plan, store, progress=progress)
    except ObjectMismatch as exc:
        drill.checks.append(Check("object", exc.key, "fail", detail=exc.message))
        drill.durations["restore"] = time.monotonic() - clock
        return False
    except TargetUnsuitable as exc:
        raise TaskFailed(f"the drill could not run: {exc.message}", hint=exc.hint) from None
    except ExternalCommandFailed as exc:
        if exc.program != "pg_restore" or any(text in exc.stderr_tail for text in ENVIRONMENT_FAILURES):
            raise TaskFailed(f"the drill could not run: {exc.message}") from None
        drill.checks.append(Check("restore", "pg_restore", "fail", detail=exc.message))
        drill.durations["restore"] = time.monotonic() - clock
        return False
    for name in ("dump", "globals"):
        if (obj := drill.source.document.get("objects", {}).get(name)) is not None:
            drill.checks.append(Check("object", str(obj["key"]), "pass", detail="size and SHA-256 match the manifest"))
    drill.checks.append(Check("restore", "pg_restore", "pass", detail=f"{outcome.seconds:.1f}s"))
    drill.durations.update(download=outcome.download_seconds, restore=outcome.seconds)
    return True


def _check_restored(drill: Drill, target: str, config: VerifyConfig, instance: LocalPostgres | ContainerPostgres,
                    progress: Progress) -> None:
    clock = time.monotonic()
    progress.phase("checks", total=len(drill.source.tables) + len(config.checks) + 2, unit="checks")
    for table in compare_tables(target, drill.source, checksums=True):
        expected = {"rows": table.expected_rows, "checksum": table.expected_checksum}
        actual = None if table.rows is None else {"rows": table.rows, "checksum": table.checksum}
        drill.checks.append(Check("table", table.table, "pass" if table.ok else "fail",
                                  {k: v for k, v in expected.items() if v is not None},
                                  actual if actual is None else {k: v for k, v in actual.items() if v is not None}))
        progress.advance(1)
    drill.checks.append(check_large_objects(target, drill.source))
    drill.checks += check_matviews(target, drill.source)
    drill.checks += check_database_properties(target, drill.source)
    drill.checks += check_hypertables(target, drill.source)
    if config.amcheck:
        drill.checks.append(check_amcheck(target, instance))
    progress.advance(1)
    for check in config.checks:
        drill.checks.append(check_sql(target, check.name or check.sql, check.sql, check.expect))
        progress.advance(1)
    progress.done()
    drill.durations["checks"] = time.monotonic() - clock


def _archive_checks(store: Store, progress: Progress) -> list[Check]:
    """Every current cold archive: its manifest reads, its object is there with the size and SHA-256
    the manifest records (a full read: a checksum, not only an ETag), its embedded metadata (rows,
    table, range, version) agrees with the manifest, and no other archive claims the same range."""
    found = list_archive_manifests(store, ARCHIVE_CATALOG_PREFIX)
    superseded = superseded_keys(found.values())
    claims: dict[tuple[str, str], list[str]] = {}
    checks: list[Check] = []
    progress.phase("archives", total=len(found), unit="objects")
    for key, loaded in sorted(found.items()):
        document = loaded.document
        if key in superseded:
            continue  # left by an interrupted run; the next archive removes it
        if document is None:
            checks.append(Check("archive", key, "fail", detail=f"unreadable manifest: {loaded.error}"))
            continue
        name = f"{document['table']} {document['chunk']['name']}"
        if document.get("identity") or document.get("table_kind") != "hypertable":
            claims.setdefault((str(document["table"]), identity.of_manifest(document).stem), []).append(name)
        problem = check_object(store, document, thorough=True)
        rows = int(document["rows"])
        checks.append(Check("archive", name, "fail" if problem else "pass", None if problem else {"rows": rows},
                            None if problem else {"rows": rows},
                            detail=problem or "SHA-256, Parquet footer and embedded range match the manifest"))
        progress.advance(1)
    progress.done()
    for (table, stem), names in sorted(claims.items()):
        if len(names) > 1:
            checks.append(Check("archive", f"{table} {stem}", "fail",
                                detail=f"{len(names)} archives claim this range ({', '.join(names)}): readers see its "
                                       "rows more than once; `archiver archive` merges them"))
    return checks


def _result(policy: Policy, drill: Drill, record: dict[str, Any]) -> TaskResult:
    failed = [check for check in drill.checks if check.status == "fail"]
    summarised = {"table": "tables        {good} of {total} match the manifest (rows and content checksums)",
                  "archive": "archives      {good} of {total} cold archives match their manifests (SHA-256, "
                             "Parquet row counts)"}
    lines = [check.line() for check in drill.checks if check.kind not in summarised or check.status == "fail"]
    for kind, text in reversed(summarised.items()):
        group = [check for check in drill.checks if check.kind == kind]
        if group:
            good = sum(1 for check in group if check.status == "pass")
            lines.insert(0, f"{'PASS' if good == len(group) else 'FAIL':4}  " + text.format(good=good, total=len(group)))
    durations = drill.durations
    lines.append("time: " + ", ".join(f"{key} {value:.1f}s" for key, value in durations.items()))
    entry = drill.source.entry
    verdict = "passed" if not failed else f"FAILED ({len(failed)} check{'s' if len(failed) != 1 else ''})"
    summary = (f"restore drill of backup {entry.id} ({drill.kind} scratch): {verdict}; "
               f"{len(drill.checks)} checks in {durations.get('total', 0):.1f}s")
    metrics = {"duration_seconds": round(durations.get("total", 0.0), 3),
               "restore_seconds": round(durations.get("restore", 0.0), 3),
               "checks": float(len(drill.checks)), "checks_failed": float(len(failed)),
               "rows": float(drill.source.rows), "bytes": float(entry.size),
               "peak_rss_bytes": float(sysinfo.peak_rss_bytes())}
    logger.info("verify.done", extra=log.fields(policy=policy.name, backup_id=entry.id, result=record["result"],
                                                failed=record["failed"], metrics=metrics, durations=record["durations"]))
    return TaskResult(policy=policy.name or "", task="verify", status="verification_failed" if failed else "ok",
                      summary=summary, lines=lines, metrics=metrics, data=record)
