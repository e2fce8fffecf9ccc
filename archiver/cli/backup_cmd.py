"""``archiver backup NAME``, ``archiver backups list [NAME]`` and ``archiver prune NAME``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from ..common.timeutil import format_bytes
from ..errors import ExitCode
from ..tasks import BACKUP, PRUNE
from . import params
from .context import AppContext, pass_app
from .jsonout import emit, task_document
from .pitr_cmd import list_base_backups, render_base_backups
from .progress import progress_for_terminal

if TYPE_CHECKING:
    from ..backup.task import BackupListing


@click.command("backup")
@click.argument("name", shell_complete=params.complete_policy)
@pass_app
def backup_command(app: AppContext, name: str) -> int:
    """Take one backup of policy NAME now.

    Prints the backup id on stdout (for scripts); a summary goes to stderr.
    """
    from ..backup.task import BackupOptions
    from ..ops.runner import run_task

    result = run_task(BACKUP, app.policy(name), BackupOptions(), progress=progress_for_terminal(quiet=app.verbosity < 0))
    for line in result.lines:
        click.echo(line, err=True)
    click.echo(result.summary, err=True)
    click.echo(result.data["id"])
    return result.exit_code


@click.group("backups")
def backups_group() -> None:
    """Backups in storage."""


def _render_table(listing: BackupListing) -> None:
    rows = [("POLICY", "ID", "TIME (UTC)", "SIZE", "DURATION", "VERIFIED")]
    for item in listing.backups:
        entry = item.entry
        rows.append((item.policy, entry.id, entry.time.strftime("%Y-%m-%d %H:%M:%S"), format_bytes(entry.size),
                     f"{entry.duration_seconds:.1f}s", entry.verified))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)).rstrip())


@backups_group.command("list")
@click.argument("name", required=False, shell_complete=params.complete_policy)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document: the backups, and the policies that failed.")
@pass_app
def list_command(app: AppContext, name: str | None, as_json: bool) -> int:
    """List backups (those with a manifest), newest first: every policy's, or NAME's.

    Policies with a pitr section also get their base backups and the recoverable window (with its gaps).

    A store that cannot be listed, or (without NAME) a policy file that does not load, is reported
    on stderr and makes the exit code 1; the other policies' backups are listed all the same.
    """
    from ..backup.task import list_backups

    errors: dict[str, str] = {}
    if name is not None:
        policies = app.policies_without_secrets(name)
    else:
        policies, broken = app.policies_for_overview(section="backup")
        errors.update({item.name: f"the policy file does not load: {item.summary}" for item in broken})
    listing = list_backups(policies)
    errors.update(listing.errors)
    bases = list_base_backups(app, name)  # point-in-time recovery: base backups and the recoverable window
    errors.update(bases.errors)
    if as_json:  # the errors travel inside the document: an empty list alone would claim there are no backups
        emit("backups-list", {"backups": [item.to_json() for item in listing.backups], "base_backups": bases.entries,
                              "pitr": {overview.policy: overview.to_json() for overview in bases.overviews},
                              "errors": dict(sorted(errors.items()))})
    elif listing.backups or bases.entries:
        if listing.backups:
            _render_table(listing)
        render_base_backups(bases)
    elif not errors:
        click.echo("no backups" + (f" for {name}" if name else ""), err=True)
    elif listed := [policy.name for policy in policies if policy.name not in errors]:
        click.echo(f"no backups for {', '.join(sorted(str(n) for n in listed))}", err=True)  # only those listed
    for policy, error in sorted(errors.items()):
        click.echo(f"error: {policy}: {error}", err=True)
    return ExitCode.TASK_FAILED if errors else ExitCode.OK


@click.command("prune")
@click.argument("name", shell_complete=params.complete_policy)
@click.option("--dry-run", is_flag=True, help="Print the decisions, change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON document on stdout.")
@pass_app
def prune_command(app: AppContext, name: str, dry_run: bool, as_json: bool) -> int:
    """Apply backup retention to policy NAME.

    Every decision is printed with its reason; --dry-run changes nothing.
    """
    from ..backup.prune import PruneOptions
    from ..ops.runner import run_task

    result = run_task(PRUNE, app.policy_for(name, store_only=PRUNE.store_only), PruneOptions(dry_run=dry_run))
    if as_json:
        emit("prune", task_document(result, dry_run=dry_run))
        return result.exit_code
    for line in result.lines:
        click.echo(line)
    click.echo(result.summary, err=True)
    return result.exit_code
