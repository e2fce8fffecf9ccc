"""Pure decisions of the cold tier: (facts, rules, now) -> what to do, with the reason.

The tasks gather the facts (catalog, manifests, object checks, fingerprints) and apply these
functions; ``--dry-run`` and ``archiver plan`` print exactly the same decisions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ..common.timeutil import format_duration, parse_timestamp

EXPORT, MERGE, SKIP, HOLD, DROP, KEEP, EXPIRE, WARN, REFUSE, FAIL, MOVE = (
    "export", "merge", "skip", "hold", "drop", "keep", "expire", "warn", "refuse", "fail", "move")


@dataclass(frozen=True)
class Decision:
    task: str  # archive, retention, expiry
    table: str
    subject: str  # a chunk, an object key, or "" for the table itself
    action: str
    reason: str
    start: str = ""  # a chunk's range, as people read it (for summaries of many chunks)
    end: str = ""

    def verb(self, *, dry_run: bool = False) -> str:
        return f"would {self.action}" if dry_run and self.action in (EXPORT, MERGE, DROP, EXPIRE, MOVE) else self.action

    def line(self, *, dry_run: bool = False) -> str:
        where = f"{self.table} {self.subject}".strip()
        return f"{self.verb(dry_run=dry_run):<14} {where}: {self.reason}"

    def to_json(self) -> dict[str, str]:
        entry = {"task": self.task, "table": self.table, "subject": self.subject, "action": self.action,
                 "reason": self.reason}
        if self.start or self.end:
            entry.update(start=self.start, end=self.end)
        return entry


@dataclass(frozen=True)
class RangeFacts:
    """What is known about one range (a chunk or partition due for archiving or dropping).

    ``version``/``rows``: the current archive (None: not archived). ``blocked``: something makes
    it unsafe to touch the range (an unreadable manifest that may describe it, a legacy archive
    of unknown space partition). ``database_matches``: the database fingerprint equals the
    archived one (None: not computed). The counts come from the row-level comparison, made only
    when the fingerprints differ: rows only in the database, only in the archive, in both.
    """

    version: int | None = None
    rows: int | None = None
    archived_only: int = 0  # rows of the version that were not in the database when it was written
    key: str = ""
    blocked: str | None = None
    duplicates: int = 0
    object_problem: str | None = None
    database_matches: bool | None = None
    database_only: int | None = None
    archive_only: int | None = None
    common: int | None = None
    rehydrated: bool = False
    rehydrated_whole: bool = False
    accept_deletes: bool = False
    archived_only_columns: tuple[str, ...] = ()

    @property
    def compared(self) -> bool:
        return self.database_only is not None

    def counts(self) -> tuple[int, int, int]:
        return int(self.database_only or 0), int(self.archive_only or 0), int(self.common or 0)


def _summary(changes: list[str]) -> str:
    shown = "; ".join(changes[:2])
    return shown + (f"; and {len(changes) - 2} more" if len(changes) > 2 else "")


ACCEPT_HINT = "`{command}` records the deletion"


def archive_decision(facts: RangeFacts, *, late_data_check: bool,
                     accept_command: str = "archiver archive NAME --accept-deletes RANGE") -> tuple[str, str]:
    """Export (or merge) a due range, skip it because its archive holds its rows, or hold it.

    Never writes a version holding fewer rows than the one it replaces, unless the operator
    said so (``accept_deletes``): rows in the archive and not in the database stay archived.
    """
    if facts.blocked:
        return HOLD, facts.blocked
    if facts.version is None:
        return EXPORT, "due, not archived yet"
    v = facts.version
    if facts.archived_only_columns:
        return HOLD, (f"archive v{v} holds column(s) {', '.join(facts.archived_only_columns)} that the table no "
                      "longer has: a new version would lose their values; archive kept")
    if facts.object_problem:
        if facts.database_matches:
            return EXPORT, (f"archive v{v}: {facts.object_problem}; the database still holds exactly its rows: "
                            f"exporting them again as v{v + 1}")
        return HOLD, (f"archive v{v}: {facts.object_problem}; the database no longer holds exactly the archived rows, "
                      "so the archive cannot be rebuilt from it: restore the object from a copy of the store "
                      "(the range is neither exported nor dropped meanwhile)")
    if facts.duplicates:
        return MERGE, (f"{facts.duplicates + 1} archives claim this range (written by an archiver that keyed archives "
                       f"by chunk name): merging them and the database's rows into v{v + 1}, no row twice")
    if not late_data_check:
        return SKIP, f"archived as v{v} (late-data check is off)"
    if facts.database_matches or not facts.compared:
        return SKIP, f"verified archive v{v} still matches ({facts.rows} rows)"
    return _changed_range(facts, v, accept_command)


def _changed_range(facts: RangeFacts, v: int, accept_command: str) -> tuple[str, str]:
    new, missing, common = facts.counts()
    hint = ACCEPT_HINT.format(command=accept_command)
    if not missing:
        if not new:
            return SKIP, f"archive v{v} holds exactly the database's {common:,} rows"
        return EXPORT, f"{new:,} row(s) added since archive v{v} (late data): exporting v{v + 1} with all {common + new:,}"
    if missing <= facts.archived_only:  # the rows the database lacked already when v was written
        if not new:
            return SKIP, (f"archive v{v} holds the database's {common:,} rows and {missing:,} more whose range was "
                          "dropped earlier")
        return MERGE, (f"{new:,} new row(s) in a range whose other {missing:,} archived row(s) were dropped earlier: "
                       f"v{v + 1} keeps those and adds the new ones")
    partial = facts.rehydrated and not facts.rehydrated_whole
    if facts.accept_deletes and not partial:
        return EXPORT, (f"deletion accepted by the operator: v{v + 1} holds the database's {common + new:,} rows "
                        f"({missing:,} archived row(s) removed, {new:,} added)")
    if facts.accept_deletes:
        return HOLD, ("--accept-deletes refused: the range was only partly restored by restore-archive, so the "
                      "database does not hold all of its rows; restore the whole range first")
    if not new:
        if facts.rehydrated:
            return SKIP, (f"{common:,} of its {common + missing:,} archived rows were brought back by restore-archive: "
                          f"already archived in v{v}")
        return HOLD, (f"the database holds {common:,} of {common + missing:,} archived rows: rows were deleted or only "
                      f"partly restored; archive v{v} kept. {hint}")
    if facts.rehydrated or not common:
        return MERGE, (f"{new:,} new row(s) in a range whose {missing:,} other archived row(s) are not in the database "
                       f"(dropped or not restored): v{v + 1} keeps those and adds the new ones")
    return HOLD, (f"rows changed since archive v{v}: the database lacks {missing:,} archived row(s) and holds {new:,} "
                  f"that are not archived (updated or deleted rows?); archive kept. {hint}")


def retention_decision(facts: RangeFacts, *, require_archive: bool,
                       accept_command: str = "archiver archive NAME --accept-deletes RANGE") -> tuple[str, str]:
    """Drop a range past drop_after only when its checked archive holds every row it has."""
    if not require_archive:
        return DROP, "require_archive is off for this table: dropped without an archive check"
    if facts.blocked:
        return HOLD, facts.blocked
    if facts.version is None:
        return HOLD, "no archive of this range; run `archiver archive` first"
    v = facts.version
    if facts.duplicates:
        return HOLD, f"{facts.duplicates + 1} archives claim this range; run `archiver archive` to merge them first"
    if facts.object_problem:
        return HOLD, f"archive v{v}: {facts.object_problem}; run `archiver archive` to deal with it"
    if facts.database_matches:
        return DROP, f"verified archive v{v} matches ({facts.rows} rows, {facts.key})"
    if not facts.compared:
        return HOLD, f"the rows changed since archive v{v}; run `archiver archive` first"
    new, missing, common = facts.counts()
    if new:
        return HOLD, (f"{new:,} row(s) in the database are not in archive v{v} yet; run `archiver archive` to "
                      "export them first")
    if missing <= facts.archived_only:
        return DROP, f"archive v{v} holds every row of the range ({common:,}, {facts.key})"
    if facts.rehydrated:
        return DROP, (f"brought back by restore-archive ({common:,} of {common + missing:,} rows); archive v{v} still "
                      "holds every one of them: dropped again")
    return HOLD, (f"the database holds {common:,} of {common + missing:,} archived rows (deleted rows?): archive v{v} "
                  f"kept, range not dropped. {ACCEPT_HINT.format(command=accept_command)}")


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


def expiry_decision(document: dict[str, Any] | None, error: str | None, cold_cutoff: datetime, *, chunk_exists: bool,
                    cold_retention: timedelta) -> tuple[str, str] | None:
    """Expire a cold file whose range ended before ``now - cold_retention``; None when it is young."""
    if document is None:
        return KEEP, f"manifest unreadable ({error}); not expiring what cannot be read"
    end_text = (document.get("range") or {}).get("end_utc")
    if not end_text:
        return KEEP, "the manifest records no end of range in UTC; not expiring"
    end = parse_timestamp(end_text)
    if end > cold_cutoff:
        return None
    if chunk_exists:
        return KEEP, (f"range ended {end_text}, more than cold_retention ({format_duration(cold_retention)}) ago, but "
                      "the chunk is still in the database")
    return EXPIRE, f"range ended {end_text}, more than cold_retention ({format_duration(cold_retention)}) ago"


def orphan_verdict(orphans: int, referenced: int, *, unreadable: int, limit: int) -> tuple[str, str] | None:
    """Objects under a table's archive/ prefix that no manifest references: left by a run killed
    before its manifest, or after a newer version's manifest and before the old object's
    deletion. They are removed under the cold-tier lock (no export can be running), unless the
    catalog may be incomplete. None: remove them."""
    if unreadable:
        return HOLD, (f"{orphans} Parquet object(s) have no manifest, but {unreadable} manifest(s) are unreadable, so "
                      "what they reference is unknown: none is deleted")
    if not referenced:
        return HOLD, (f"{orphans} Parquet object(s) under archive/ but no archive manifest at all: they cannot be told "
                      "apart from archives whose catalog/ was lost, so none is deleted")
    if orphans > max(limit, referenced // 10):
        return HOLD, (f"{orphans} Parquet object(s) under archive/ have no manifest, against {referenced} archived; "
                      "not deleting that many - check the catalog/ prefix")
    return None
