"""``archiver backup NAME``, ``archiver backups list [NAME]`` and ``archiver prune NAME``."""

from __future__ import annotations

import json

import click

from ..errors import ExitCode, PolicyError, UsageError
from ..policy import Policy, load
from ..tasks.backup import BackupListing, list_backups, run_backup
from ..tasks.prune import run_prune
from .context import AppContext, pass_app
from .progress import progress_for_terminal


def _policies_without_secrets(app: AppContext, name: str | None) -> list[Policy]:
    """Policies for commands that touch storage only (list, prune): their DSN variables need not be set.

    Every other problem in those files is still an error; storage settings must resolve.
    """
    result = load([app.policies_path], strict_env=False)
    if name is not None:
        chosen = [policy for policy in result.policies if policy.name == name]
        if not chosen:
            app.policy(name)  # raises the precise error (unknown name, or the file's problems)
    else:
        chosen = [policy for policy in result.policies if policy.backup is not None]
        if result.issues:
            raise PolicyError(result.issues)
    for policy in chosen:
        unresolved = result.unresolved_env.get(policy.source, {})
        storage = {key: names for key, names in unresolved.items() if key.startswith("storage")}
        if storage:
            key, names = next(iter(storage.items()))
            raise UsageError(f"policy {policy.name!r}: {key} needs environment variable {', '.join(names)}")
    return chosen


@click.command("backup")
@click.argument("name")
@pass_app
def backup_command(app: AppContext, name: str) -> int:
    """Take one backup of policy NAME now.

    Prints the backup id on stdout (for scripts); a summary goes to stderr.
    """
    result = run_backup(app.policy(name), progress=progress_for_terminal(quiet=app.verbosity < 0))
    for line in result.lines:
        click.echo(line, err=True)
    click.echo(result.summary, err=True)
    click.echo(result.data["id"])
    return result.exit_code


@click.group("backups")
def backups_group() -> None:
    """Backups in storage."""


def _size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} TiB"


def _render_table(listing: BackupListing) -> None:
    rows = [("POLICY", "ID", "TIME (UTC)", "SIZE", "DURATION", "VERIFIED")]
    for item in listing.backups:
        entry = item.entry
        rows.append((item.policy, entry.id, entry.time.strftime("%Y-%m-%d %H:%M:%S"), _size(entry.size),
                     f"{entry.duration_seconds:.1f}s", entry.verified))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


@backups_group.command("list")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@pass_app
def list_command(app: AppContext, name: str | None, as_json: bool) -> int:
    """List backups (those with a manifest), newest first: every policy's, or NAME's."""
    listing = list_backups(_policies_without_secrets(app, name))
    if as_json:
        click.echo(json.dumps([item.to_json() for item in listing.backups], indent=2))
    elif listing.backups:
        _render_table(listing)
    else:
        click.echo("no backups" + (f" for {name}" if name else ""), err=True)
    for policy, error in sorted(listing.errors.items()):
        click.echo(f"error: {policy}: {error}", err=True)
    return ExitCode.TASK_FAILED if listing.errors else ExitCode.OK


@click.command("prune")
@click.argument("name")
@click.option("--dry-run", is_flag=True, help="Print the decisions, change nothing.")
@pass_app
def prune_command(app: AppContext, name: str, dry_run: bool) -> int:
    """Apply backup retention to policy NAME.

    Every decision is printed with its reason; --dry-run changes nothing.
    """
    (policy,) = _policies_without_secrets(app, name)
    result = run_prune(policy, dry_run=dry_run)
    for line in result.lines:
        click.echo(line)
    click.echo(result.summary, err=True)
    return result.exit_code
