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
    from ..backup.listing import BackupListing
    from ..policy.schema import Policy
    from ..storage.base import Store


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
    rows: list[tuple[str, ...]] = [("POLICY", "ID", "TIME (UTC)", "SIZE", "DURATION", "VERIFIED")]
    documents = [item.to_json() for item in listing.backups]
    encryption = any(document["encrypted"] for document in documents)  # the column only where it says something
    if encryption:
        rows[0] += ("ENCRYPTED",)
    for item, document in zip(listing.backups, documents, strict=True):
        entry = item.entry
        row: tuple[str, ...] = (item.policy, entry.id, entry.time.strftime("%Y-%m-%d %H:%M:%S"),
                                format_bytes(entry.size), f"{entry.duration_seconds:.1f}s", entry.verified)
        if encryption:
            row += ("no" if not document["encrypted"] else "yes, NO KEY: cannot decrypt with the configured identities"
                    if item.decryptable is False else "yes",)
        rows.append(row)
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
    from ..backup.listing import list_backups

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


@backups_group.command("show")
@click.argument("name", shell_complete=params.complete_policy)
@click.argument("backup_id")
@click.option("--commands", is_flag=True,
              help="Print the shell commands that restore this backup with standard tools only (aws/cp, sha256sum, "
                   "age, zstd, psql, pg_restore).")
@click.option("--identity", metavar="PATH", help="The age identity file the commands use (default: the policy's "
                                                 "first encryption.identities, else key.txt).")
@click.option("--database", metavar="NAME", help="The database the commands create (default: the source's name).")
@pass_app
def show_command(app: AppContext, name: str, backup_id: str, commands: bool, identity: str | None,
                 database: str | None) -> int:
    """Show backup ID of policy NAME: its objects, checksums and encryption; --commands: how to restore it by hand."""
    from ..backup.handbook import restore_commands
    from ..restore.select import select_backup
    from ..storage.backends import open_store

    (policy,) = app.policies_without_secrets(name)
    store = open_store(policy.storage)
    if commands and _show_base_commands(store, policy, backup_id, identity):
        return ExitCode.OK
    entry = select_backup(store, backup_id=backup_id, policy=name)
    objects = entry.manifest.get("objects") or {}
    if commands:
        paths = policy.encryption.identity_paths() if policy.encryption else []
        urls = {role: store.describe(str(obj["key"])) for role, obj in objects.items()}
        for line in restore_commands(entry.manifest, urls, identity=identity or (paths[0] if paths else "key.txt"),
                                     endpoint_url=policy.storage.endpoint_url, database=database):
            click.echo(line)
        return ExitCode.OK
    click.echo(f"backup    {entry.id}  {entry.time:%Y-%m-%d %H:%M:%S} UTC  database "
               f"{(entry.manifest.get('database') or {}).get('name')}")
    for role, obj in objects.items():
        encryption = obj.get("encryption")
        sealed = f", age to {', '.join(encryption.get('recipients') or [])}" if encryption else ""
        click.echo(f"{role:<9} {store.describe(str(obj['key']))}  {format_bytes(int(obj['size']))}  "
                   f"{obj.get('codec')}{sealed}  sha256 {obj['sha256']}")
    click.echo(f"restore by hand: archiver backups show {name} {entry.id} --commands", err=True)
    return ExitCode.OK


def _show_base_commands(store: Store, policy: Policy, backup_id: str, identity: str | None) -> bool:
    """``--commands`` for a base backup of point-in-time recovery (False: ``backup_id`` is not one)."""
    from ..pitr.catalog import base_manifest_key
    from ..pitr.handbook import base_restore_commands
    from ..pitr.walnames import WAL_PREFIX
    from ..storage.documents import read_json

    if "/" in backup_id or store.head(base_manifest_key(backup_id)) is None:
        return False
    manifest = read_json(store, base_manifest_key(backup_id))
    paths = policy.encryption.identity_paths() if policy.encryption else []
    urls = {role: store.describe(str(obj["key"])) for role, obj in (manifest.get("objects") or {}).items()}
    for line in base_restore_commands(manifest, urls, store.describe(WAL_PREFIX),
                                      identity=identity or (paths[0] if paths else "key.txt"),
                                      endpoint_url=policy.storage.endpoint_url):
        click.echo(line)
    return True


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
