"""``archiver worker``: every policy's tasks on their schedules."""

from __future__ import annotations

import click

from ..ops.defaults import METRICS_PORT
from ..tasks import TASK_NAMES
from . import params
from .context import AppContext, pass_app


@click.command("worker")
@click.option("--max-parallel", default=2, show_default=True, type=click.IntRange(1, 64),
              help="Tasks of different databases that may run at once.")
@click.option("--listen", default="0.0.0.0", show_default=True, help="Address for /metrics and /healthz.")
@click.option("--port", default=METRICS_PORT, show_default=True, type=click.IntRange(0, 65535),
              help="Port for /metrics and /healthz (0: any free port).")
@click.option("--grace-period", default=300.0, show_default=True, type=float, callback=params.seconds(86400),
              help="On SIGTERM, seconds running tasks may take to finish before they are aborted cleanly.")
@click.option("--misfire-grace", default=3600, show_default=True, type=click.IntRange(1, 366 * 86400),
              help="A run missed by more than this many seconds (worker down) is skipped, not caught up.")
@click.option("--run-at-start", multiple=True, type=click.Choice(TASK_NAMES),
              help="Also run these tasks of every policy once right after starting.")
@pass_app
def worker(app: AppContext, max_parallel: int, listen: str, port: int, grace_period: float, misfire_grace: int,
           run_at_start: tuple[str, ...]) -> int:
    """Run every policy's tasks on their cron schedules until SIGTERM (SIGHUP reloads policies)."""
    from ..ops.worker import WorkerConfig, run_worker

    log_format = "json" if app.log_format == "auto" else app.log_format
    return run_worker(WorkerConfig(policies_path=app.policies_path, max_parallel=max_parallel, listen=listen,
                                   port=port, grace_period=grace_period, misfire_grace=misfire_grace,
                                   log_format=log_format, run_at_start=run_at_start))
