"""Planning a restore, read-only: every refusal happens here, before anything is written.

Pick the backup, check that its objects exist with the sizes the manifest records, read and check
the small globals object in full, and inspect the target: server version, extensions it can
create, roles, whether it is empty. Under the target's lock, :func:`recheck_target` makes sure the
target is still as the plan found it.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..backup.globals import plan_roles
from ..backup.manifest import BackupEntry
from ..common.timeutil import format_bytes
from ..errors import UsageError
from ..pg.connect import DatabaseMissing
from ..pg.dsn import parse_dsn, redact_dsn
from ..pg.target import inspect_server, inspect_target
from ..storage.base import Store
from ..storage.integrity import ObjectMismatch, precheck, read_verified
from . import props
from .planned import RestorePlan
from .props import TargetUnsuitable
from .select import BACKUPS_HINT, Source
from .versions import check_versions, pg_restore_tool

SPOOL_MARGIN = 64 * 1024 * 1024


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
    tool = pg_restore_tool(source, target, pg_bin_dir)
    plan = RestorePlan(policy, source, target_dsn, target, tool, create_database=create_database, jobs=jobs,
                       clean_requested=clean)
    check_versions(plan)
    _check_contents(plan, clean)
    _check_privileges(plan)
    _plan_roles(plan, store)
    props.plan_properties(plan)
    _plan_mode(plan, work_dir)
    _check_locks(plan)
    if source_dsn is not None and _same_database(source_dsn, target_dsn):
        plan.notes.insert(0, "the target IS the policy's own database (same host, port and dbname)")
    if entry.verified == "failed":
        plan.notes.append("the newest restore drill of this backup FAILED: " + BACKUPS_HINT.format(policy=policy))
    return plan


# Other sessions hold locks too: a restore may count on this share of the lock table.
LOCK_SHARE = 0.8


def _check_locks(plan: RestorePlan) -> None:
    """A restore in one transaction holds a lock per relation until it commits; a target whose
    lock table is too small fails at the end ("out of shared memory") after all the work: refuse
    now, naming the setting and the value to raise it to."""
    target, needed = plan.target, plan.source.locks_needed
    if not plan.single_transaction or not target.lock_slots or needed <= target.lock_slots * LOCK_SHARE:
        return
    sessions = target.lock_slots // max(target.max_locks_per_transaction, 1)
    enough = math.ceil(needed / LOCK_SHARE / max(sessions, 1))
    raise TargetUnsuitable(
        f"the restore runs in one transaction and needs about {needed:,} locks (one per table, index and chunk of "
        f"the backup); the target's lock table holds {target.lock_slots:,} (max_locks_per_transaction "
        f"{target.max_locks_per_transaction} x {sessions} connections and prepared transactions)",
        hint=f"set max_locks_per_transaction = {enough} on the target (it takes a restart)"
             + ("" if plan.source.timescaledb else ", or restore with --jobs N, which is not one transaction"))


def _precheck(store: Store, entry: dict[str, Any], what: str, policy: str) -> None:
    try:
        precheck(store, entry, what)
    except ObjectMismatch as exc:
        exc.hint = "nothing was written to the target; " + BACKUPS_HINT.format(policy=policy)
        raise


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
