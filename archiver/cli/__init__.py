"""The command line: parse flags, call one core function, render its result.

Errors from the core arrive as :class:`archiver.errors.ArchiverError` and are turned into a
message and an exit code here, and only here.
"""

from __future__ import annotations

import sys
import traceback

import click

from .. import __version__
from ..common import log, signals
from ..errors import ArchiverError, ExitCode, outcome_of
from .archive_cmd import archive_command, plan_command, retention_command
from .backup_cmd import backup_command, backups_group, prune_command
from .cold_cmd import cold_group
from .context import AppContext, default_policies_path
from .demo_cmd import demo_command
from .pitr_cmd import basebackup_command, wal_fetch_command, wal_push_command, wal_receive_command
from .policy_cmd import policy_group
from .render_cmd import render_group
from .restore_cmd import restore_archive_command, restore_command
from .run_cmd import run_command
from .status_cmd import status_command
from .verify_cmd import verify_command
from .worker_cmd import worker


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--policies", "policies_path", default=default_policies_path, show_default="$ARCHIVER_POLICIES or ./policies",
              type=click.Path(), help="Policy file or directory of *.yaml policies.")
@click.option("--log-format", type=click.Choice(["auto", "text", "json"]), default="auto", show_default=True,
              help="Log lines as text (terminal) or JSON lines (auto: text on a terminal).")
@click.option("-v", "--verbose", count=True,
              help="More logging. On a terminal only warnings show by default: -v adds info, -vv debug; elsewhere -v "
                   "adds debug.")
@click.option("-q", "--quiet", count=True, help="Less logging (on a terminal errors only, elsewhere warnings and errors).")
@click.option("--stop-grace", type=click.FloatRange(1, 3600), default=signals.DEFAULT_GRACE_SECONDS,
              envvar="ARCHIVER_STOP_GRACE", show_envvar=True, show_default=True, metavar="SECONDS",
              help="After SIGTERM/SIGINT, the longest the clean-up may take before the process exits anyway (130).")
@click.version_option(version=__version__, prog_name="archiver")
@click.pass_context
def cli(ctx: click.Context, policies_path: str, log_format: str, verbose: int, quiet: int, stop_grace: float) -> None:
    """Backups, cold-tier archives and restore drills for PostgreSQL / TimescaleDB databases."""
    log.setup(log_format, verbose - quiet)
    signals.configure(stop_grace)
    ctx.obj = AppContext(policies_path=policies_path, log_format=log_format, verbosity=verbose - quiet)


cli.add_command(policy_group)
cli.add_command(render_group)
cli.add_command(worker)
cli.add_command(cold_group)

for command in (
    backup_command,
    backups_group,
    prune_command,
    archive_command,
    retention_command,
    plan_command,
    restore_command,
    restore_archive_command,
    verify_command,
    run_command,
    status_command,
    demo_command,
    basebackup_command,
    wal_push_command,
    wal_fetch_command,
    wal_receive_command,
):
    cli.add_command(command)


INTERRUPTED_DEFAULT = "work in flight was aborted, nothing half-written was kept"


def _interrupted(exc: BaseException) -> None:
    """SIGINT/SIGTERM: say what state the run left behind, exit 130 without waiting for threads stuck in I/O."""
    click.echo(f"interrupted: {log.scrub(outcome_of(exc, INTERRUPTED_DEFAULT))}", err=True)
    signals.exit_interrupted()


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the command, map errors to exit codes."""
    try:
        with signals.stop_on_signals():
            result = cli.main(args=argv, prog_name="archiver", standalone_mode=False)
    except ArchiverError as exc:
        click.echo(f"error: {log.scrub(str(exc))}", err=True)
        sys.exit(int(exc.exit_code))
    except click.exceptions.Abort as exc:
        if isinstance(exc.__cause__, KeyboardInterrupt):  # click turns an interrupt into Abort
            _interrupted(exc.__cause__)
        click.echo("aborted: nothing was changed", err=True)
        sys.exit(ExitCode.INTERRUPTED)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(ExitCode.USAGE)
    except KeyboardInterrupt as exc:
        _interrupted(exc)
    except Exception:  # a bug: say so plainly, keep the traceback for the report
        click.echo("internal error (a bug in archiver; please report it with this traceback):", err=True)
        click.echo(log.scrub(traceback.format_exc()), err=True)
        sys.exit(ExitCode.TASK_FAILED)
    sys.exit(int(result) if isinstance(result, int) else ExitCode.OK)
