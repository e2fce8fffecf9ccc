"""``archiver status [--json]``: one row per policy; exit 1 when anything is stale or failing."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

import click

from ..common.timeutil import format_duration
from ..errors import ExitCode
from .context import AppContext, pass_app
from .jsonout import emit

if TYPE_CHECKING:
    from ..ops.status import PolicyStatus


def _age(seconds: int | None) -> str:
    return "-" if seconds is None else format_duration(timedelta(seconds=seconds))


def render_status(statuses: list[PolicyStatus]) -> None:
    rows = [("POLICY", "HEALTH", "NEWEST BACKUP", "AGE", "EVERY", "NEWEST PROVEN", "TASKS FAILING")]
    for status in statuses:
        newest, proven = status.newest_backup or {}, status.newest_verified or {}
        failing = ",".join(task for task, entry in status.tasks.items() if entry.get("failing")) or "-"
        rows.append((status.policy, "ok" if status.healthy else "PROBLEM", newest.get("id", "none"),
                     _age(newest.get("age_seconds")), _age(newest.get("interval_seconds")),
                     f"{proven['id']} ({_age(proven['age_seconds'])})" if proven else "none", failing))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)).rstrip())
    for status in statuses:
        for problem in status.problems:
            click.echo(f"{status.policy}: {problem}")
        for note in status.notes:
            click.echo(f"{status.policy}: {note}")
        for table, entry in ((status.archive or {}).get("tables") or {}).items():
            click.echo(f"{status.policy}: {table}: {_coverage(entry)}")
        if status.pitr:
            click.echo(f"{status.policy}: {pitr_line(status.pitr)}")
        if status.held_back:
            click.echo(f"{status.policy}: {len(status.held_back)} chunk(s) held back from drop by the last retention run")
        found = status.protection
        if found and (found["backups_encrypted"] or found["object_lock"]):  # plain policies: nothing to add
            from ..policy.protect import describe_protection

            click.echo(f"{status.policy}: protection: {describe_protection(found)}")


def pitr_line(pitr: dict[str, Any]) -> str:
    lag = pitr.get("lag_seconds")
    lag_text = "no WAL archived yet" if lag is None else (f"WAL lag {_age(lag)} (rpo {_age(pitr['rpo_seconds'])}, "
                                                         f"newest {pitr.get('last_archived_wal')})")
    return f"point-in-time recovery: {pitr.get('window_text')}; {lag_text}"


def _coverage(entry: dict[str, object]) -> str:
    def span(part: object) -> str:
        data = part if isinstance(part, dict) else {}
        if not data.get("count"):
            return "0"
        return f"{data['count']} ({str(data['from'])[:10]} .. {str(data['to'])[:10]})"

    text = f"archived {span(entry.get('archived'))}"
    if "hot" in entry:
        text += f", hot {span(entry['hot'])}, dropped {span(entry['dropped'])}"
        if entry.get("hot_not_archived"):
            text += f", {entry['hot_not_archived']} hot chunk(s) not archived yet"
    gaps: Any = entry.get("gaps") or []
    text += f", gaps: {len(gaps)} (first {gaps[0]['from']} .. {gaps[0]['to']})" if gaps else ", no gaps"
    return text


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document, an entry per policy.")
@click.option("--no-database", is_flag=True, help="Answer from the store alone (skip the hot chunks).")
@pass_app
def status_command(app: AppContext, as_json: bool, no_database: bool) -> int:
    """Per policy: newest backup and its age against the schedule, newest proven backup, failing
    tasks, held-back chunks. Exit 1 when anything is stale or failing (usable as a health check);
    a policy file that does not load is a failing row of its own, the others are reported as usual."""
    from ..ops.status import all_status, broken_policy_status

    policies, broken = app.policies_for_overview(section="storage")
    statuses = all_status(policies, check_database=not no_database)
    statuses += [broken_policy_status(item.name, item.source, item.summary) for item in broken]
    statuses.sort(key=lambda status: (status.policy, status.source or ""))
    if as_json:
        emit("status", {"healthy": all(status.healthy for status in statuses),
                        "policies": [status.to_json() for status in statuses]})
    else:
        render_status(statuses)
    return ExitCode.OK if all(status.healthy for status in statuses) else ExitCode.TASK_FAILED
