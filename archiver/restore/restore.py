"""``archiver restore``: a backup into a target database, and the pipeline restore drills reuse.

The steps, and why they are in this order:

1. **Plan, read-only.** Pick the backup (newest, ``--backup ID`` or ``--before TIME``), check
   that its objects exist with the sizes the manifest records, read and check the small globals
   object in full, and inspect the target: server version, extensions it can create, roles,
   whether it is empty. Every refusal (older major, missing TimescaleDB version, non-empty
   target without ``--clean``, no room to spool) happens here, before anything is written.
2. **Confirm** (the caller decides: a prompt on a terminal, ``--yes``, or a drill).
3. **Restore.** Roles the target lacks are created, ``CREATE EXTENSION timescaledb VERSION``
   and ``timescaledb_pre_restore()`` run, then the dump streams from the store through the
   decompressor into ``pg_restore --single-transaction``. Its SHA-256 and sizes are checked
   while it streams, and the last megabyte is held back until they match: pg_restore cannot
   finish, so cannot commit, before the whole object is proven. A mismatch kills pg_restore
   (its transaction rolls back) and the steps before it are undone (roles dropped, extension
   dropped, a database archiver created dropped): the target is left as it was.
   ``--jobs N`` (plain databases) and ``--clean`` of a TimescaleDB target instead spool the
   dump to ``--work-dir`` and check it completely before anything touches the target.
4. ``timescaledb_post_restore()``, then row counts on a new connection, compared with the
   manifest's (counted in the dump's own snapshot). When they differ (or cannot be counted),
   the restore is unproven: a database this run created is dropped again, with the roles it
   created; in a database that existed before, nothing is dropped and the result says what
   was left there.

Steps 3 and 4 run under the target's lock (:func:`archiver.locking.restore_target_lock`), taken
in the server's maintenance database before anything is created, so two restores into the same
database never overlap; under it the target is inspected again, and a target that is no longer
as the plan found it (created, filled or emptied meanwhile) is refused with nothing written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from ..backup import dump
from ..backup.globals import RolesPlan, plan_roles
from ..backup.manifest import (
    BACKUPS_PREFIX,
    BackupEntry,
    backup_manifest_key,
    check_backup_id,
    list_backups,
    verification_key,
)
from ..common import log, sysinfo
from ..common.prefetch import Prefetch
from ..common.progress import NULL_PROGRESS, Progress
from ..common.result import TaskResult
from ..common.timeutil import format_bytes, format_duration, isoformat, parse_timestamp, utcnow
from ..errors import ArchiverError, ExternalCommandFailed, ObjectNotFound, TaskFailed, UsageError, set_outcome
from ..pg import properties as dbprops
from ..pg.connect import DatabaseMissing
from ..pg.dsn import dsn_env, dsn_has_password, parse_dsn, redact_dsn
from ..pg.stats import CHECKSUM_METHOD, CHECKSUM_METHODS, TableRef
from ..pg.target import (
    TargetFacts,
    clean_database,
    content_stats,
    drop_database,
    drop_extension,
    drop_roles,
    inspect_server,
    inspect_target,
    missing_tables,
    prepare_timescaledb,
    run_in_transaction,
    terminate_sessions,
    timescaledb_post_restore,
)
from ..policy.schema import Policy
from ..runtime.locking import restore_target_lock
from ..storage.backends import open_store
from ..storage.base import Store
from ..storage.documents import ManifestError, read_json
from ..storage.integrity import CheckedObject, ObjectMismatch, precheck, read_verified
from . import props
from .props import TargetUnsuitable

logger = log.get_logger("restore")

HOLD_BACK = 1024 * 1024  # bytes of the dump withheld from pg_restore until the object is proven
SPOOL_MARGIN = 64 * 1024 * 1024
POST_DATA_STEP = ("creating INDEX", "creating CONSTRAINT", "creating FK CONSTRAINT", "creating TRIGGER",
                  "creating RULE", "creating POLICY", "creating INDEX ATTACH", "creating MATERIALIZED VIEW DATA",
                  "creating ACL", "creating COMMENT")
_PROGRAM_MAJOR = re.compile(r"\(PostgreSQL\)\s+(\d+)")
BACKUPS_HINT = "choose another backup (archiver backups list {policy}) with --backup ID"


# -- choosing the backup ------------------------------------------------------------------------

def select_backup(store: Store, *, backup_id: str | None = None, before: datetime | None = None,
                  policy: str = "") -> BackupEntry:
    """The backup to restore: ``backup_id``, else the newest taken before ``before``, else the newest."""
    if backup_id is not None:
        check_backup_id(backup_id)
        try:
            document = read_json(store, backup_manifest_key(backup_id))
        except ObjectNotFound:
            newest = [entry.id for entry in list_backups(store)[:5]]
            raise UsageError(f"no backup {backup_id!r} in {store.describe(BACKUPS_PREFIX)}",
                             hint=f"newest backups: {', '.join(newest)}" if newest else "the store holds no backups"
                             ) from None
        verification = None
        with contextlib.suppress(ObjectNotFound):
            verification = read_json(store, verification_key(backup_id))
        return BackupEntry(backup_id, document, verification)
    backups = list_backups(store)
    if not backups:
        raise UsageError(f"no backups in {store.describe(BACKUPS_PREFIX)}",
                         hint="check storage.url of the policy; only backups with a manifest count")
    if before is None:
        return backups[0]
    earlier = [entry for entry in backups if entry.time < before]
    if not earlier:
        raise UsageError(f"no backup taken before {isoformat(before)}; the oldest is {backups[-1].id} "
                         f"({isoformat(backups[-1].time)})")
    return earlier[0]


def parse_before(text: str) -> datetime:
    try:
        return parse_timestamp(text)
    except ValueError:
        raise UsageError(f"--before: {text!r} is not a timestamp (allowed: ISO 8601, e.g. 2026-11-23T02:00:00Z "
                         "or 2026-11-23)") from None


# -- what the backup holds -----------------------------------------------------------------------

@dataclass(frozen=True)
class Source:
    entry: BackupEntry

    @property
    def document(self) -> dict[str, Any]:
        return self.entry.manifest

    @property
    def dump(self) -> dict[str, Any]:
        objects = self.document.get("objects", {})
        if "dump" not in objects:
            raise ManifestError(f"manifest of backup {self.entry.id} lists no dump object")
        return dict(objects["dump"])

    @property
    def globals(self) -> dict[str, Any] | None:
        entry = self.document.get("objects", {}).get("globals")
        return dict(entry) if entry else None

    @property
    def database(self) -> dict[str, Any]:
        return dict(self.document.get("database", {}))

    @property
    def server_version_num(self) -> int:
        return int(self.database.get("server_version_num", 0))

    @property
    def major(self) -> int:
        return self.server_version_num // 10000

    @property
    def timescaledb(self) -> str | None:
        version = self.document.get("timescaledb_version")
        return str(version) if version else None

    @property
    def extensions(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in self.database.get("extensions", {}).items()}

    @property
    def extension_schemas(self) -> dict[str, str]:
        """Where each extension lived (manifests from before recorded none: public, TimescaleDB's default)."""
        return {str(k): str(v) for k, v in self.database.get("extension_schemas", {}).items()}

    @property
    def tables(self) -> list[dict[str, Any]]:
        return list(self.document.get("content", {}).get("tables", []))

    @property
    def rows(self) -> int:
        return sum(int(table.get("rows", 0)) for table in self.tables)

    @property
    def checksum_method(self) -> str | None:
        """The checksum method of the manifest's tables when this archiver can compute it, else None."""
        method = self.document.get("content", {}).get("method")
        return str(method) if method in CHECKSUM_METHODS else None

    @property
    def pg_dump_major(self) -> int | None:
        match = _PROGRAM_MAJOR.search(str(self.document.get("tools", {}).get("pg_dump", {}).get("version", "")))
        return int(match.group(1)) if match else None

    def describe(self) -> str:
        parts = [f"database {self.database.get('name', '?')} on PostgreSQL {self.database.get('server_version', '?')}"]
        if self.timescaledb:
            parts.append(f"TimescaleDB {self.timescaledb}")
        parts.append(f"{len(self.tables)} tables, {self.rows:,} rows")
        return ", ".join(parts)


# -- the plan ------------------------------------------------------------------------------------

Mode = Literal["stream", "spool"]
Clean = Literal["none", "pg_restore", "drop_all"]


@dataclass
class RestorePlan:
    policy: str
    source: Source
    target_dsn: str
    target: TargetFacts
    pg_restore: dump.Tool
    create_database: bool = False
    mode: Mode = "stream"
    clean: Clean = "none"
    jobs: int = 1
    work_dir: Path | None = None
    space_needed: int = 0
    create_extension: bool = False
    roles: RolesPlan | None = None
    no_tablespaces: bool = False
    kept_tables: list[str] = field(default_factory=list)  # with --clean: target tables the backup lacks
    clean_requested: bool = False  # --clean was given (``clean`` says what it means for this target)
    notes: list[str] = field(default_factory=list)
    globals_script: bytes = b""
    properties: dbprops.DatabaseProperties | None = None  # the source database's, when the manifest records them
    database_options: str = ""  # CREATE DATABASE clauses: the source's encoding and locale
    properties_plan: dbprops.PropertiesPlan | None = None  # run once pg_restore has committed

    @property
    def target_name(self) -> str:
        return parse_dsn(self.target_dsn).get("dbname", "")

    @property
    def single_transaction(self) -> bool:
        return self.jobs == 1

    def steps(self) -> list[str]:
        steps: list[str] = []
        if self.mode == "spool":
            steps.append(f"download the dump to {self.work_dir} and check it in full ({format_bytes(self.space_needed)} "
                         "of space) before anything touches the target")
        if self.create_database:
            steps.append(f"CREATE DATABASE {self.target_name}" + (f" ({self.properties.locale_text()})"
                                                                   if self.properties and self.database_options else ""))
        if self.clean == "drop_all":
            steps.append("drop everything in the target database (schemas, extensions, large objects)")
        if self.roles and self.roles.create:
            steps.append(f"create {len(self.roles.create)} role(s) the target lacks")
        if self.source.timescaledb:
            if self.create_extension:
                steps.append(f"CREATE EXTENSION timescaledb VERSION '{self.source.timescaledb}'")
            steps.append("SELECT timescaledb_pre_restore()")
        how = ("in one transaction, committed only after the dump's SHA-256 matched the manifest"
               if self.mode == "stream" else "in one transaction" if self.single_transaction
               else f"with {self.jobs} jobs (not one transaction)")
        clean = ", --clean --if-exists" if self.clean == "pg_restore" else ""
        steps.append(f"{self.pg_restore.version}{clean}, {how}")
        if self.source.timescaledb:
            steps.append("SELECT timescaledb_post_restore()")
        if self.properties_plan is not None and self.properties_plan.statements:
            steps.append(f"give {self.target_name} the source database's owner, settings, comment and privileges "
                         f"({len(self.properties_plan.statements)} statements)")
        steps.append("count rows on a new connection and compare with the manifest")
        return steps

    def lines(self, now: datetime | None = None) -> list[str]:
        entry, source = self.source.entry, self.source
        age = format_duration((now or utcnow()) - entry.time)
        drill = {"yes": "passed", "failed": "FAILED", "no": "never run"}[entry.verified]
        dump_entry = source.dump
        lines = [
            f"backup   {entry.id}  taken {entry.time:%Y-%m-%d %H:%M:%S} UTC ({age} ago), "
            f"{format_bytes(entry.size)} stored ({format_bytes(int(dump_entry.get('uncompressed_size', 0)))} dump, "
            f"{dump_entry.get('codec', 'none')}), restore drill: {drill}",
            f"source   {source.describe()}",
        ]
        state = "does not exist: it will be created" if self.create_database else (
            "empty" if self.clean == "none" else f"NOT EMPTY: {self.target.contents.describe()}")
        lines.append(f"target   {redact_dsn(self.target_dsn)}: PostgreSQL {self.target.server_version}, {state}")
        if self.clean == "pg_restore":
            kept = ", ".join(self.kept_tables[:10]) + (f" and {len(self.kept_tables) - 10} more"
                                                       if len(self.kept_tables) > 10 else "")
            lines.append("clean    pg_restore --clean drops and re-creates the backup's objects in the same transaction "
                         "(all or nothing)" + (f"; kept, not in the backup: {kept}" if kept else ""))
        elif self.clean == "drop_all":
            lines.append(f"clean    DROPS EVERYTHING in {self.target_name} ({self.target.contents.describe()}) once the "
                         "dump is proven; if pg_restore then fails, the database stays empty")
        if self.roles is not None:
            created = ", ".join(self.roles.create) or "none"
            lines.append(f"roles    creates {len(self.roles.create)} the target lacks: {created}; "
                         f"{len(self.roles.existing)} exist already and are left as they are")
        if self.properties is not None:
            lines += [f"database {text}" for text in self.properties.describe()]
        lines += [f"step     {step}" for step in self.steps()]
        lines += [f"note     {note}" for note in self.notes]
        return lines

    def to_json(self) -> dict[str, Any]:
        return {"backup": self.source.entry.id, "target": redact_dsn(self.target_dsn),
                "create_database": self.create_database, "mode": self.mode, "clean": self.clean, "jobs": self.jobs,
                "steps": self.steps(), "notes": self.notes, "roles": self.roles.to_json() if self.roles else None,
                "database_properties": self.properties.to_json() if self.properties else None,
                "database_statements": self.properties_plan.to_json() if self.properties_plan else None}


def plan_restore(store: Store, entry: BackupEntry, target_dsn: str, *, policy: str = "", clean: bool = False,
                 jobs: int = 1, work_dir: str | None = None, pg_bin_dir: str | None = None,
                 source_dsn: str | None = None) -> RestorePlan:
    """Everything a restore will do, checked against the store and the target; changes nothing."""
    source = Source(entry)
    if not parse_dsn(target_dsn).get("dbname"):
        raise UsageError(f"--target {redact_dsn(target_dsn)} names no database",
                         hint="add dbname=... (a database that does not exist yet is created)")
    if jobs < 1:
        raise UsageError(f"--jobs must be at least 1 (got {jobs})")
    for name in ("dump", "globals"):
        object_entry = source.dump if name == "dump" else source.globals
        if object_entry is not None:
            _precheck(store, object_entry, f"the {name} object of backup {entry.id}", policy)
    extensions = sorted(set(source.extensions) - {"plpgsql"})
    try:
        target = inspect_target(target_dsn, extensions)
        create_database = False
    except DatabaseMissing:
        target = inspect_server(target_dsn, extensions)
        create_database = True
    tool = _pg_restore_tool(source, target, pg_bin_dir)
    plan = RestorePlan(policy, source, target_dsn, target, tool, create_database=create_database, jobs=jobs,
                       clean_requested=clean)
    _check_versions(plan)
    _check_contents(plan, clean)
    _check_privileges(plan)
    _plan_roles(plan, store)
    props.plan_properties(plan)
    _plan_mode(plan, work_dir)
    if source_dsn is not None and _same_database(source_dsn, target_dsn):
        plan.notes.insert(0, "the target IS the policy's own database (same host, port and dbname)")
    if entry.verified == "failed":
        plan.notes.append("the newest restore drill of this backup FAILED: " + BACKUPS_HINT.format(policy=policy))
    return plan


def _precheck(store: Store, entry: dict[str, Any], what: str, policy: str) -> None:
    try:
        precheck(store, entry, what)
    except ObjectMismatch as exc:
        exc.hint = "nothing was written to the target; " + BACKUPS_HINT.format(policy=policy)
        raise


def _pg_restore_tool(source: Source, target: TargetFacts, pg_bin_dir: str | None) -> dump.Tool:
    tool = dump.find_tool("pg_restore", target.server_version_num, pg_bin_dir)
    dumped_by = source.pg_dump_major
    if dumped_by is not None and tool.major < dumped_by:
        raise TargetUnsuitable(f"{tool.path} is PostgreSQL {tool.major}; the dump was written by pg_dump {dumped_by}, "
                               "whose archive format an older pg_restore cannot read",
                               hint=f"install postgresql-client-{dumped_by} (Debian/Ubuntu) or postgresql{dumped_by} "
                                    "(RHEL), or point database.pg_bin_dir at its bin directory")
    return tool


def _check_versions(plan: RestorePlan) -> None:
    source, target = plan.source, plan.target
    target_major = target.server_version_num // 10000
    if target_major < source.major:
        raise TargetUnsuitable(
            f"the target runs PostgreSQL {target.server_version}, older than the backup's source "
            f"(PostgreSQL {source.database.get('server_version', source.major)}): a dump does not restore into an "
            "older major version", hint=f"restore into a PostgreSQL {source.major} (or newer) server")
    version = source.timescaledb
    if version:
        available = target.available.get("timescaledb", [])
        if version not in available:
            have = f"available there: {', '.join(available)}" if available else "TimescaleDB is not installed there"
            raise TargetUnsuitable(
                f"the target server cannot create TimescaleDB {version}, the version the backup was taken with ({have})",
                hint=f"install timescaledb {version} for PostgreSQL {target_major} (package "
                     f"timescaledb-2-postgresql-{target_major}={version}* on Debian/Ubuntu, "
                     f"timescaledb-2-postgresql-{target_major}-{version} on RHEL), then restart the server")
        if "timescaledb" not in target.preload_libraries:
            raise TargetUnsuitable(
                "the target server does not preload TimescaleDB (shared_preload_libraries = "
                f"'{','.join(target.preload_libraries)}')",
                hint="add timescaledb to shared_preload_libraries in postgresql.conf and restart the server")
    missing = [name for name in sorted(source.extensions) if name not in ("plpgsql", "timescaledb")
               and name not in target.available]
    if missing:
        raise TargetUnsuitable(f"the target server cannot create extension(s) the backup uses: {', '.join(missing)}",
                               hint=f"install them for PostgreSQL {target_major} (contrib modules come with the "
                                    f"postgresql-contrib package), then retry")
    if (older := older_minor_release(plan)) is not None:
        plan.notes.append(older)


UNRECOGNIZED_PARAMETER = "unrecognized configuration parameter"


def older_minor_release(plan: RestorePlan) -> str | None:
    """Why a target on an older minor release of the source's major may fail, or None.

    Minor releases keep the dump format, so this is a warning and not a refusal (at 3 a.m. the
    replica at hand may be a few minors behind, and the single-transaction restore leaves the
    target as it was if it fails); but a newer minor can know settings an older one does not
    (pg_restore then stops on "unrecognized configuration parameter").
    """
    source, target = plan.source, plan.target
    if target.server_version_num // 10000 != source.major or target.server_version_num >= source.server_version_num:
        return None
    dumped_by = str(source.document.get("tools", {}).get("pg_dump", {}).get("version", "")).strip()
    return (f"the target runs PostgreSQL {_minor_version_text(target.server_version_num)}, an older minor release "
            f"than the backup's source (PostgreSQL {_minor_version_text(source.server_version_num)}"
            + (f", dumped by {dumped_by}" if dumped_by else "") + "): a setting only the newer release knows makes "
            f"pg_restore fail with \"{UNRECOGNIZED_PARAMETER}\"; update the target to "
            f"{_minor_version_text(source.server_version_num)} or later to be sure")


def likely_cause(plan: RestorePlan, exc: BaseException) -> str | None:
    """A known cause of a pg_restore failure, for the error message: an older minor release."""
    if isinstance(exc, ExternalCommandFailed) and UNRECOGNIZED_PARAMETER in exc.stderr_tail:
        older = older_minor_release(plan)
        return f"likely cause: {older}" if older else None
    return None


def _minor_version_text(version_num: int) -> str:
    return f"{version_num // 10000}.{version_num % 10000}"


def _check_contents(plan: RestorePlan, clean: bool) -> None:
    contents, version = plan.target.contents, plan.source.timescaledb
    allowed = {"timescaledb": version} if version else {}
    if contents.is_empty(ignoring_extensions=allowed):
        plan.create_extension = bool(version) and "timescaledb" not in contents.extensions
        if clean:
            plan.notes.append("--clean has nothing to drop: the target is empty")
        return
    if not clean:
        raise TargetUnsuitable(
            f"the target database {plan.target_name} is not empty ({contents.describe()}): refusing to restore over it",
            hint="restore into a new database (name one that does not exist and archiver creates it), or add --clean "
                 "to replace what is there")
    if version:
        plan.clean = "drop_all"
        plan.create_extension = True
    else:
        plan.clean = "pg_restore"
        backup_tables = {f"{t['schema']}.{t['name']}" for t in plan.source.tables}
        plan.kept_tables = [name for name in contents.tables if name not in backup_tables]


def recheck_target(plan: RestorePlan) -> None:
    """Under the target's lock: the target is still as the plan found it, or TargetUnsuitable (exit 2).

    Between the plan and the lock another restore may have created and filled the database, or
    someone may have emptied or dropped it. A database that appeared empty is restored into but
    is not this run's to drop.
    """
    changed = "the target changed after the plan was made (another restore?); nothing was written"
    extensions = sorted(set(plan.source.extensions) - {"plpgsql"})
    try:
        facts = inspect_target(plan.target_dsn, extensions)
    except DatabaseMissing:
        if plan.create_database:
            return
        raise TargetUnsuitable(f"database {plan.target_name} no longer exists; it did when the plan was made",
                               hint="rerun the restore to see a new plan; nothing was written") from None
    fresh = dataclasses.replace(plan, target=facts, create_database=False, clean="none", create_extension=False,
                                kept_tables=[], notes=[])
    try:
        _check_contents(fresh, plan.clean_requested)
    except TargetUnsuitable as exc:
        exc.hint = f"{changed}; {exc.hint}"  # the plan passed this same check
        raise
    if (fresh.clean, fresh.create_extension) != (plan.clean, plan.create_extension):
        now = "empty" if fresh.clean == "none" else f"not empty ({facts.contents.describe()})"
        raise TargetUnsuitable(f"the target database {plan.target_name} is now {now}, unlike when the plan was made",
                               hint=f"{changed}; rerun the restore to see a new plan")
    if plan.create_database:
        plan.create_database = False
        plan.notes.append(f"database {plan.target_name} was created by someone else after the plan, empty: restored "
                          "into it, and never dropped by this run")
    plan.target, plan.kept_tables = facts, fresh.kept_tables


def _check_privileges(plan: RestorePlan) -> None:
    target = plan.target
    if plan.create_database and not (target.superuser or target.create_db):
        raise TargetUnsuitable(f"database {plan.target_name} does not exist and role {target.user} may not create it",
                               hint="create it first (CREATE DATABASE ... TEMPLATE template0) or connect as a role "
                                    "with CREATEDB")


def _plan_roles(plan: RestorePlan, store: Store) -> None:
    entry = plan.source.globals
    if entry is None:
        plan.notes.append("the backup holds no roles (backup.globals: false): roles that own objects must exist "
                          "on the target")
        return
    plan.globals_script = read_verified(store, entry, f"the globals object of backup {plan.source.entry.id}")
    plan.roles = plan_roles(plan.globals_script.decode("utf-8", "replace"), plan.target.roles,
                            superuser=plan.target.superuser)
    if plan.roles.create and not (plan.target.superuser or plan.target.create_role):
        raise TargetUnsuitable(f"the target lacks role(s) {', '.join(plan.roles.create)} of the backup and "
                               f"{plan.target.user} may not create roles",
                               hint="create them first, or connect as a role with CREATEROLE")
    missing_spaces = sorted(set(plan.roles.tablespaces) - plan.target.tablespaces)
    if missing_spaces:
        plan.no_tablespaces = True
        plan.notes.append(f"tablespace(s) {', '.join(missing_spaces)} of the source do not exist on the target: "
                          "everything goes to the default tablespace (pg_restore --no-tablespaces)")
    plan.notes += [f"not run from the globals object: {text}" for text in plan.roles.skipped]


def _plan_mode(plan: RestorePlan, work_dir: str | None) -> None:
    if plan.jobs > 1 and plan.source.timescaledb:
        raise UsageError("--jobs: a TimescaleDB backup restores with one job (parallel pg_restore breaks "
                         "TimescaleDB's catalog, as its documentation warns)", hint="leave out --jobs")
    if plan.jobs == 1 and plan.clean != "drop_all":
        return
    plan.mode = "spool"
    plan.work_dir = Path(work_dir or tempfile.gettempdir())
    plan.space_needed = int(plan.source.dump.get("uncompressed_size") or 0) + SPOOL_MARGIN
    try:
        free = shutil.disk_usage(plan.work_dir).free
    except OSError as exc:
        raise UsageError(f"--work-dir {plan.work_dir}: {exc.strerror}") from None
    reason = f"--jobs {plan.jobs} needs a seekable file" if plan.jobs > 1 else \
        "--clean of a TimescaleDB target drops everything first, so the dump is proven before that"
    if free < plan.space_needed:
        raise TargetUnsuitable(f"{reason}: the dump needs {format_bytes(plan.space_needed)} in {plan.work_dir}, which has "
                               f"{format_bytes(free)} free", hint="choose a directory with room: --work-dir DIR")
    plan.notes.append(f"{reason}: spooled to {plan.work_dir} ({format_bytes(plan.space_needed)} needed, "
                      f"{format_bytes(free)} free) and deleted afterwards")
    if plan.jobs > 1:
        plan.notes.append(f"pg_restore --jobs {plan.jobs} is not one transaction: if it fails midway the target holds "
                          "a partial restore" + (" (archiver then drops the database it created)"
                                                 if plan.create_database else ""))


def _same_database(a: str, b: str) -> bool:
    def key(dsn: str) -> tuple[str, str, str]:
        params = parse_dsn(dsn)
        return params.get("host", ""), params.get("port", "5432"), params.get("dbname", "")
    try:
        return key(a) == key(b)
    except UsageError:
        return False


# -- running it ------------------------------------------------------------------------------------

@dataclass
class RestoreOutcome:
    seconds: float = 0.0  # from the first write to the target to post_restore: the achieved RTO
    download_seconds: float = 0.0  # until the dump object was completely read and proven
    load_seconds: float = 0.0  # until pg_restore had every byte (data loaded)
    post_data_seconds: float = 0.0  # indexes, constraints, ... after the last byte, and commit
    stored_bytes: int = 0
    dump_bytes: int = 0
    roles_created: list[str] = field(default_factory=list)
    created_database: bool = False  # this run created the target database (so only this run may drop it)
    started_at: datetime = field(default_factory=utcnow)
    properties_failed: list[tuple[str, str]] = field(default_factory=list)  # (statement, error)

    def durations(self) -> dict[str, float]:
        return {"restore": round(self.seconds, 3), "download": round(self.download_seconds, 3),
                "load": round(self.load_seconds, 3), "post_data": round(self.post_data_seconds, 3)}


class _Undo:
    """What to take back if the restore fails before pg_restore commits (newest first).

    ``irreversible`` says what cannot be taken back (what --clean dropped, a partial --jobs restore).
    """

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], None]]] = []
        self.irreversible: str | None = None

    @property
    def pending(self) -> bool:
        return bool(self._steps)

    def add(self, what: str, action: Callable[[], None]) -> None:
        self._steps.append((what, action))

    def clear(self) -> None:
        self._steps.clear()

    def run(self) -> tuple[list[str], list[str]]:
        """Every step, newest first; what was done and what failed."""
        return self._run(list(reversed(self._steps)))

    def run_in_order(self) -> tuple[list[str], list[str]]:
        """Every step, in the order added (a database before the roles that own objects in it)."""
        return self._run(list(self._steps))

    def _run(self, steps: list[tuple[str, Callable[[], None]]]) -> tuple[list[str], list[str]]:
        done, failed = [], []
        for what, action in steps:
            try:
                action()
                done.append(what)
            except Exception as exc:
                failed.append(f"{what}: {log.scrub(str(exc))}")
                logger.warning("restore.undo_failed", extra=log.fields(step=what, error=log.scrub(str(exc))))
        self._steps.clear()
        return done, failed


