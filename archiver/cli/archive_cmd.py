"""``archiver archive``, ``archiver retention`` and ``archiver plan``: the cold tier."""

from __future__ import annotations

from collections.abc import Callable

import click

from ..common.result import TaskResult
from ..errors import UsageError
from ..tasks import ARCHIVE, RETENTION
from . import params
from .context import AppContext, pass_app
from .jsonout import emit, task_document
from .progress import progress_for_terminal


def _render(result: TaskResult, command: str | None, dry_run: bool, every: bool = False) -> None:
    """Text (runs of alike chunks as one line; ``every``: a line per chunk), or with --json
    (``command``) one JSON document."""
    if command is not None:
        emit(command, task_document(result, dry_run=dry_run))
        return
    for line in result.lines if every else result.data.get("summary_lines", result.lines):
        click.echo(line)
    click.echo(result.summary)


def _run(task: Callable[[], TaskResult], command: str | None, dry_run: bool, every: bool = False) -> int:
    from ..coldtier.steps import ColdTierFailed

    try:
        result = task()
    except ColdTierFailed as exc:
        _render(exc.result, command, dry_run, every)  # every other chunk's outcome, then the error and its exit code
        raise
    _render(result, command, dry_run, every)
    return int(result.exit_code)


@click.command("archive")
@click.argument("name", shell_complete=params.complete_policy)
@click.option("--dry-run", is_flag=True, help="Print the decisions, change nothing.")
@click.option("--table", metavar="T", callback=params.table_name, help="Only this table (schema.table, as listed in the policy).")
@click.option("--accept-deletes", "accept_deletes", multiple=True, metavar="RANGE",
              help="Rows were deleted from this archived range on purpose: replace its archive with the database's "
                   "rows (START/END as the hold line prints it, or the chunk's name; repeatable).")
@click.option("--migrate-layout", "migrate_layout", is_flag=True,
              help="Only move archives written in an earlier key layout to the current one (every archive run also "
                   "does this); with --dry-run, print the moves.")
@click.option("--shard", metavar="K/N", callback=params.shard,
              help="Only the ranges of shard K (from 0) of N: N runs with 0..N-1 split one run (Kubernetes Indexed "
                   "Jobs); shards run side by side, retention waits for them.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON document on stdout.")
@pass_app
def archive_command(app: AppContext, name: str, dry_run: bool, table: str | None, accept_deletes: tuple[str, ...],
                    migrate_layout: bool, shard: tuple[int, int] | None, as_json: bool) -> int:
    """Export aged chunks of policy NAME to Parquet, verify them, then write their manifests.

    An archive is never replaced by a version with fewer rows: a range whose database rows were
    deleted is held back (exit 5) until --accept-deletes names it."""
    from ..coldtier.archive import ArchiveOptions
    from ..coldtier.steps import archive_section, select_tables
    from ..ops.runner import run_task

    policy = app.policy(name)
    if table is not None:  # before the run takes its locks (on the database) and connects
        try:
            select_tables(archive_section(policy), table)
        except UsageError as exc:
            raise UsageError(f"--table: {exc.message}", hint=exc.hint) from None
    progress = progress_for_terminal(quiet=app.verbosity < 0)
    if migrate_layout and accept_deletes:
        raise UsageError("--migrate-layout moves archives only; --accept-deletes needs an archive run without it")
    options = ArchiveOptions(dry_run=dry_run, table=table, accept_deletes=accept_deletes, migrate_layout=migrate_layout,
                             shard=shard)
    return _run(lambda: run_task(ARCHIVE, policy, options, progress=progress), "archive" if as_json else None, dry_run,
                app.verbosity > 0)


@click.command("retention")
@click.argument("name", shell_complete=params.complete_policy)
@click.option("--dry-run", is_flag=True, help="Print the decisions, change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON document on stdout.")
@pass_app
def retention_command(app: AppContext, name: str, dry_run: bool, as_json: bool) -> int:
    """Drop chunks past drop_after whose archive is verified; expire cold files past cold_retention."""
    from ..coldtier.retention import RetentionOptions
    from ..ops.runner import run_task

    policy = app.policy(name)
    progress = progress_for_terminal(quiet=app.verbosity < 0)
    return _run(lambda: run_task(RETENTION, policy, RetentionOptions(dry_run=dry_run), progress=progress),
                "retention" if as_json else None, dry_run, app.verbosity > 0)


@click.command("plan")
@click.argument("name", shell_complete=params.complete_policy)
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON document on stdout.")
@pass_app
def plan_command(app: AppContext, name: str, as_json: bool) -> int:
    """What archive and retention would do now for policy NAME, per table, and why (changes nothing)."""
    from ..coldtier.plan import run_plan

    policy = app.policy(name)
    return _run(lambda: run_plan(policy), "plan" if as_json else None, True, app.verbosity > 0)
