"""``archiver demo``: the whole cycle on an embedded default, for a first look."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import ExitCode
from .context import AppContext, pass_app
from .status_cmd import render_status


@click.command("demo")
@click.option("--dir", "directory", default=".archiver-demo", show_default=True, type=click.Path(path_type=Path),
              help="Where the demo keeps its policies and its file store.")
@click.option("--clean", "clean_only", is_flag=True, help="Remove a previous demo's directory and stop.")
@pass_app
def demo_command(app: AppContext, directory: Path, clean_only: bool) -> int:
    """Back up, archive, prune and drill three sample databases on a local PostgreSQL, then show status."""
    from ..ops.demo import clean, run_demo

    directory = directory.resolve()
    if clean_only:
        click.echo(f"removed {directory}" if clean(directory) else f"nothing to remove at {directory}")
        return ExitCode.OK
    report = run_demo(directory, lambda line: click.echo(line))
    click.echo("")
    render_status(report.statuses)
    click.echo(f"""
The demo's files are in {directory}:
  policies/   the three policies it used (identity, app, telemetry)
  store/      backups (backups/<id>/...), Parquet archives (archive/...), manifests and run records
The demo cluster is gone (it lived only for the run); the store stays for you to look at:
  archiver --policies {directory / 'policies'} backups list
  find {directory / 'store'} -name '*.parquet' | head

To point archiver at your own databases and S3, edit policies/*.yaml in this repository:
  database.dsn: ${{IDENTITY_DSN}}                 (export IDENTITY_DSN='host=... dbname=... user=...')
  storage.url: s3://your-bucket/identity          (credentials from AWS_* / a profile / a role)
then `archiver policy validate --check-env` and `archiver run identity backup`.
Remove the demo with: archiver demo --clean --dir {directory}""")
    unhealthy = [status.policy for status in report.statuses if not status.healthy]
    return ExitCode.TASK_FAILED if unhealthy else ExitCode.OK