class _StepCounter:
    """Counts pg_restore's --verbose lines about post-data steps (from its stderr thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0

    def __call__(self, line: str) -> None:
        if any(marker in line for marker in POST_DATA_STEP):
            with self._lock:
                self._count += 1

    def take(self) -> int:
        with self._lock:
            count, self._count = self._count, 0
        return count


def execute_restore(plan: RestorePlan, store: Store, *, progress: Progress = NULL_PROGRESS) -> RestoreOutcome:
    """Carry out a plan. On a failure before pg_restore commits, the target is put back as it was.

    The caller holds the target's lock (``archiver restore``) or owns the server (a drill's scratch instance).
    """
    outcome = RestoreOutcome(stored_bytes=int(plan.source.dump["size"]),
                             dump_bytes=int(plan.source.dump.get("uncompressed_size") or 0))
    undo = _Undo()
    clock = time.monotonic()
    app_name = f"archiver restore {plan.source.entry.id}"
    with contextlib.ExitStack() as stack:
        spool_file: Path | None = None
        try:
            if plan.mode == "spool":
                spool_file = stack.enter_context(_spooled(plan, store, progress, outcome, clock))
                clock = time.monotonic()  # the target is untouched until here
            if plan.create_database:
                props.create_database(plan)
                outcome.created_database = True
                undo.add(f"dropped database {plan.target_name}", lambda: drop_database(plan.target_dsn))
            if plan.clean == "drop_all":
                clean_database(plan.target_dsn)
                undo.clear()
                undo.irreversible = "--clean emptied the target database, and it stays empty"
            _create_roles(plan, undo, outcome)
            _prepare_timescaledb(plan, undo)
            env = dump.child_env(dsn_env(plan.target_dsn), app_name)
            argv = dump.pg_restore_argv(plan.pg_restore.path, dbname=plan.target_name,
                                        single_transaction=plan.single_transaction, clean=plan.clean == "pg_restore",
                                        jobs=plan.jobs, no_tablespaces=plan.no_tablespaces, archive=spool_file)
            logger.info("restore.pg_restore", extra=log.fields(backup_id=plan.source.entry.id, argv=argv))
            if spool_file is None:
                _stream_restore(plan, store, argv, env, progress, outcome, clock)
            else:
                if not plan.single_transaction and not plan.create_database:
                    undo.clear()  # objects pg_restore commits may depend on the roles and the extension
                    undo.irreversible = "pg_restore --jobs is not one transaction: the target may hold a partial restore"
                _file_restore(plan, argv, env, progress, outcome, clock)
        except BaseException as exc:
            _take_back(plan, undo, app_name, exc)
            raise
    undo.clear()
    if plan.source.timescaledb:
        try:
            timescaledb_post_restore(plan.target_dsn)  # a new connection, as TimescaleDB asks
        except ArchiverError as exc:
            raise TaskFailed(f"the restore committed, but timescaledb_post_restore() failed: {exc}",
                             hint="run SELECT timescaledb_post_restore(); in the target database") from None
    outcome.properties_failed = props.apply_properties(plan)
    outcome.seconds = time.monotonic() - clock
    return outcome


def _create_roles(plan: RestorePlan, undo: _Undo, outcome: RestoreOutcome) -> None:
    if plan.roles is None or not plan.roles.create:
        return
    run_in_transaction(plan.target_dsn, plan.roles.statements)
    outcome.roles_created = list(plan.roles.create)
    undo.add(f"dropped {len(plan.roles.create)} role(s) it had created",
             lambda: drop_roles(plan.target_dsn, plan.roles.create if plan.roles else []))


def _prepare_timescaledb(plan: RestorePlan, undo: _Undo) -> None:
    version = plan.source.timescaledb
    if not version:
        return
    schema = plan.source.extension_schemas.get("timescaledb", "public")
    if schema not in plan.target.contents.schemas:
        schema = "public"  # the dump creates its other schemas itself; TimescaleDB must exist before it
    prepare_timescaledb(plan.target_dsn, version, create=plan.create_extension, schema=schema)
    if plan.create_extension:
        undo.add("dropped the timescaledb extension it had created", lambda: drop_extension(plan.target_dsn,
                                                                                                "timescaledb"))
    else:
        undo.add("ran timescaledb_post_restore()", lambda: timescaledb_post_restore(plan.target_dsn))


def _take_back(plan: RestorePlan, undo: _Undo, app_name: str, exc: BaseException) -> None:
    """Undo the steps before pg_restore's commit, and say in the error what state the target is in."""
    if undo.pending:
        with contextlib.suppress(Exception):  # a killed pg_restore's backend may still hold its locks
            terminate_sessions(plan.target_dsn, app_name)
    done, failed = undo.run()
    parts = []
    if done:
        parts.append("the target was put back as it was (" + "; ".join(done) + ")")
    if failed:
        parts.append("could not put the target back completely: " + "; ".join(failed))
    if undo.irreversible:
        parts.append(undo.irreversible)
    state = "; ".join(parts) or "nothing was written to the target"
    logger.error("restore.failed", extra=log.fields(backup_id=plan.source.entry.id, error=log.scrub(str(exc)),
                                                    target_state=state))
    if (cause := likely_cause(plan, exc)) is not None:
        state += f"; {cause}"
    if isinstance(exc, ExternalCommandFailed) and "max_locks_per_transaction" in exc.stderr_tail:
        state += ("; the restore runs in one transaction and holds a lock per table, index and chunk: raise "
                  "max_locks_per_transaction on the target (a restart), or for a plain database use --jobs 2")
    if isinstance(exc, KeyboardInterrupt):  # SIGINT/SIGTERM: the CLI says what state the target is in
        set_outcome(exc, state)
    if isinstance(exc, ArchiverError):
        exc.hint = f"{exc.hint}; {state}" if exc.hint else state
        if isinstance(exc, ObjectMismatch):
            exc.hint += "; " + BACKUPS_HINT.format(policy=plan.policy)


