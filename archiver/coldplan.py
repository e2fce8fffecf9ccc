"""Pure decisions of the cold tier: (facts, rules, now) -> what to do, with the reason.

The tasks gather the facts (catalog, manifests, object checks, fingerprints) and apply these
functions; ``--dry-run`` and ``archiver plan`` print exactly the same decisions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from .manifest import LoadedManifest
from .timeutil import format_duration, parse_timestamp

EXPORT, SKIP, HOLD, DROP, KEEP, EXPIRE, WARN, REFUSE, FAIL = (
    "export", "skip", "hold", "drop", "keep", "expire", "warn", "refuse", "fail")


@dataclass(frozen=True)
class Decision:
    task: str  # archive, retention, expiry
    table: str
    subject: str  # a chunk, an object key, or "" for the table itself
    action: str
    reason: str

    def line(self, *, dry_run: bool = False) -> str:
        verb = f"would {self.action}" if dry_run and self.action in (EXPORT, DROP, EXPIRE) else self.action
        where = f"{self.table} {self.subject}".strip()
        return f"{verb:<14} {where}: {self.reason}"

    def to_json(self) -> dict[str, str]:
        return {"task": self.task, "table": self.table, "subject": self.subject, "action": self.action,
                "reason": self.reason}


def _version(manifest: LoadedManifest) -> int:
    return int((manifest.document or {}).get("version", 1))


def _summary(changes: list[str]) -> str:
    shown = "; ".join(changes[:2])
    return shown + (f"; and {len(changes) - 2} more" if len(changes) > 2 else "")


def archive_decision(manifest: LoadedManifest | None, object_problem: str | None, changes: list[str] | None,
                     *, late_data_check: bool) -> tuple[str, str]:
    """Export a due chunk, or skip it because a verified archive of exactly its rows exists."""
    if manifest is None:
        return EXPORT, "due, not archived yet"
    if manifest.error:
        return EXPORT, f"its manifest is unreadable ({manifest.error}); exporting again"
    version = _version(manifest)
    if object_problem:
        return EXPORT, f"archive v{version}: {object_problem}; exporting again as v{version + 1}"
    if not late_data_check:
        return SKIP, f"archived as v{version} (late-data check is off)"
    if changes:
        return EXPORT, (f"rows changed since archive v{version} (late data: {_summary(changes)}); "
                        f"exporting v{version + 1}")
    rows = (manifest.document or {}).get("rows")
    return SKIP, f"verified archive v{version} still matches ({rows} rows)"


def retention_decision(manifest: LoadedManifest | None, object_problem: str | None, changes: list[str] | None,
                       *, require_archive: bool) -> tuple[str, str]:
    """Drop a chunk past drop_after only when its archive is verified and still matches it."""
    if not require_archive:
        return DROP, "require_archive is off for this table: dropped without an archive check"
    if manifest is None:
        return HOLD, "no archive of this chunk; run `archiver archive` first"
    if manifest.error:
        return HOLD, f"its archive manifest is unreadable ({manifest.error}); run `archiver archive` to export it again"
    version = _version(manifest)
    if object_problem:
        return HOLD, f"archive v{version}: {object_problem}; run `archiver archive` to export it again"
    if changes:
        return HOLD, (f"rows changed since archive v{version} ({_summary(changes)}); run `archiver archive` to "
                      "export the new rows first")
    document = manifest.document or {}
    return DROP, f"verified archive v{version} matches ({document.get('rows')} rows, {document['object']['key']})"


def _offset_text(job: dict[str, Any], key: str) -> str:
    return str(job.get(f"{key}_text"))


def reaches_past(offset_seconds: Any, offset_integer: Any, drop_after: timedelta, drop_after_units: int | None) -> bool:
    """Does a job window of this offset reach further back than ``drop_after``? (None offset: forever)"""
    if offset_seconds is None and offset_integer is None:
        return True
    if offset_integer is not None:
        return drop_after_units is not None and int(offset_integer) > drop_after_units
    return float(offset_seconds) > drop_after.total_seconds()


def retention_job_verdict(jobs: list[dict[str, Any]], *, allowed: bool, archive_after: timedelta,
                          archive_after_units: int | None) -> tuple[str, str] | None:
    """A TimescaleDB retention job drops chunks on its own schedule, archived or not."""
    active = [job for job in jobs if job.get("scheduled", True)]
    if not active:
        return None
    job = active[0]
    soon = not reaches_past(job.get("drop_after_seconds"), job.get("drop_after_integer"), archive_after,
                            archive_after_units)
    detail = (f"TimescaleDB retention policy job {job['job_id']} (drop_after {_offset_text(job, 'drop_after')}) drops "
              "chunks whether or not they are archived"
              + (f", and even before archive_after ({format_duration(archive_after)}) makes them due for export"
                 if soon else ""))
    if allowed:
        return WARN, detail + " (allowed by archive.allow_timescaledb_retention_policy)"
    return REFUSE, (detail + "; not dropping anything in this table. Remove it (SELECT remove_retention_policy(...)) "
                    "and let archiver drop verified chunks, or set archive.allow_timescaledb_retention_policy: true")


def cagg_warnings(caggs: list[dict[str, Any]], *, drop_after: timedelta, drop_after_units: int | None) -> list[str]:
    """Continuous aggregates whose refresh window reaches into the range being dropped."""
    found = []
    for cagg in caggs:
        name = f"{cagg['view_schema']}.{cagg['view_name']}"
        if not cagg.get("has_policy"):
            continue
        if reaches_past(cagg.get("start_offset_seconds"), cagg.get("start_offset_integer"), drop_after,
                        drop_after_units):
            offset = cagg.get("start_offset_text") or "none (from the beginning)"
            found.append(f"continuous aggregate {name} refreshes with start_offset {offset}, further back than "
                         f"drop_after ({format_duration(drop_after)}): a refresh over dropped chunks deletes their "
                         "aggregated rows")
    return found


def expiry_decision(manifest: LoadedManifest, cold_cutoff: datetime, *, chunk_exists: bool,
                    cold_retention: timedelta) -> tuple[str, str] | None:
    """Expire a cold file whose range ended before ``now - cold_retention``; None when it is young."""
    if manifest.document is None:
        return KEEP, f"manifest unreadable ({manifest.error}); not expiring what cannot be read"
    end_text = (manifest.document.get("range") or {}).get("end_utc")
    if not end_text:
        return KEEP, "the manifest records no end of range in UTC; not expiring"
    end = parse_timestamp(end_text)
    if end > cold_cutoff:
        return None
    if chunk_exists:
        return KEEP, (f"range ended {end_text}, more than cold_retention ({format_duration(cold_retention)}) ago, but "
                      "the chunk is still in the database")
    return EXPIRE, f"range ended {end_text}, more than cold_retention ({format_duration(cold_retention)}) ago"


def orphan_decision(modified: datetime, now: datetime, grace: timedelta) -> tuple[str, str]:
    """A Parquet object no manifest references (left by a run killed before its manifest)."""
    age = now - modified
    if age < grace:
        return KEEP, f"no manifest references it, but it is only {format_duration(age)} old (an export may be running)"
    return EXPIRE, f"no manifest references it (left by an interrupted export {format_duration(age)} ago)"
