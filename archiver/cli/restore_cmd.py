"""``archiver restore NAME --target DSN`` (and ``restore-archive``): incident-time commands."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from ..errors import UsageError
from . import params
from .context import AppContext, pass_app
from .jsonout import emit, task_document
from .pitr_cmd import pitr_options, pitr_requested, restore_pitr
from .progress import progress_for_terminal
from .restoring import confirmed, print_restore

if TYPE_CHECKING:
    from ..restore.planned import RestorePlan
    from ..restore.task import Confirm


def _confirmation(yes: bool) -> Confirm:
    def confirm(plan: RestorePlan) -> bool:
        return confirmed(plan.lines(), f"Restore backup {plan.source.entry.id} into {plan.target_name}?", yes=yes)
    return confirm


@click.command("restore")
@click.argument("name", shell_complete=params.complete_policy)
@click.option("--target", envvar="ARCHIVER_RESTORE_TARGET", show_envvar=True, callback=params.target_dsn,
              help="libpq DSN of the database to restore into; created when it does not exist. No password here: "
                   "PGPASSWORD, ~/.pgpass, or the whole DSN in ARCHIVER_RESTORE_TARGET.")
@click.option("--backup", "backup_id", metavar="ID", callback=params.backup_id,
              help="The backup to restore (default: the newest).")
@click.option("--before", metavar="TIMESTAMP", help="The newest backup taken before this time (ISO 8601, UTC).")
@click.option("--clean", is_flag=True, help="Replace what a non-empty target holds (refused without it).")
@click.option("--jobs", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Parallel pg_restore jobs (plain databases; spools the dump to --work-dir; not one transaction).")
@click.option("--work-dir", type=click.Path(file_okay=False), help="Where --jobs spools the dump (default: TMPDIR).")
@click.option("--checksums", is_flag=True, help="Also compare every table's content checksum with the manifest.")
@click.option("--dry-run", is_flag=True, help="Print the plan and the checks of the target; change nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (needed without a terminal).")
@click.option("--json", "as_json", is_flag=True, help="Print the result (with --dry-run: the plan) as one JSON document.")
@pitr_options
@click.pass_context
@pass_app
def restore_command(app: AppContext, ctx: click.Context, name: str, target: str | None, backup_id: str | None,
                    before: str | None, clean: bool, jobs: int, work_dir: str | None, checksums: bool, dry_run: bool,
                    yes: bool, as_json: bool, pitr: bool, to_time: str | None, to_lsn: str | None, to_latest: bool,
                    data_dir: str | None, start: bool, port: int | None, keep_archiving: bool) -> int:
    """Restore a backup of policy NAME into the database --target.

    Prints the plan (backup, its age and size, source versions, target, what --clean drops) and asks
    before it writes anything. Exit codes: 0 restored and matching the manifest, 1 failed (the target
    is put back as it was), 2 refused (the message says why), 3 another restore into the same
    target is running, 4 the backup does not match its manifest (corrupt or missing object, or
    restored rows differ: a database the restore created is dropped again), 5 restored, but some of
    the source database's settings, comment or privileges could not be applied (each is listed).

    With --pitr: a base backup and the WAL after it into the new data directory --data-dir, recovered to
    --to-time, --to-lsn or --to-latest (see README, "Point-in-time recovery").
    """
    logical = {"--backup": backup_id, "--before": before, "--clean": clean, "--jobs": jobs != 1,
               "--work-dir": work_dir, "--checksums": checksums}
    flags: dict[str, Any] = {"pitr": pitr, "to_time": to_time, "to_lsn": to_lsn, "to_latest": to_latest,
                             "data_dir": data_dir, "start": start, "port": port, "keep_archiving": keep_archiving}
    if pitr_requested(ctx, flags, target, logical):
        return restore_pitr(app, name, dry_run=dry_run, yes=yes, as_json=as_json, **flags)
    if target is None:
        raise UsageError("--target is required (the database to restore into), or --pitr with --data-dir for a "
                         "point-in-time recovery", hint="or set ARCHIVER_RESTORE_TARGET")
    from ..restore.select import parse_before
    from ..restore.task import RestoreRequest, run_restore

    request = RestoreRequest(target=target, backup_id=backup_id, before=parse_before(before) if before else None,
                             clean=clean, jobs=jobs, work_dir=work_dir, dry_run=dry_run, checksums=checksums,
                             target_in_argv=ctx.get_parameter_source("target") != ParameterSource.ENVIRONMENT)
    # restore reads backups and writes to --target: the policy's database variables need not be set
    result = run_restore(app.policy_for(name, store_only=True), request, confirm=_confirmation(yes),
                         progress=progress_for_terminal(quiet=app.verbosity < 0))
    return print_restore(result, as_json=as_json, dry_run=dry_run)


@click.command("restore-archive")
@click.argument("name", shell_complete=params.complete_policy)
@click.option("--table", required=True, callback=params.table_name,
              help="The archived table (schema.table; public. when omitted).")
@click.option("--from", "start", required=True, metavar="TS", callback=params.time_bound,
              help="Start of the range, inclusive (ISO 8601 UTC, or an integer for integer time columns).")
@click.option("--to", "end", required=True, metavar="TS", callback=params.time_bound,
              help="End of the range, exclusive.")
@click.option("--target", envvar="ARCHIVER_RESTORE_TARGET", show_envvar=True, callback=params.target_dsn,
              help="Load into this database instead of the policy's (a plain table is created there if needed).")
@click.option("--work-dir", type=click.Path(file_okay=False), help="Where Parquet files are checked (default TMPDIR).")
@click.option("--dry-run", is_flag=True, help="Say which ranges would be loaded or skipped; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON document.")
@pass_app
def restore_archive_command(app: AppContext, name: str, table: str, start: str, end: str, target: str | None,
                            work_dir: str | None, dry_run: bool, as_json: bool) -> int:
    """Load archived rows of TABLE in [--from, --to) back from the cold tier.

    Every Parquet object is checked against its manifest before its rows are loaded (in bulk,
    through a staging table); a range that already holds the rows is skipped, so running it twice
    adds nothing. Exit codes: 0 done, 4 an archive object does not match its manifest, 5 a range
    holds other rows and was left alone.
    """
    from ..restore.archive import run_restore_archive

    policy = app.policies_without_secrets(name, section="archive")[0] if target else app.policy(name)
    result = run_restore_archive(policy, table=table, start=start, end=end, target=target, work_dir=work_dir,
                                 dry_run=dry_run, progress=progress_for_terminal(quiet=app.verbosity < 0))
    if as_json:
        emit("restore-archive", task_document(result, dry_run=dry_run))
        return result.exit_code
    for line in result.lines:
        click.echo(line)
    click.echo(result.summary, err=True)
    return result.exit_code
