"""``archiver verify NAME``: a restore drill into a throw-away PostgreSQL."""

from __future__ import annotations

import click

from ..errors import UsageError
from ..tasks import VERIFY
from . import params
from .context import AppContext, pass_app
from .jsonout import emit
from .progress import progress_for_terminal


@click.command("verify")
@click.argument("name", shell_complete=params.complete_policy)
@click.option("--backup", "backup_id", metavar="ID", callback=params.backup_id,
              help="The backup to drill (default: the newest).")
@click.option("--scratch", type=click.Choice(["local", "container"]),
              help="Where to restore: initdb + pg_ctl here, or a docker/podman container (default: the policy's).")
@click.option("--archives/--no-archives", default=None,
              help="Also check every cold archive object (default: the policy's verify.archives).")
@click.option("--json", "as_json", is_flag=True, help="Print the verification record as JSON on stdout.")
@click.option("--pitr", is_flag=True, default=None,
              help="A point-in-time drill: a base backup and WAL recovered to --to-time (default: when the policy has "
                   "a pitr section and no backup section).")
@click.option("--to-time", metavar="TS", help="--pitr: the point to recover to (default: a random point inside the "
                                              "recoverable window, recorded in the result).")
@pass_app
def verify_command(app: AppContext, name: str, backup_id: str | None, scratch: str | None, archives: bool | None,
                   as_json: bool, pitr: bool | None, to_time: str | None) -> int:
    """Restore a backup of policy NAME into a throw-away PostgreSQL and check it.

    Every table's row count and content checksum against the manifest, large objects, TimescaleDB
    hypertables and chunk counts, pg_amcheck, and the policy's SQL checks. The verdict is stored
    next to the backup (backups list shows it). Exit codes: 0 passed, 4 the backup does not match
    (a check failed, an object is missing or altered, the dump does not restore), 1 the drill
    could not run, 3 another drill of this policy is running.

    With --pitr: a base backup and its WAL are recovered to a point in time in a local scratch instance; the
    drill checks that recovery reached the point, then pg_amcheck and the policy's checks.
    """
    from ..common.timeutil import parse_timestamp
    from ..ops.runner import run_task
    from ..restore.drill import VerifyOptions

    if to_time is not None and not pitr:
        raise UsageError("--to-time applies to verify --pitr only")
    if pitr and backup_id is not None:
        raise UsageError("--backup names a logical backup; a --pitr drill picks the base backup for its point")
    try:
        point = parse_timestamp(to_time) if to_time else None
    except ValueError:
        raise UsageError(f"--to-time: {to_time!r} is not a timestamp (ISO 8601, e.g. 2026-11-23T14:04:59Z)") from None
    result = run_task(VERIFY, app.policy_for(name, store_only=VERIFY.store_only),
                      VerifyOptions(backup_id=backup_id, scratch=scratch, archives=archives, pitr=pitr or None,
                                    to_time=point),
                      progress=progress_for_terminal(quiet=app.verbosity < 0))
    if as_json:
        emit("verify", dict(sorted(result.data.items())))
    else:
        for line in result.lines:
            click.echo(line)
    click.echo(result.summary, err=True)
    return result.exit_code
