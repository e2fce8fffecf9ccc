"""The checks of a restore drill on the restored database: large objects, materialized views, database
properties, hypertables, pg_amcheck, the policy's SQL checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from ..backup.dump import child_env, pg_amcheck_argv
from ..common.process import run_captured
from ..common.timeutil import isoformat
from ..errors import ArchiverError, UsageError
from ..pg import binaries
from ..pg.connect import server_version_num
from ..pg.dsn import dsn_env
from ..pg.scratch import ContainerPostgres, LocalPostgres
from ..pg.stats import CHECKSUM_METHOD
from ..pg.target import content_stats, first_value, timescale_inventory
from ..policy.expect import parse_expectation
from . import props
from .select import Source

AMCHECK_TIMEOUT = 6 * 3600

Status = Literal["pass", "fail", "skip"]


@dataclass
class Check:
    kind: str  # object, restore, table, large_objects, matview, database, hypertable, amcheck, sql, archive
    name: str
    status: Status
    expected: Any = None
    actual: Any = None
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"kind": self.kind, "name": self.name, "status": self.status}
        for key in ("expected", "actual"):
            value = getattr(self, key)
            if value is not None:
                entry[key] = jsonable(value)
        if self.detail:
            entry["detail"] = self.detail
        return entry

    def line(self) -> str:
        text = f"{self.status.upper():4}  {self.kind:13} {self.name}"
        if self.status == "fail" and (self.expected is not None or self.actual is not None):
            text += f": expected {show_value(self.expected)}, got {show_value(self.actual)}"
        elif self.actual is not None and self.status == "pass" and self.kind in ("sql", "hypertable", "large_objects",
                                                                                  "matview"):
            text += f": {show_value(self.actual)}"
        if self.detail:
            text += f" ({self.detail})"
        return text


def jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime):
        return isoformat(value)
    return str(value)


def show_value(value: Any) -> str:
    return "missing" if value is None else str(jsonable(value))


def check_large_objects(target: str, source: Source) -> Check:
    recorded = source.document.get("content", {}).get("large_objects", {})
    method = source.checksum_method  # None: a method this archiver cannot compute; counts only
    checksums = "checksum" in recorded and method is not None
    counted = content_stats(target, tables=[], checksums=checksums,
                               method=method or CHECKSUM_METHOD).large_objects.to_json()
    counted.pop("note", None)
    expected = {key: value for key, value in recorded.items() if key == "count" or (key == "checksum" and checksums)}
    actual = {key: value for key, value in counted.items() if key in expected}
    return Check("large_objects", "pg_largeobject", "pass" if actual == expected else "fail", expected, actual)


def check_matviews(target: str, source: Source) -> list[Check]:
    """Materialized views: present, and populated as in the backup. The restore re-computes their rows (pg_dump's
    semantics), so another row count is a note, not a failure."""
    checks = []
    for view in props.compare_matviews(target, source):
        status: Status = "fail" if view.missing or view.populated != view.recorded_populated else "pass"
        expected = {"populated": view.recorded_populated, "rows": view.recorded_rows}
        actual = None if view.missing else {"populated": view.populated, "rows": view.rows}
        checks.append(Check("matview", view.name, status, expected, actual, detail=view.note() or (
            "refreshed by the restore; row count as in the backup" if view.refreshed else "")))
    return checks


def check_database_properties(target: str, source: Source) -> list[Check]:
    """The restored database has the source's encoding, locale, owner, settings, comment and privileges."""
    differences = props.property_differences(target, source)
    if differences is None:
        return []
    name = str(source.database.get("name") or "database")
    return [Check("database", name, "fail" if differences else "pass", detail="; ".join(differences) or
                  "encoding, locale, owner, settings, comment and privileges as in the source")]


def check_hypertables(target: str, source: Source) -> list[Check]:
    if not source.timescaledb:
        return []
    restored = {item.qualified_name: item for item in timescale_inventory(target)}
    recorded = source.document.get("content", {}).get("hypertables")
    if recorded is None:  # a manifest from before chunk counts were recorded: existence only
        names = [f"{t['schema']}.{t['name']}" for t in source.tables if t.get("kind") == "hypertable"]
        return [Check("hypertable", name, "pass" if name in restored else "fail", detail="chunk counts not recorded")
                for name in names]
    checks = []
    for entry in recorded:
        name = f"{entry['schema']}.{entry['name']}"
        expected = {"chunks": entry["chunks"], "compressed_chunks": entry["compressed_chunks"]}
        found = restored.get(name)
        actual = None if found is None else {"chunks": found.chunks, "compressed_chunks": found.compressed_chunks}
        checks.append(Check("hypertable", name, "pass" if actual == expected else "fail", expected, actual))
    return checks


def check_amcheck(target: str, instance: LocalPostgres | ContainerPostgres) -> Check:
    """pg_amcheck of every table and B-tree index; skipped (and said so) where the tool is missing."""
    major = server_version_num(target) // 10000
    try:
        program = binaries.find("pg_amcheck", server_major=major,
                             configured=str(instance.bindir) if isinstance(instance, LocalPostgres) else None)
    except UsageError:
        return Check("amcheck", "pg_amcheck", "skip", detail="pg_amcheck is not installed (PostgreSQL 14+ client)")
    env = child_env(dsn_env(target), "archiver verify pg_amcheck")
    result = run_captured(pg_amcheck_argv(program), env, "pg_amcheck", timeout=AMCHECK_TIMEOUT)
    output = (result.stdout + result.stderr).strip()
    if result.returncode == 0 and not result.stdout.strip():
        return Check("amcheck", "pg_amcheck", "pass", detail="heap and B-tree indexes")
    if "amcheck" in output and ("extension" in output or "control file" in output) and result.returncode == 1:
        return Check("amcheck", "pg_amcheck", "skip", detail="the scratch server lacks the amcheck extension: "
                                                             + output.splitlines()[-1][:300])
    tail = "\n".join(output.splitlines()[-20:])
    return Check("amcheck", "pg_amcheck", "fail", detail=f"exit {result.returncode}: {tail}")


def check_sql(target: str, name: str, statement: str, expect: str) -> Check:
    expectation = parse_expectation(expect)
    try:
        value = first_value(target, statement)
    except ArchiverError as exc:
        return Check("sql", name, "fail", expect, None, detail=f"query failed: {exc.message}")
    return Check("sql", name, "pass" if expectation.holds(value) else "fail", expect, value)