class _Withheld:
    """Passes chunks on but always keeps the last ``size`` bytes back."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._chunks: deque[bytes] = deque()
        self._held = 0

    def push(self, chunk: bytes) -> Iterator[bytes]:
        self._chunks.append(chunk)
        self._held += len(chunk)
        while self._chunks and self._held - len(self._chunks[0]) >= self.size:
            first = self._chunks.popleft()
            self._held -= len(first)
            yield first

    def rest(self) -> Iterator[bytes]:
        while self._chunks:
            yield self._chunks.popleft()
        self._held = 0


def _stream_restore(plan: RestorePlan, store: Store, argv: list[str], env: dict[str, str], progress: Progress,
                    outcome: RestoreOutcome, clock: float) -> None:
    """Object -> decompressor -> pg_restore's stdin; the tail is released only once the object is proven."""
    what = f"restore of backup {plan.source.entry.id} into {plan.target_name} failed"
    steps = _StepCounter()
    progress.phase(f"restore {plan.target_name}: download and load", total=outcome.dump_bytes or None)
    with CheckedObject(store, plan.source.dump, f"the dump object of backup {plan.source.entry.id}") as obj, \
            Prefetch(obj.chunks(), depth=4, close_source=False) as chunks, \
            dump.FeedingCommand(argv, env, "pg_restore", what=what, on_line=steps) as child:
        withheld = _Withheld(HOLD_BACK)
        accepted = True
        for chunk in chunks:
            for piece in withheld.push(chunk):
                accepted = child.write(piece)
                if not accepted:
                    break
            progress.advance(len(chunk))
            if not accepted:
                break
        if not accepted:
            _explain_early_exit(plan, obj, chunks, child, progress)
        obj.finish()  # raises on any mismatch: pg_restore is killed and its transaction rolls back
        outcome.download_seconds = time.monotonic() - clock
        for piece in withheld.rest():
            if not child.write(piece):
                break
        outcome.load_seconds = time.monotonic() - clock
        progress.phase(f"restore {plan.target_name}: indexes, constraints, commit", unit="steps")
        child.finish(while_waiting=lambda: progress.advance(steps.take()))
    progress.done()
    outcome.post_data_seconds = time.monotonic() - clock - outcome.load_seconds


