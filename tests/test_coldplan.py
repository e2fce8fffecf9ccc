"""Cold-tier decisions are pure: facts in, action and reason out."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

from archiver import coldplan
from archiver.manifest import LoadedManifest

NOW = datetime(2026, 11, 23, tzinfo=timezone.utc)


def loaded(version: int = 1, end: str | None = "2024-01-02T00:00:00Z") -> LoadedManifest:
    return LoadedManifest("catalog/archive/db/public.t/c.json", {
        "version": version, "rows": 10, "object": {"key": "archive/db/public.t/c.parquet"},
        "range": {"end_utc": end}, "chunk": {"schema": "public", "name": "c"}, "table": "public.t"})


def test_archive_exports_what_has_no_valid_archive_and_skips_what_still_matches() -> None:
    assert coldplan.archive_decision(None, None, None, late_data_check=True) == ("export", "due, not archived yet")
    broken = LoadedManifest("k", None, "not valid JSON")
    assert coldplan.archive_decision(broken, None, None, late_data_check=True)[0] == "export"
    action, reason = coldplan.archive_decision(loaded(2), "the object s3://b/k is missing", None, late_data_check=True)
    assert action == "export" and "exporting again as v3" in reason
    action, reason = coldplan.archive_decision(loaded(1), None, ["row count 10 (archive) != 12 (database)"],
                                               late_data_check=True)
    assert action == "export" and "late data: row count 10 (archive) != 12 (database)" in reason and "v2" in reason
    assert coldplan.archive_decision(loaded(1), None, [], late_data_check=True) == \
        ("skip", "verified archive v1 still matches (10 rows)")
    assert coldplan.archive_decision(loaded(1), None, None, late_data_check=False)[0] == "skip"


def test_retention_drops_only_verified_matching_archives() -> None:
    assert coldplan.retention_decision(None, None, None, require_archive=True)[0] == "hold"
    assert coldplan.retention_decision(loaded(), "the object x is missing", None, require_archive=True)[0] == "hold"
    assert coldplan.retention_decision(loaded(), None, ["column 'v' nulls 0 (archive) != 1 (database)"],
                                       require_archive=True)[0] == "hold"
    action, reason = coldplan.retention_decision(loaded(), None, [], require_archive=True)
    assert action == "drop" and "verified archive v1 matches (10 rows, archive/db/public.t/c.parquet)" == reason
    assert coldplan.retention_decision(None, None, None, require_archive=False)[0] == "drop"


def test_a_timescaledb_retention_job_is_refused_unless_allowed() -> None:
    jobs = [{"job_id": 1001, "scheduled": True, "drop_after_seconds": Decimal(30 * 86400), "drop_after_integer": None,
             "drop_after_text": "30 days"}]
    action, reason = coldplan.retention_job_verdict(jobs, allowed=False, archive_after=timedelta(days=7),
                                                    archive_after_units=None)
    assert action == "refuse" and "job 1001" in reason and "remove_retention_policy" in reason
    action, reason = coldplan.retention_job_verdict(jobs, allowed=True, archive_after=timedelta(days=60),
                                                    archive_after_units=None)
    assert action == "warn" and "even before archive_after" in reason
    paused = [{**jobs[0], "scheduled": False}]
    assert coldplan.retention_job_verdict(paused, allowed=False, archive_after=timedelta(days=7),
                                          archive_after_units=None) is None


def test_continuous_aggregates_refreshing_past_drop_after_are_named() -> None:
    caggs = [
        {"view_schema": "public", "view_name": "hourly", "has_policy": True, "start_offset_seconds": Decimal(120 * 86400),
         "start_offset_integer": None, "start_offset_text": "120 days"},
        {"view_schema": "public", "view_name": "daily", "has_policy": True, "start_offset_seconds": Decimal(3 * 86400),
         "start_offset_integer": None, "start_offset_text": "3 days"},
        {"view_schema": "public", "view_name": "forever", "has_policy": True, "start_offset_seconds": None,
         "start_offset_integer": None, "start_offset_text": None},
        {"view_schema": "public", "view_name": "manual", "has_policy": False},
    ]
    warnings = coldplan.cagg_warnings(caggs, drop_after=timedelta(days=90), drop_after_units=None)
    assert len(warnings) == 2
    assert "public.hourly refreshes with start_offset 120 days" in warnings[0]
    assert "public.forever refreshes with start_offset none (from the beginning)" in warnings[1]


def test_cold_files_expire_after_cold_retention_unless_their_chunk_is_still_hot() -> None:
    cutoff = NOW - timedelta(days=730)
    two_years = timedelta(days=730)
    assert coldplan.expiry_decision(loaded(end="2026-01-01T00:00:00Z"), cutoff, chunk_exists=False,
                                    cold_retention=two_years) is None
    assert coldplan.expiry_decision(loaded(), cutoff, chunk_exists=False, cold_retention=two_years)[0] == "expire"
    assert coldplan.expiry_decision(loaded(), cutoff, chunk_exists=True, cold_retention=two_years)[0] == "keep"
    assert coldplan.expiry_decision(loaded(end=None), cutoff, chunk_exists=False, cold_retention=two_years)[0] == "keep"


def test_orphans_get_a_grace_period() -> None:
    assert coldplan.orphan_decision(NOW - timedelta(hours=2), NOW, timedelta(days=1))[0] == "keep"
    assert coldplan.orphan_decision(NOW - timedelta(days=2), NOW, timedelta(days=1))[0] == "expire"


def test_dry_run_lines_say_would() -> None:
    decision = coldplan.Decision("retention", "public.t", "public.t_1", "drop", "verified")
    assert decision.line(dry_run=True) == "would drop     public.t public.t_1: verified"
    assert decision.line() == "drop           public.t public.t_1: verified"
