"""What the cold-tier tasks (archive, retention, plan) share: table selection, results.

Locking is the runner's: archive and retention share one database lock (see archiver.locking).
"""

from __future__ import annotations

from typing import Any

from .. import log, sysinfo
from ..chunks import TableInfo, key_part
from ..coldplan import Decision
from ..errors import TaskFailed, UsageError
from ..manifest import archive_catalog_prefix
from ..policy import ArchiveConfig, ArchiveTable, Policy
from . import TaskResult

MiB = 1024 * 1024


class ColdTierFailed(TaskFailed):
    """Some chunks failed; the result still tells what happened to every other chunk."""

    def __init__(self, message: str, result: TaskResult) -> None:
        super().__init__(message)
        self.result = result


def archive_section(policy: Policy) -> ArchiveConfig:
    if policy.archive is None:
        raise UsageError(f"policy {policy.name!r} has no archive section (nothing to archive or drop)",
                         hint="add archive: {schedule: ..., tables: [...]} to the policy")
    return policy.archive


def select_tables(config: ArchiveConfig, wanted: str | None) -> list[ArchiveTable]:
    if wanted is None:
        return list(config.tables)
    qualified = wanted if "." in wanted else f"public.{wanted}"
    matches = [table for table in config.tables if table.qualified_name == qualified]
    if not matches:
        listed = ", ".join(table.qualified_name for table in config.tables)
        raise UsageError(f"table {wanted!r} is not in the policy's archive.tables (listed: {listed})")
    return matches


def catalog_prefix(database: str, info: TableInfo | None = None) -> str:
    return archive_catalog_prefix(key_part(database), key_part(info.display) if info else None)


def record(decisions: list[Decision], decision: Decision, event: str) -> Decision:
    decisions.append(decision)
    if decision.action in ("hold", "refuse", "warn", "fail", "mismatch"):
        level = "warning"
    elif decision.action in ("exported", "dropped", "expired", "removed"):
        level = "info"
    else:
        level = "debug"
    getattr(log.get_logger(decision.task), level)(event, extra=log.fields(
        table=decision.table, chunk=decision.subject or None, action=decision.action, reason=decision.reason))
    return decision


def finish(result: TaskResult, decisions: list[Decision], *, dry_run: bool, metrics: dict[str, float],
           event: str) -> TaskResult:
    metrics["peak_rss_bytes"] = sysinfo.peak_rss_bytes()
    result.metrics.update(metrics)
    result.lines = [decision.line(dry_run=dry_run) for decision in decisions]
    result.data["decisions"] = [decision.to_json() for decision in decisions]
    result.data["dry_run"] = dry_run
    actions = {decision.action for decision in decisions}
    if "fail" in actions:
        failed = [d for d in decisions if d.action == "fail"]
        result.summary += f"; {len(failed)} failed"
    log.get_logger(result.task).info(event, extra=log.fields(policy=result.policy, status=result.status,
                                                             summary=result.summary, **_rounded(metrics)))
    return result


def _rounded(metrics: dict[str, Any]) -> dict[str, Any]:
    return {key: round(value, 3) if isinstance(value, float) else value for key, value in metrics.items()}
