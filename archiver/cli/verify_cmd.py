"""``archiver verify NAME``: a restore drill into a throw-away PostgreSQL."""

from __future__ import annotations

import click

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
@pass_app
def verify_command(app: AppContext, name: str, backup_id: str | None, scratch: str | None, archives: bool | None,
                   as_json: bool) -> int:
    """Restore a backup of policy NAME into a throw-away PostgreSQL and check it.

    Every table's row count and content checksum against the manifest, large objects, TimescaleDB
    hypertables and chunk counts, pg_amcheck, and the policy's SQL checks. The verdict is stored
    next to the backup (backups list shows it). Exit codes: 0 passed, 4 the backup does not match
    (a check failed, an object is missing or altered, the dump does not restore), 1 the drill
    could not run, 3 another drill of this policy is running.
    """
    from ..ops.runner import run_task
    from ..restore.drill import VerifyOptions

    result = run_task(VERIFY, app.policy_for(name, store_only=VERIFY.store_only),
                      VerifyOptions(backup_id=backup_id, scratch=scratch, archives=archives),
                      progress=progress_for_terminal(quiet=app.verbosity < 0))
    if as_json:
        emit("verify", dict(sorted(result.data.items())))
    else:
        for line in result.lines:
            click.echo(line)
    click.echo(result.summary, err=True)
    return result.exit_code
