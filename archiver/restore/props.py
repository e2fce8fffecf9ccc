"""What a restore brings back beyond pg_restore's own work, and what it says about it.

- **The database's properties** (:mod:`archiver.pg.properties`): a database archiver creates gets the
  source's encoding and locale (a target server that cannot provide them is refused before
  anything is written), and after pg_restore has committed its owner, settings, comment and
  privileges. An existing database must already have the source's encoding and locale; its own
  settings are left as they are, and the plan says what of the source's is not applied.
- **Materialized views**: pg_dump keeps their definitions and re-computes their rows on restore
  (REFRESH), so a view that was stale when the backup was taken comes back with other rows. That is
  pg_dump's semantics, not damage: the summary says which views were re-computed and whose row
  counts differ from the backup's snapshot.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import DatabaseError, UsageError
from ..pg import properties as dbprops
from ..pg import target as pg_target
from ..pg.properties import DatabaseProperties, database_properties
from ..pg.stats import MatviewRef
from ..pg.target import apply_statements, inspect_target, locale_problem, matview_stats

if TYPE_CHECKING:
    from .planned import RestorePlan
    from .select import Source

LOCALE_HINT = ("restore to a server that provides this encoding and locale (`locale -a` lists a machine's locales; on "
               "Debian/Ubuntu add one with the locales package, then restart PostgreSQL)")
NEW_DATABASE_HINT = ("restore into a new database (name one that does not exist: archiver creates it with the "
                     "backup's encoding and locale)")


class TargetUnsuitable(UsageError):
    """The target cannot take this backup (version, extension, not empty, no room, locale): exit 2."""


def recorded_properties(source: Source) -> DatabaseProperties | None:
    """The source database's properties as the manifest records them (None in manifests from before)."""
    recorded = source.database.get("properties")
    return DatabaseProperties.from_json(recorded) if recorded else None


def plan_properties(plan: RestorePlan) -> None:
    """Check that the target can hold the source's encoding and locale, and plan the rest (read-only)."""
    properties = recorded_properties(plan.source)
    if properties is None:
        if plan.create_database:
            plan.notes.append("the backup records no database properties (taken by an older archiver): the database "
                              "is created with the server's default encoding and locale, without the source's "
                              "settings, comment and privileges")
        return
    plan.properties = properties
    if not plan.create_database:
        _check_existing(plan, properties)
        return
    problem = dbprops.provider_problem(properties, plan.target.server_version_num) or locale_problem(
        plan.target_dsn, encoding=properties.encoding, locales=[properties.collate, properties.ctype],
        icu_locale=properties.locale if properties.provider == "icu" else None)
    if problem:
        raise TargetUnsuitable(f"the target server cannot create database {plan.target_name} with the source "
                               f"database's {properties.locale_text()}: {problem}", hint=LOCALE_HINT)
    roles = set(plan.target.roles) | set(plan.roles.create if plan.roles else [])
    plan.database_options = dbprops.create_options(properties, plan.target.server_version_num)
    plan.properties_plan = dbprops.plan_properties(properties, plan.target_name, roles=roles,
                                                   superuser=plan.target.superuser, restoring_role=plan.target.user)
    plan.notes += [f"not restored: {text}" for text in plan.properties_plan.skipped]


def _check_existing(plan: RestorePlan, properties: DatabaseProperties) -> None:
    current = DatabaseProperties.from_json(database_properties(plan.target_dsn))
    differences = dbprops.locale_differences(properties, current)
    if differences:
        raise TargetUnsuitable(f"the target database {plan.target_name} differs from the source database in "
                               f"{'; '.join(differences)}: text would sort, compare or encode differently",
                               hint=NEW_DATABASE_HINT)
    left = dbprops.plan_properties(properties, plan.target_name, roles=plan.target.roles, superuser=True,
                                   restoring_role=current.owner or plan.target.user)
    if properties.settings or properties.comment is not None or properties.acl is not None:
        plan.notes.append(f"{plan.target_name} exists: the source database's settings, comment and privileges are "
                          f"not applied to it ({len(left.statements)} statement(s)); {NEW_DATABASE_HINT}")