def _explain_early_exit(plan: RestorePlan, obj: CheckedObject, chunks: Prefetch[bytes], child: dump.FeedingCommand,
                        progress: Progress) -> None:
    """pg_restore stopped reading before the end: was the object damaged, or did the restore fail?"""
    progress.phase("checking the rest of the dump object to explain pg_restore's failure",
                   total=int(plan.source.dump.get("uncompressed_size") or 0) or None)
    mismatch = obj.read_rest_and_check(chunks)
    progress.done()
    try:
        child.finish()
    except ExternalCommandFailed as failure:
        if mismatch is not None:
            last = (failure.stderr_tail.strip().splitlines() or [""])[-1]
            mismatch.message += f"\n(pg_restore stopped on it: {last})"
            raise mismatch from None
        raise
    if mismatch is not None:
        raise mismatch
    raise TaskFailed("pg_restore exited before it had read the whole dump (the dump matched its manifest): "
                     "this should not happen with a complete custom-format dump", hint="report it; rerun with --jobs 1")


@contextlib.contextmanager
def _spooled(plan: RestorePlan, store: Store, progress: Progress, outcome: RestoreOutcome,
             clock: float) -> Iterator[Path]:
    """The dump decompressed into a private temp directory, proven complete; removed afterwards."""
    assert plan.work_dir is not None
    directory = Path(tempfile.mkdtemp(prefix="archiver-restore-", dir=plan.work_dir))
    try:
        path = directory / "dump.pgdump"
        progress.phase(f"download {plan.source.entry.id} to {directory}", total=outcome.dump_bytes or None)
        with CheckedObject(store, plan.source.dump, f"the dump object of backup {plan.source.entry.id}") as obj, \
                open(path, "wb") as out:
            for chunk in obj.chunks():
                out.write(chunk)
                progress.advance(len(chunk))
            obj.finish()
        progress.done()
        outcome.download_seconds = time.monotonic() - clock
        yield path
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _file_restore(plan: RestorePlan, argv: list[str], env: dict[str, str], progress: Progress,
                  outcome: RestoreOutcome, clock: float) -> None:
    what = f"restore of backup {plan.source.entry.id} into {plan.target_name} failed"
    steps = _StepCounter()
    progress.phase(f"restore {plan.target_name}: pg_restore" + (f" --jobs {plan.jobs}" if plan.jobs > 1 else ""),
                   unit="steps")
    with dump.FeedingCommand(argv, env, "pg_restore", what=what, on_line=steps) as child:
        child.finish(while_waiting=lambda: progress.advance(steps.take()))
    progress.done()
    outcome.load_seconds = time.monotonic() - clock


