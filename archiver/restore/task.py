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

Steps 3 and 4 run under the target's lock (:func:`archiver.pg.locks.restore_target_lock`), taken
in the server's maintenance database before anything is created, so two restores into the same
database never overlap; under it the target is inspected again, and a target that is no longer
as the plan found it (created, filled or emptied meanwhile) is refused with nothing written.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from ..common import log, sysinfo
from ..common.progress import NULL_PROGRESS, Progress
from ..common.result import Status, TaskResult
from ..errors import ArchiverError, TaskFailed, UsageError
from ..pg.dsn import dsn_has_password, parse_dsn, redact_dsn
from ..pg.locks import restore_target_lock
from ..pg.target import drop_database, drop_roles
from ..policy.schema import Policy
from ..storage.backends import open_store
from ..storage.base import Store
from . import props
from .compare import TableCheck, compare_tables
from .execute import Undo, execute_restore
from .plan import plan_restore, recheck_target
from .planned import RestorePlan
from .select import select_backup
from .stream import RestoreOutcome

logger = log.get_logger("restore")

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
    with restore_target_lock(plan.target_dsn, policy=policy.name or ""):
        recheck_target(plan)
        outcome = execute_restore(plan, store, progress=progress)
        clock = time.monotonic()
        progress.phase("counting rows", total=len(plan.source.tables), unit="tables")
        try:
            checks = compare_tables(request.target, plan.source, checksums=request.checksums,
                                    on_table=lambda: progress.advance(1))
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
        undo = Undo()
        undo.add(f"dropped database {name}, which this restore had created", lambda: drop_database(plan.target_dsn))
        if outcome.roles_created:
            roles = list(outcome.roles_created)
            undo.add(f"dropped the {len(roles)} role(s) it had created ({', '.join(roles)})",
                     lambda: drop_roles(plan.target_dsn, roles))
        done, failed = undo.run_in_order()
        state = "; ".join(done + [f"could not undo: {text}" for text in failed])
    else:
        kept = f"; roles it created stay too: {', '.join(outcome.roles_created)}" if outcome.roles_created else ""
        state = (f"the restored objects stay in database {name}, which existed before this restore, so archiver does "
                 f"not drop it{kept}; drop them, or restore another backup with --clean")
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
    status: Status = "verification_failed" if bad else "held_back" if outcome.properties_failed else "ok"
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
