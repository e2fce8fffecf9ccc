"""Carrying out a restore plan, with undo: on a failure before pg_restore commits, the target is put back.

Roles the target lacks are created, ``CREATE EXTENSION timescaledb VERSION`` and
``timescaledb_pre_restore()`` run, then pg_restore loads the dump (:mod:`archiver.restore.stream`).
A failure kills pg_restore (its transaction rolls back) and the steps before it are undone (roles
dropped, extension dropped, a database archiver created dropped).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path

from ..backup.dump import child_env, pg_restore_argv
from ..common import log
from ..common.progress import NULL_PROGRESS, Progress
from ..errors import ArchiverError, ExternalCommandFailed, TaskFailed, set_outcome
from ..pg.dsn import dsn_env
from ..pg.target import (
    clean_database,
    drop_database,
    drop_extension,
    drop_roles,
    prepare_timescaledb,
    run_in_transaction,
    terminate_sessions,
    timescaledb_post_restore,
)
from ..storage.base import Store
from ..storage.integrity import ObjectMismatch
from . import props
from .planned import RestorePlan
from .select import BACKUPS_HINT
from .stream import RestoreOutcome, file_restore, spooled, stream_restore
from .versions import likely_cause

logger = log.get_logger("restore")


class Undo:
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


def execute_restore(plan: RestorePlan, store: Store, *, progress: Progress = NULL_PROGRESS) -> RestoreOutcome:
    """Carry out a plan. On a failure before pg_restore commits, the target is put back as it was.

    The caller holds the target's lock (``archiver restore``) or owns the server (a drill's scratch instance).
    """
    outcome = RestoreOutcome(stored_bytes=int(plan.source.dump["size"]),
                             dump_bytes=int(plan.source.dump.get("uncompressed_size") or 0))
    undo = Undo()
    clock = time.monotonic()
    app_name = f"archiver restore {plan.source.entry.id}"
    with contextlib.ExitStack() as stack:
        spool_file: Path | None = None
        try:
            if plan.mode == "spool":
                spool_file = stack.enter_context(spooled(plan, store, progress, outcome, clock))
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
            env = child_env(dsn_env(plan.target_dsn), app_name)
            argv = pg_restore_argv(plan.pg_restore.path, dbname=plan.target_name,
                                        single_transaction=plan.single_transaction, clean=plan.clean == "pg_restore",
                                        jobs=plan.jobs, no_tablespaces=plan.no_tablespaces, archive=spool_file)
            logger.info("restore.pg_restore", extra=log.fields(backup_id=plan.source.entry.id, argv=argv))
            if spool_file is None:
                stream_restore(plan, store, argv, env, progress, outcome, clock)
            else:
                if not plan.single_transaction and not plan.create_database:
                    undo.clear()  # objects pg_restore commits may depend on the roles and the extension
                    undo.irreversible = "pg_restore --jobs is not one transaction: the target may hold a partial restore"
                file_restore(plan, argv, env, progress, outcome, clock)
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


def _create_roles(plan: RestorePlan, undo: Undo, outcome: RestoreOutcome) -> None:
    if plan.roles is None or not plan.roles.create:
        return
    run_in_transaction(plan.target_dsn, plan.roles.statements)
    outcome.roles_created = list(plan.roles.create)
    undo.add(f"dropped {len(plan.roles.create)} role(s) it had created",
             lambda: drop_roles(plan.target_dsn, plan.roles.create if plan.roles else []))


def _prepare_timescaledb(plan: RestorePlan, undo: Undo) -> None:
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


def _take_back(plan: RestorePlan, undo: Undo, app_name: str, exc: BaseException) -> None:
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