# -- comparing with the manifest ------------------------------------------------------------------

@dataclass(frozen=True)
class TableCheck:
    table: str
    expected_rows: int
    rows: int | None  # None: the table is missing
    expected_checksum: str | None = None
    checksum: str | None = None

    @property
    def ok(self) -> bool:
        return self.rows == self.expected_rows and (self.expected_checksum is None or
                                                    self.checksum == self.expected_checksum)

    def describe(self) -> str:
        if self.rows is None:
            return f"{self.table}: missing (the manifest has {self.expected_rows:,} rows)"
        text = f"{self.table}: {self.rows:,} rows (manifest {self.expected_rows:,})"
        if self.expected_checksum is not None:
            text += ", checksum " + ("matches" if self.checksum == self.expected_checksum else
                                     f"{self.checksum} (manifest {self.expected_checksum})")
        return text

    def to_json(self) -> dict[str, Any]:
        return {"table": self.table, "ok": self.ok, "expected_rows": self.expected_rows, "rows": self.rows,
                "expected_checksum": self.expected_checksum, "checksum": self.checksum}


def compare_tables(dsn: str, source: Source, *, checksums: bool) -> list[TableCheck]:
    """Every table of the manifest, counted in the restored database (and checksummed, if asked and recorded)."""
    refs = {f"{t['schema']}.{t['name']}": (TableRef.from_json(t), t) for t in source.tables}
    missing = {ref.qualified_name for ref in missing_tables(dsn, [ref for ref, _ in refs.values()])}
    method = source.checksum_method
    use_checksums = checksums and method is not None
    present = [ref for name, (ref, _) in refs.items() if name not in missing]
    stats = {item.table.qualified_name: item for item in content_stats(
        dsn, checksums=use_checksums, tables=present, method=method or CHECKSUM_METHOD).tables}
    results = []
    for name, (_, recorded) in refs.items():
        counted = stats.get(name)
        expected_checksum = recorded.get("checksum") if use_checksums else None
        results.append(TableCheck(name, int(recorded.get("rows", 0)), counted.rows if counted else None,
                                  expected_checksum, counted.checksum if counted and use_checksums else None))
    return results


