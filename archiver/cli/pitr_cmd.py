"""Point-in-time recovery commands: ``basebackup``, ``wal-push``, ``wal-fetch``, ``wal-receive``, and the
``--pitr`` flags of ``restore``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from ..common import log
from ..common.timeutil import format_bytes, isoformat, parse_timestamp, utcnow
from ..errors import ArchiverError, ExitCode, UsageError
from ..tasks import BASEBACKUP
from . import params
from .context import AppContext, pass_app
from .progress import progress_for_terminal
from .restoring import confirmed, print_restore

if TYPE_CHECKING:
    from ..pitr.overview import PitrOverview
    from ..pitr.plan import PitrPlan
    from ..pitr.settings import Target

# The work is imported inside each command: ``archiver --help`` loads no driver, SDK or pitr module.


@click.command("basebackup")
@click.argument("name", shell_complete=params.complete_policy)
@pass_app
def basebackup_command(app: AppContext, name: str) -> int:
    """Take a base backup of policy NAME's server now (pg_basebackup -> store).

    Prints the base backup's id on stdout; a summary goes to stderr. Exit codes: 0 done, 1 failed
    (nothing kept), 2 refused (the policy has no pitr section, the server has tablespaces other than
    the default, wal_level is minimal, the role may not replicate, or archive_command WAL is not on),
    3 another base backup of this database is running.
    """
    from ..ops.runner import run_task
    from ..pitr.basebackup import BaseBackupOptions

    result = run_task(BASEBACKUP, app.policy(name), BaseBackupOptions(),
                      progress=progress_for_terminal(quiet=app.verbosity < 0))
    for line in result.lines:
        click.echo(line, err=True)
    click.echo(result.summary, err=True)
    click.echo(result.data["id"])
    return result.exit_code


@click.command("wal-push")
@click.argument("name", shell_complete=params.complete_policy)
@click.argument("path", type=click.Path(dir_okay=False))
@pass_app
def wal_push_command(app: AppContext, name: str, path: str) -> int:
    """Archive one WAL file of policy NAME: for archive_command = 'archiver wal-push NAME %p'.

    Exits 0 only once the file is in the store and read back with the same SHA-256, or was there
    already with the same content (PostgreSQL may archive a file twice). Exit 4: the store holds
    another file under that name (nothing is overwritten); 1: the store failed (PostgreSQL retries).
    """
    from ..pitr.hooks import wal_push

    wal_push(app.policy_for(name, store_only=True), Path(path))
    return ExitCode.OK


@click.command("wal-fetch")
@click.argument("name", shell_complete=params.complete_policy)
@click.argument("segment")
@click.argument("dest", type=click.Path(dir_okay=False))
@click.option("--recovery-report", type=click.Path(dir_okay=False), metavar="FILE",
              help="For restore_command: any failure other than a missing file is written to FILE and exits 255, so "
                   "PostgreSQL stops recovery instead of taking it for the end of the archive.")
@pass_app
def wal_fetch_command(app: AppContext, name: str, segment: str, dest: str, recovery_report: str | None) -> int:
    """Write WAL file SEGMENT of policy NAME to DEST: for restore_command = 'archiver wal-fetch NAME %f %p'.

    The file's SHA-256 is checked before DEST is written (atomically: a rename). Exit codes: 0
    written, 1 not in the archive (how PostgreSQL learns the archive has ended), 4 the stored copy
    is damaged (nothing written).
    """
    from ..pitr.hooks import RECOVERY_ABORT_EXIT, wal_fetch, write_recovery_report

    try:
        outcome = wal_fetch(app.policy_for(name, store_only=True), segment, Path(dest))
    except ArchiverError as exc:
        if recovery_report is None:
            raise
        write_recovery_report(Path(recovery_report), segment, exc)
        click.echo(f"error: {log.scrub(str(exc))}", err=True)
        click.echo(f"archiver wal-fetch: exit {RECOVERY_ABORT_EXIT} (instead of {int(exc.exit_code)}) so that recovery "
                   "stops here rather than taking this for the end of the archive", err=True)
        raise click.exceptions.Exit(RECOVERY_ABORT_EXIT) from None
    if outcome == "missing":
        click.echo(f"{segment}: not in the archive", err=True)
        return ExitCode.TASK_FAILED
    return ExitCode.OK


@click.command("wal-receive")
@click.argument("name", shell_complete=params.complete_policy)
@pass_app
def wal_receive_command(app: AppContext, name: str) -> int:
    """Stream policy NAME's WAL into the store with pg_receivewal and a replication slot, until SIGTERM.

    Each completed segment is compressed, stored, read back and checked, then removed from the
    spool; on SIGTERM/SIGINT the segment in progress is stored as a .partial. The worker runs one
    per stream policy. Exit codes: 130 stopped by a signal (the normal end), 2 policy error, 3 a
    receiver of this policy runs already, 1 failed.
    """
    from ..pitr.receive import run_receiver
    from ..storage.backends import open_store

    policy = app.policy(name)
    run_receiver(policy, open_store(policy.storage))
    return ExitCode.OK


# -- archiver restore NAME --pitr ---------------------------------------------------------------------

PITR_FLAGS = ("--to-time", "--to-lsn", "--to-latest", "--data-dir", "--start", "--port", "--keep-archiving")


def pitr_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """The flags of ``restore --pitr`` (a point-in-time recovery into a new data directory)."""
    options = [
        click.option("--pitr", is_flag=True, help="Point-in-time recovery: a base backup and the WAL after it into a new "
                                                  "data directory (--data-dir, and --to-time, --to-lsn or --to-latest)."),
        click.option("--to-time", metavar="TS", help="--pitr: recover to this time (ISO 8601; UTC unless it says "
                                                     "otherwise): stop before the first transaction committed after it."),
        click.option("--to-lsn", metavar="LSN", help="--pitr: recover up to this WAL position (e.g. 0/3000148)."),
        click.option("--to-latest", is_flag=True, help="--pitr: recover to the end of the archive."),
        click.option("--data-dir", type=click.Path(file_okay=False), help="--pitr: the new data directory (absent or "
                                                                          "empty; a non-empty one is refused)."),
        click.option("--start", is_flag=True, help="--pitr: start the server, wait until recovery has ended, print the "
                                                   "point reached, the WAL replayed and the RTO."),
        click.option("--port", type=click.IntRange(1, 65535), help="--pitr: the restored server's port."),
        click.option("--keep-archiving", is_flag=True, help="--pitr: keep the backup's archive settings (the restored "
                                                            "server archives its new timeline into the store)."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def pitr_requested(ctx: click.Context, pitr: dict[str, Any], target: str | None, logical: dict[str, Any]) -> bool:
    """Whether this is a --pitr restore; refuses flags of the other kind (exit 2)."""
    given = [flag for flag in PITR_FLAGS if pitr.get(flag[2:].replace("-", "_"))]
    if not pitr["pitr"]:
        if given:
            raise UsageError(f"{given[0]} applies to restore --pitr only (a point-in-time recovery)")
        return False
    mixed = [flag for flag, value in logical.items() if value]
    if target is not None and ctx.get_parameter_source("target") != ParameterSource.ENVIRONMENT:
        mixed.insert(0, "--target")
    if mixed:
        raise UsageError(f"--pitr restores a whole server into --data-dir; {mixed[0]} belongs to a logical restore "
                         "(into --target) and is refused with it")
    return True


def _target(to_time: str | None, to_lsn: str | None, to_latest: bool) -> Target:
    from ..pitr.settings import Target
    from ..pitr.walnames import format_lsn, parse_lsn

    chosen = [flag for flag, value in (("--to-time", to_time), ("--to-lsn", to_lsn), ("--to-latest", to_latest)) if value]
    if len(chosen) != 1:
        raise UsageError(f"--pitr needs exactly one of --to-time, --to-lsn, --to-latest (got "
                         f"{', '.join(chosen) or 'none'})")
    if to_time:
        try:
            return Target("time", time=parse_timestamp(to_time))
        except ValueError:
            raise UsageError(f"--to-time: {to_time!r} is not a timestamp (ISO 8601, e.g. 2026-11-23T14:04:59Z)") from None
    if to_lsn:
        try:
            return Target("lsn", lsn=format_lsn(parse_lsn(to_lsn)))
        except ValueError as exc:
            raise UsageError(f"--to-lsn: {exc}") from None
    return Target("latest")


def _confirmation(yes: bool) -> Callable[[PitrPlan], bool]:
    def confirm(plan: PitrPlan) -> bool:
        return confirmed(plan.lines(), f"Restore base backup {plan.base.id} into {plan.request.data_dir}?", yes=yes)
    return confirm


def restore_pitr(app: AppContext, name: str, *, dry_run: bool, yes: bool, as_json: bool, pitr: bool,
                 to_time: str | None, to_lsn: str | None, to_latest: bool, data_dir: str | None, start: bool,
                 port: int | None, keep_archiving: bool) -> int:
    from ..pitr.plan import PitrRequest
    from ..pitr.restore import run_pitr_restore

    target = _target(to_time, to_lsn, to_latest)
    if not data_dir:
        raise UsageError("--pitr needs --data-dir: the new data directory to restore into")
    request = PitrRequest(data_dir=Path(data_dir).absolute(), target=target,
                          policies_path=str(Path(app.policies_path).absolute()), start=start, port=port,
                          keep_archiving=keep_archiving, dry_run=dry_run)
    result = run_pitr_restore(app.policy_for(name, store_only=True), request, confirm=_confirmation(yes),
                              progress=progress_for_terminal(quiet=app.verbosity < 0))
    return print_restore(result, as_json=as_json, dry_run=dry_run)


# -- backups list: base backups and the recoverable window ---------------------------------------------

@dataclass
class BaseListing:
    entries: list[dict[str, Any]] = field(default_factory=list)  # JSON entries, newest first per policy
    overviews: list[PitrOverview] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)


def list_base_backups(app: AppContext, name: str | None) -> BaseListing:
    from ..pitr.overview import pitr_overview
    from ..storage.backends import open_store

    policies = app.policies_without_secrets(name) if name else app.policies_for_overview(section="pitr")[0]
    listing = BaseListing()
    now = utcnow()
    for policy in policies:
        if policy.pitr is None:
            continue
        try:
            overview = pitr_overview(policy, open_store(policy.storage), now)
        except ArchiverError as exc:
            listing.errors[policy.name or ""] = str(exc)
            continue
        listing.overviews.append(overview)
        for base in overview.bases:
            span = overview.restorable.get(base.id)
            listing.entries.append({
                "policy": policy.name, "id": base.id, "time": isoformat(base.stop_time),
                "size": base.size, "duration_seconds": float(base.manifest.get("duration_seconds", 0.0)),
                "verified": base.verified == "yes", "verification": base.verification_result,
                "timeline": base.timeline, "start_lsn": base.manifest["start_lsn"],
                "stop_lsn": base.manifest["stop_lsn"],
                "restorable": {"from": isoformat(span[0]), "to": isoformat(span[1])} if span else None})
    return listing


def render_base_backups(listing: BaseListing) -> None:
    rows = [("POLICY", "BASE BACKUP", "ENDED (UTC)", "SIZE", "TIMELINE", "LSN", "RESTORABLE", "VERIFIED")]
    for overview in listing.overviews:
        for base in overview.bases:
            span = overview.restorable.get(base.id)
            rows.append((overview.policy, base.id, f"{base.stop_time:%Y-%m-%d %H:%M:%S}", format_bytes(base.size),
                         str(base.timeline), f"{base.manifest['start_lsn']}..{base.manifest['stop_lsn']}",
                         f"to {span[1]:%Y-%m-%d %H:%M:%S}" if span else "no (WAL missing)", base.verified))
    if len(rows) > 1:
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)).rstrip())
    for overview in listing.overviews:
        archived = (f"; newest WAL {overview.newest_wal} completed {isoformat(overview.last_archived)}"
                    if overview.last_archived else "; no WAL archived yet")
        click.echo(f"{overview.policy}: recoverable window {overview.describe_window()}{archived}")
        for gap in overview.gaps:
            click.echo(f"{overview.policy}: GAP {gap}")
