"""What the cold-tier tasks (archive, retention, plan) share: table selection, results.

Locking is the runner's: archive and retention share one database lock (see archiver.ops.locking).
"""

from __future__ import annotations

from typing import Any

from ..common import log, sysinfo
from ..common.result import TaskResult
from ..common.timeutil import isoformat, utcnow
from ..errors import TaskFailed, UsageError
from ..policy.schema import ArchiveConfig, ArchiveTable, Policy
from ..storage.base import IncompleteWrite, Store
from ..storage.uploads import abort_dead_uploads
from . import decisions as decide
from .catalog import TableCatalog, orphans
from .chunks import TableInfo, data_prefix
from .decisions import Decision
from .identity import key_part
from .lock import COLD_TIER
from .manifest import archive_catalog_prefix
from .shard import Shard
from .summary import summarise

# Archive, retention and restore-archive share one lock on the database: archive and retention decide
# about the same ranges (a range being re-exported must not be dropped meanwhile), and restore-archive
# writes rows into the ranges they look at.
COLD_TIER_LOCK = COLD_TIER

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
    elif decision.action in ("exported", "merged", "dropped", "expired", "removed"):
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
    result.data["summary_lines"] = summarise(decisions, dry_run=dry_run)
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


ORPHAN_LIMIT = 10  # more unreferenced objects than this (and than 10% of the archive): refuse to sweep


def clean_table(store: Store, catalog: TableCatalog, decisions: list[Decision], *, task: str, dry_run: bool,
                shard: Shard | None = None) -> int:
    """What killed runs left in a table's part of the store, removed under the cold-tier lock (no
    export can be running): superseded manifests and their objects, objects no manifest
    references, unfinished uploads. Returns how many objects were removed. A shard (whose
    catalog holds only its own ranges) touches only its own ranges' objects: the other shards'
    exports may be running beside it."""
    removed = 0
    for archived in catalog.archived.values():
        for stale in list(archived.stale):
            if not dry_run:
                store.delete(stale.key)  # manifest first: from here on its object is an orphan
            archived.stale.remove(stale)
            record(decisions, Decision(task, catalog.table, archived.identity.describe(),
                                       "would remove" if dry_run else "removed",
                                       f"manifest {stale.key} of version {(stale.document or {}).get('version')}, "
                                       "superseded by a newer version (left by an interrupted run)"), f"{task}.stale")
    leftovers = [key for key in orphans(store, catalog) if shard is None or shard.holds_key(key)]
    verdict = decide.orphan_verdict(len(leftovers), len(catalog.referenced_objects()),
                                      unreadable=len(catalog.unreadable), limit=ORPHAN_LIMIT) if leftovers else None
    if verdict is not None:
        record(decisions, Decision(task, catalog.table, "", *verdict), f"{task}.orphans")
    else:
        for key in leftovers:
            if not dry_run:
                store.delete(key)
                removed += 1
            record(decisions, Decision(task, catalog.table, key, "would remove" if dry_run else "removed",
                                       "no manifest references it (left by an interrupted run)"), f"{task}.orphan")
    started = utcnow()  # under the cold-tier lock nothing pending from before now has a live writer
    def others(write: IncompleteWrite) -> str | None:
        return None if shard is None or shard.holds_key(write.key) else f"not of {shard.describe()}"

    for upload in abort_dead_uploads(store, data_prefix(catalog.database, catalog.table), older_than=started,
                                     dry_run=dry_run, protect=others):
        if shard is not None and not shard.holds_key(upload.key):
            continue  # another shard's: not ours to judge, nor to mention
        action = ("would remove" if dry_run else "removed") if upload.abort else "keep"
        record(decisions, Decision(task, catalog.table, upload.key, action,
                                   f"unfinished upload ({upload.write.description}, started "
                                   f"{isoformat(upload.since)}): {upload.reason}"), f"{task}.incomplete")
    return removed