# -- archiver restore ----------------------------------------------------------------------------

@dataclass(frozen=True)
class RestoreRequest:
    target: str
    backup_id: str | None = None
    before: datetime | None = None
    clean: bool = False
    jobs: int = 1
    work_dir: str | None = None
    dry_run: bool = False
    checksums: bool = False
    target_in_argv: bool = True  # the DSN was typed on the command line (visible in ps), not read from the environment


Confirm = Callable[[RestorePlan], bool]


def run_restore(policy: Policy, request: RestoreRequest, *, confirm: Confirm, progress: Progress = NULL_PROGRESS,
                store: Store | None = None) -> TaskResult:
    """``archiver restore``: plan, confirm, restore, count. A data mismatch after the restore gives exit 4."""
    if request.backup_id is not None and request.before is not None:
        raise UsageError("--backup and --before exclude each other: name one backup, or a time to restore to")
    log.register_secret(parse_dsn(request.target, source="--target").get("password"))
    if request.target_in_argv:
        refuse_password_in_argv(request.target)
    store = store or open_store(policy.storage)
    entry = select_backup(store, backup_id=request.backup_id, before=request.before, policy=policy.name or "")
    plan = plan_restore(store, entry, request.target, policy=policy.name or "", clean=request.clean,
                        jobs=request.jobs, work_dir=request.work_dir, pg_bin_dir=policy.database.pg_bin_dir,
                        source_dsn=_source_dsn(policy))
    if request.dry_run:
        return TaskResult(policy=policy.name or "", task="restore", summary="dry run: nothing was changed",
                          lines=plan.lines(), data={"plan": plan.to_json(), "dry_run": True})
    if not confirm(plan):
        raise TaskFailed("restore not confirmed: nothing was changed")
    logger.info("restore.start", extra=log.fields(policy=policy.name, backup_id=entry.id,
                                                  target=redact_dsn(request.target), mode=plan.mode))
    with restore_target_lock(policy, plan.target_dsn):
        recheck_target(plan)
        outcome = execute_restore(plan, store, progress=progress)
        clock = time.monotonic()
        progress.phase("counting rows", total=len(plan.source.tables), unit="tables")
        try:
            checks = compare_tables(request.target, plan.source, checksums=request.checksums)
            matviews = props.compare_matviews(request.target, plan.source)
        except BaseException as exc:
            _withdraw_unproven(plan, outcome, exc)
            raise
        progress.done()
        aftermath = _withdraw_unproven(plan, outcome) if any(not check.ok for check in checks) else None
    return _restore_result(policy, plan, outcome, checks, matviews, time.monotonic() - clock, aftermath)