def create_database(plan: RestorePlan) -> None:
    """CREATE DATABASE with the source's encoding and locale; a refusal by the server is the target's fault."""
    try:
        pg_target.create_database(plan.target_dsn, plan.database_options)
    except DatabaseError as exc:
        if not plan.database_options:
            raise
        assert plan.properties is not None
        raise TargetUnsuitable(f"the target server refused to create database {plan.target_name} with the source "
                               f"database's {plan.properties.locale_text()}: {exc.message}",
                               hint=LOCALE_HINT) from None


def apply_properties(plan: RestorePlan) -> list[tuple[str, str]]:
    """Owner, settings, comment and privileges of the source, once pg_restore has committed: (statement, error)
    of each that failed (the others are applied; one failure does not undo the restore)."""
    if plan.properties_plan is None or not plan.properties_plan.statements:
        return []
    return apply_statements(plan.target_dsn, plan.properties_plan.statements)


def property_differences(dsn: str, source: Source) -> list[str] | None:
    """How a restored database's properties differ from the manifest's (None: none recorded)."""
    properties = recorded_properties(source)
    if properties is None:
        return None
    target = inspect_target(dsn)
    actual = DatabaseProperties.from_json(database_properties(dsn))
    return dbprops.differences(properties, actual, roles=target.roles, restoring_role=target.user)


# -- materialized views ------------------------------------------------------------------------------

@dataclass(frozen=True)
class MatviewCheck:
    name: str
    recorded_populated: bool
    recorded_rows: int | None
    populated: bool | None  # None: missing after the restore
    rows: int | None

    @property
    def refreshed(self) -> bool:
        """Re-computed by the restore (pg_dump's REFRESH of a populated view)."""
        return bool(self.recorded_populated and self.populated)

    @property
    def counts_differ(self) -> bool:
        return self.refreshed and self.rows != self.recorded_rows

    @property
    def missing(self) -> bool:
        return self.populated is None

    def note(self) -> str | None:
        if self.missing:
            return f"materialized view {self.name} is missing from the restored database"
        if self.counts_differ:
            return (f"materialized view {self.name} was refreshed by the restore and its row count changed from "
                    f"{self.recorded_rows:,} to {self.rows:,} (it was stale when the backup was taken: pg_dump keeps "
                    "a materialized view's definition, not its rows)")
        if not self.recorded_populated:
            return f"materialized view {self.name} is not populated, as in the backup (REFRESH MATERIALIZED VIEW fills it)"
        if not self.populated:
            return f"materialized view {self.name} was not refreshed by the restore (its data was excluded from the dump)"
        return None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "refreshed": self.refreshed, "recorded_rows": self.recorded_rows,
                "rows": self.rows, "populated": self.populated}


def compare_matviews(dsn: str, source: Source) -> list[MatviewCheck]:
    """Each materialized view of the manifest, looked at in the restored database."""
    recorded = list(source.document.get("content", {}).get("materialized_views", []))
    if not recorded:
        return []
    counted = matview_stats(dsn, [MatviewRef.from_json(entry) for entry in recorded])
    return [MatviewCheck(stats.view.qualified_name, bool(entry.get("populated")), entry.get("rows"), stats.populated,
                         stats.rows) for entry, stats in zip(recorded, counted, strict=True)]


def matview_lines(checks: Iterable[MatviewCheck]) -> list[str]:
    """Summary lines: which views the restore re-computed, and a note for each that needs one."""
    checks = list(checks)
    refreshed = [check.name for check in checks if check.refreshed]
    lines = []
    if refreshed:
        changed = sum(1 for check in checks if check.counts_differ)
        shown = ", ".join(refreshed[:10]) + (f" and {len(refreshed) - 10} more" if len(refreshed) > 10 else "")
        lines.append(f"materialized views: {len(refreshed)} refreshed by the restore ({shown}); "
                     + (f"{changed} with another row count than in the backup" if changed
                        else "row counts as in the backup"))
    lines += [f"note     {text}" for text in (check.note() for check in checks) if text]
    return lines
