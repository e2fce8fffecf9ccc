"""``archiver run NAME TASK``: exactly one task, for cron and Kubernetes CronJobs."""

from __future__ import annotations

import dataclasses
import os

import click

from ..errors import UsageError
from ..tasks import TASK_NAMES, named
from . import params
from .context import AppContext, pass_app
from .jsonout import emit, task_document


@click.command("run")
@click.argument("name", shell_complete=params.complete_policy)
@click.argument("task", type=click.Choice(TASK_NAMES))
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON line on stdout.")
@click.option("--shard", metavar="K/N", callback=params.shard,
              help="archive only: shard K (from 0) of N, as in the Indexed Job `render kubernetes` writes for archive.shards.")
@pass_app
def run_command(app: AppContext, name: str, task: str, as_json: bool, shard: tuple[int, int] | None) -> int:
    """Run TASK of policy NAME once, with the same locks and records as the worker.

    Exit codes: 0 done, 1 failed, 2 usage/policy error, 3 another run holds the lock,
    4 verification failed, 5 done but something was held back. With ARCHIVER_PUSHGATEWAY (or
    the policy's metrics.pushgateway) set, the run's metrics are pushed there at the end.
    """
    from ..ops.metrics import Metrics
    from ..ops.push import push_run
    from ..ops.runner import run_task

    chosen = named(task)
    if shard is not None and task != "archive":
        raise UsageError(f"--shard splits an archive run; {task} has no shards")
    policy = app.policy_for(name, store_only=chosen.store_only)
    metrics = Metrics()
    gateway = os.environ.get("ARCHIVER_PUSHGATEWAY") or (policy.metrics.pushgateway if policy.metrics else None)
    try:
        options = chosen.options()
        if shard is not None:
            options = dataclasses.replace(options, shard=shard)
        result = run_task(chosen, policy, options, metrics=metrics)
    finally:
        if gateway:
            push_run(metrics, gateway, policy, task, shard=shard)
    if as_json:  # one JSON document: the decision lines travel inside it, not as loose text on stderr
        emit("run", task_document(result, dry_run=False), indent=None)  # one line: the worker reads the last
    else:
        for line in result.lines if app.verbosity > 0 else result.data.get("summary_lines", result.lines):
            click.echo(line, err=True)
        click.echo(result.summary)
    return result.exit_code