def check_target_dsn(dsn: str, *, source: str, typed: bool) -> None:
    """A target DSN from the user: it must parse (the error names ``source``, never the DSN's
    text), its password is scrubbed from logs, and one typed on the command line holds none."""
    params = parse_dsn(dsn, source=source)
    log.register_secret(params.get("password"))
    if typed:
        refuse_password_in_argv(dsn)


def _withdraw_unproven(plan: RestorePlan, outcome: RestoreOutcome, exc: BaseException | None = None) -> str:
    """A committed restore the manifest does not vouch for: drop what this run created, say what stays.

    Only a database this run created is dropped (with the roles it created); a database that
    existed before keeps what pg_restore committed, and the returned text says so.
    """
    name = plan.target_name
    if outcome.created_database:
        undo = _Undo()
        undo.add(f"dropped database {name}, which this restore had created", lambda: drop_database(plan.target_dsn))
        if outcome.roles_created:
            roles = list(outcome.roles_created)
            undo.add(f"dropped the {len(roles)} role(s) it had created ({', '.join(roles)})",
                     lambda: drop_roles(plan.target_dsn, roles))
        done, failed = undo.run_in_order()
        state = "; ".join(done + [f"could not undo: {text}" for text in failed])
    else:
        roles = f"; roles it created stay too: {', '.join(outcome.roles_created)}" if outcome.roles_created else ""
        state = (f"the restored objects stay in database {name}, which existed before this restore, so archiver does "
                 f"not drop it{roles}; drop them, or restore another backup with --clean")
    logger.error("restore.unproven", extra=log.fields(backup_id=plan.source.entry.id, target_state=state,
                                                      error=log.scrub(str(exc)) if exc else "rows differ"))
    if isinstance(exc, ArchiverError):
        exc.hint = f"{exc.hint}; {state}" if exc.hint else state
    return state


