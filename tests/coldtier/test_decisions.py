"""Cold-tier decisions are pure: facts in, action and reason out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from archiver.coldtier import decisions

NOW = datetime(2026, 11, 23, tzinfo=UTC)


def document(end: str | None = "2024-01-02T00:00:00Z") -> dict[str, object]:
    return {"version": 1, "rows": 10, "object": {"key": "archive/db/public.t/c.parquet"}, "range": {"end_utc": end},
            "chunk": {"schema": "public", "name": "c"}, "table": "public.t"}


def archived(version: int = 1, **facts: object) -> decisions.RangeFacts:
    return decisions.RangeFacts(version=version, rows=10, key="archive/db/public.t/c.v1.parquet", **facts)  # type: ignore[arg-type]


def compared(new: int, missing: int, common: int, **facts: object) -> decisions.RangeFacts:
    return archived(database_matches=False, database_only=new, archive_only=missing, common=common, **facts)


def archive(facts: decisions.RangeFacts, late_data_check: bool = True) -> tuple[str, str]:
    return decisions.archive_decision(facts, late_data_check=late_data_check, accept_command="archiver archive t --accept-deletes A/B")


def retention(facts: decisions.RangeFacts) -> tuple[str, str]:
    return decisions.retention_decision(facts, require_archive=True, accept_command="archiver archive t --accept-deletes A/B")


def test_archive_exports_what_has_no_archive_and_skips_what_still_matches() -> None:
    assert archive(decisions.RangeFacts()) == ("export", "due, not archived yet")
    assert archive(archived(database_matches=True)) == ("skip", "verified archive v1 still matches (10 rows)")
    assert archive(archived(), late_data_check=False)[0] == "skip"
    assert archive(decisions.RangeFacts(blocked="an unreadable manifest"))[0] == "hold"


def test_a_damaged_archive_is_rebuilt_only_from_a_database_that_still_holds_exactly_its_rows() -> None:
    action, reason = archive(archived(2, object_problem="the object s3://b/k is missing", database_matches=True))
    assert action == "export" and "exporting them again as v3" in reason
    action, reason = archive(archived(2, object_problem="the object s3://b/k is missing", database_matches=False))
    assert action == "hold" and "cannot be rebuilt" in reason


def test_a_new_version_never_holds_fewer_rows_than_the_one_it_replaces() -> None:
    action, reason = archive(compared(new=2, missing=0, common=10))
    assert action == "export" and "2 row(s) added since archive v1 (late data): exporting v2 with all 12" in reason
    action, reason = archive(compared(new=0, missing=1044, common=1116))
    assert action == "hold" and "the database holds 1,116 of 2,160 archived rows" in reason
    assert "--accept-deletes A/B" in reason
    action, reason = archive(compared(new=0, missing=1044, common=1116, rehydrated=True))
    assert action == "skip" and "brought back by restore-archive" in reason
    action, reason = archive(compared(new=3, missing=7, common=0))
    assert action == "merge" and "v2 keeps those and adds the new ones" in reason
    action, reason = archive(compared(new=3, missing=7, common=2, rehydrated=True))
    assert action == "merge"
    action, reason = archive(compared(new=1, missing=1, common=9))
    assert action == "hold" and "lacks 1 archived row(s) and holds 1" in reason
    assert archive(compared(new=3, missing=7, common=2, archived_only=7))[0] == "merge"
    assert archive(compared(new=0, missing=7, common=2, archived_only=7))[0] == "skip"


def test_only_the_operator_replaces_an_archive_with_fewer_rows() -> None:
    action, reason = archive(compared(new=1, missing=1, common=9, accept_deletes=True))
    assert action == "export" and "deletion accepted by the operator" in reason and "1 archived row(s) removed" in reason
    action, reason = archive(compared(new=0, missing=5, common=5, accept_deletes=True, rehydrated=True))
    assert action == "hold" and "only partly restored" in reason
    action, _ = archive(compared(new=0, missing=5, common=5, accept_deletes=True, rehydrated=True,
                                 rehydrated_whole=True))
    assert action == "export"


def test_archives_of_one_range_written_under_chunk_names_are_merged() -> None:
    action, reason = archive(archived(1, duplicates=1))
    assert action == "merge" and "2 archives claim this range" in reason
    assert retention(archived(1, duplicates=1))[0] == "hold"


def test_retention_drops_only_ranges_whose_archive_holds_every_row() -> None:
    assert retention(decisions.RangeFacts())[0] == "hold"
    assert retention(archived(object_problem="the object x is missing"))[0] == "hold"
    action, reason = retention(archived(database_matches=True))
    assert action == "drop" and reason == "verified archive v1 matches (10 rows, archive/db/public.t/c.v1.parquet)"
    assert retention(compared(new=1, missing=0, common=10))[0] == "hold"
    assert retention(compared(new=0, missing=3, common=7))[0] == "hold"
    action, reason = retention(compared(new=0, missing=3, common=7, rehydrated=True))
    assert action == "drop" and "brought back by restore-archive" in reason
    assert retention(compared(new=0, missing=3, common=7, archived_only=3))[0] == "drop"
    assert decisions.retention_decision(decisions.RangeFacts(), require_archive=False)[0] == "drop"


def test_a_timescaledb_retention_job_is_refused_unless_allowed() -> None:
    jobs = [{"job_id": 1001, "scheduled": True, "drop_after_seconds": Decimal(30 * 86400), "drop_after_integer": None,
             "drop_after_text": "30 days"}]
    action, reason = decisions.retention_job_verdict(jobs, allowed=False, archive_after=timedelta(days=7),
                                                    archive_after_units=None)
    assert action == "refuse" and "job 1001" in reason and "remove_retention_policy" in reason
    action, reason = decisions.retention_job_verdict(jobs, allowed=True, archive_after=timedelta(days=60),
                                                    archive_after_units=None)
    assert action == "warn" and "even before archive_after" in reason
    paused = [{**jobs[0], "scheduled": False}]
    assert decisions.retention_job_verdict(paused, allowed=False, archive_after=timedelta(days=7),
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
    warnings = decisions.cagg_warnings(caggs, drop_after=timedelta(days=90), drop_after_units=None)
    assert len(warnings) == 2
    assert "public.hourly refreshes with start_offset 120 days" in warnings[0]
    assert "public.forever refreshes with start_offset none (from the beginning)" in warnings[1]


def test_cold_files_expire_after_cold_retention_unless_their_chunk_is_still_hot() -> None:
    cutoff = NOW - timedelta(days=730)
    two_years = timedelta(days=730)
    def expiry(doc: dict[str, object], exists: bool) -> tuple[str, str] | None:
        return decisions.expiry_decision(doc, None, cutoff, chunk_exists=exists, cold_retention=two_years)

    assert expiry(document(end="2026-01-01T00:00:00Z"), False) is None
    assert expiry(document(), False)[0] == "expire"  # type: ignore[index]
    assert expiry(document(), True)[0] == "keep"  # type: ignore[index]
    assert expiry(document(end=None), False)[0] == "keep"  # type: ignore[index]
    assert decisions.expiry_decision(None, "not JSON", cutoff, chunk_exists=False,
                                    cold_retention=two_years)[0] == "keep"  # type: ignore[index]


def test_orphans_are_removed_unless_the_catalog_may_be_incomplete() -> None:
    assert decisions.orphan_verdict(2, 40, unreadable=0, limit=10) is None
    assert decisions.orphan_verdict(2, 40, unreadable=1, limit=10)[0] == "hold"  # type: ignore[index]
    assert decisions.orphan_verdict(2, 0, unreadable=0, limit=10)[0] == "hold"  # type: ignore[index]
    assert decisions.orphan_verdict(11, 40, unreadable=0, limit=10)[0] == "hold"  # type: ignore[index]


def test_dry_run_lines_say_would() -> None:
    decision = decisions.Decision("retention", "public.t", "public.t_1", "drop", "verified")
    assert decision.line(dry_run=True) == "would drop     public.t public.t_1: verified"
    assert decision.line() == "drop           public.t public.t_1: verified"
