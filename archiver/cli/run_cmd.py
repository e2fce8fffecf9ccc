"""``archiver run NAME TASK``: exactly one task, for cron and Kubernetes CronJobs."""

from __future__ import annotations

import os

import click

from ..tasks import TASK_NAMES, named
from . import params
from .context import AppContext, pass_app
from .jsonout import emit, task_document


@click.command("run")
@click.argument("name", shell_complete=params.complete_policy)
@click.argument("task", type=click.Choice(TASK_NAMES))
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON line on stdout.")
@pass_app
def run_command(app: AppContext, name: str, task: str, as_json: bool) -> int:
    """Run TASK of policy NAME once, with the same locks and records as the worker.

    Exit codes: 0 done, 1 failed, 2 usage/policy error, 3 another run holds the lock,
    4 verification failed, 5 done but something was held back. With ARCHIVER_PUSHGATEWAY (or
    the policy's metrics.pushgateway) set, the run's metrics are pushed there at the end.
    """
    from ..ops.metrics import Metrics
    from ..ops.push import push_run
    from ..ops.runner import run_task

    chosen = named(task)
    policy = app.policy_for(name, store_only=chosen.store_only)
    metrics = Metrics()
    gateway = os.environ.get("ARCHIVER_PUSHGATEWAY") or (policy.metrics.pushgateway if policy.metrics else None)
    try:
        result = run_task(chosen, policy, chosen.options(), metrics=metrics)
    finally:
        if gateway:
            push_run(metrics, gateway, policy, task)
    if as_json:  # one JSON document: the decision lines travel inside it, not as loose text on stderr
        emit("run", task_document(result, dry_run=False), indent=None)  # one line: the worker reads the last
    else:
        for line in result.lines:
            click.echo(line, err=True)
        click.echo(result.summary)
    return result.exit_code