def refuse_password_in_argv(dsn: str) -> None:
    """A DSN typed on the command line must not carry a password: ``ps`` shows it to every local user."""
    if dsn_has_password(dsn):
        raise UsageError("--target holds a password, which every local user can read in the process list; "
                         "refusing to use it",
                         hint="leave the password out and use PGPASSWORD or ~/.pgpass, or pass the whole DSN in "
                              "ARCHIVER_RESTORE_TARGET instead of --target")


def _source_dsn(policy: Policy) -> str | None:
    try:
        return policy.database.resolved_dsn()
    except ArchiverError:
        return None


def _restore_result(policy: Policy, plan: RestorePlan, outcome: RestoreOutcome, checks: list[TableCheck],
                    matviews: list[props.MatviewCheck], count_seconds: float,
                    aftermath: str | None = None) -> TaskResult:
    bad = [check for check in checks if not check.ok]
    rows = sum(check.rows or 0 for check in checks)
    compared = "row counts and checksums" if any(c.expected_checksum for c in checks) else "row counts"
    lines = [f"restored backup {plan.source.entry.id} into {redact_dsn(plan.target_dsn)}: "
             f"{len(checks)} tables, {rows:,} rows" + (f", {len(outcome.roles_created)} roles created"
                                                       if outcome.roles_created else "")]
    if bad:
        lines.append(f"MISMATCH {len(bad)} of {len(checks)} tables differ from the manifest's {compared}:")
        lines += [f"  {check.describe()}" for check in bad]
        lines.append(f"the restore is unproven: {aftermath}")
    else:
        lines.append(f"{compared}: all {len(checks)} tables match the manifest")
    lines += _properties_lines(plan, outcome)
    lines += props.matview_lines(matviews)
    lines.append(f"time: restore {outcome.seconds:.1f}s (the achieved RTO; dump proven after "
                 f"{outcome.download_seconds:.1f}s, data loaded after {outcome.load_seconds:.1f}s, then "
                 f"{outcome.post_data_seconds:.1f}s of indexes, constraints and commit); counting {count_seconds:.1f}s")
    metrics = {"bytes": float(outcome.stored_bytes), "dump_bytes": float(outcome.dump_bytes), "rows": float(rows),
               "tables": float(len(checks)), "tables_mismatched": float(len(bad)),
               "duration_seconds": round(outcome.seconds, 3), "count_seconds": round(count_seconds, 3),
               "peak_rss_bytes": float(sysinfo.peak_rss_bytes())}
    logger.info("restore.done", extra=log.fields(policy=policy.name, backup_id=plan.source.entry.id,
                                                 mismatched=len(bad), metrics=metrics, durations=outcome.durations()))
    summary = (f"restore of {plan.source.entry.id} into {plan.target_name}: "
               + (f"{len(bad)} of {len(checks)} tables DIFFER from the manifest ({aftermath})" if bad else
                  f"{len(checks)} tables, {rows:,} rows, matching the manifest") + f", RTO {outcome.seconds:.1f}s")
    if outcome.properties_failed:
        summary += f"; {len(outcome.properties_failed)} of the source database's properties NOT applied (see above)"
    status = "verification_failed" if bad else "held_back" if outcome.properties_failed else "ok"
    return TaskResult(policy=policy.name or "", task="restore", status=status,
                      summary=summary, lines=lines, metrics=metrics,
                      data={"backup": plan.source.entry.id, "plan": plan.to_json(), "durations": outcome.durations(),
                            "tables": [check.to_json() for check in checks], "unproven": aftermath,
                            "materialized_views": [check.to_json() for check in matviews],
                            "database_properties_failed": [{"statement": statement, "error": error}
                                                           for statement, error in outcome.properties_failed]})


def _properties_lines(plan: RestorePlan, outcome: RestoreOutcome) -> list[str]:
    """What became of the source database's properties (nothing when the manifest records none)."""
    if plan.properties is None or not plan.create_database:
        return []
    statements = plan.properties_plan.statements if plan.properties_plan else []
    applied = len(statements) - len(outcome.properties_failed)
    lines = [f"database {plan.properties.locale_text()}; {applied} of {len(statements)} statements for its owner, "
             "settings, comment and privileges applied"]
    lines += [f"NOT APPLIED {statement}: {error}" for statement, error in outcome.properties_failed]
    return lines
