"""Backup retention as a pure function: table-driven, across day, ISO-week, month and year boundaries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from archiver.backup.rotation import Record, RotationDecision, decide


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def rec(text: str, *, verified: bool = False) -> Record:
    moment = at(text)
    return Record(f"{moment:%Y%m%dT%H%M%SZ}-0000", moment, verified)


def kept(decisions: list[RotationDecision]) -> list[str]:
    return [d.record.time.strftime("%Y-%m-%d %H:%M") for d in decisions if d.keep]


def by_time(decisions: list[RotationDecision]) -> dict[str, str]:
    return {d.record.time.strftime("%Y-%m-%d %H:%M"): d.text for d in decisions}


NOW = at("2027-01-10 12:00")


def daily(start: str, days: int, hour: int = 2) -> list[Record]:
    first = at(start).replace(hour=hour)
    return [rec((first + timedelta(days=i)).isoformat()[:16]) for i in range(days)]


CASES = [
    pytest.param(
        # two backups a day: keep_daily keeps the later one of each of the 3 newest days
        [rec("2027-01-09 02:00"), rec("2027-01-09 14:00"), rec("2027-01-08 02:00"), rec("2027-01-08 14:00"),
         rec("2027-01-07 14:00"), rec("2027-01-06 14:00")],
        {"keep_daily": 3},
        ["2027-01-09 14:00", "2027-01-08 14:00", "2027-01-07 14:00"],
        id="daily-keeps-newest-of-each-day"),
    pytest.param(
        # 2026-12-31 (Thu) and 2027-01-03 (Sun) are in ISO week 2026-W53; 2027-01-04 starts 2027-W01
        [rec("2027-01-05 02:00"), rec("2027-01-04 02:00"), rec("2027-01-03 02:00"), rec("2027-01-01 02:00"),
         rec("2026-12-31 02:00"), rec("2026-12-28 02:00"), rec("2026-12-27 02:00")],
        {"keep_weekly": 3},
        ["2027-01-05 02:00", "2027-01-03 02:00", "2026-12-27 02:00"],
        id="iso-weeks-across-the-year-boundary"),
    pytest.param(
        # months: Jan 2027 newest is 01-09, Dec 2026 newest is 12-31, Nov 2026 newest is 11-30
        [rec("2027-01-09 02:00"), rec("2027-01-01 02:00"), rec("2026-12-31 23:59"), rec("2026-12-01 00:00"),
         rec("2026-11-30 02:00"), rec("2026-11-02 02:00"), rec("2026-10-31 02:00")],
        {"keep_monthly": 3},
        ["2027-01-09 02:00", "2026-12-31 23:59", "2026-11-30 02:00"],
        id="months-across-the-year-boundary"),
    pytest.param(
        [rec("2027-01-02 02:00"), rec("2026-12-31 02:00"), rec("2026-06-01 02:00"), rec("2025-12-31 23:00"),
         rec("2025-01-01 00:00"), rec("2024-12-31 00:00")],
        {"keep_yearly": 2},
        ["2027-01-02 02:00", "2026-12-31 02:00"],
        id="yearly"),
    pytest.param(
        [rec("2027-01-10 11:30"), rec("2027-01-10 11:10"), rec("2027-01-10 10:50"), rec("2027-01-10 09:59"),
         rec("2027-01-10 09:00")],
        {"keep_hourly": 2},
        ["2027-01-10 11:30", "2027-01-10 10:50"],
        id="hourly"),
    pytest.param(
        # fewer periods with backups than the rule allows: every period's newest is kept
        [rec("2027-01-09 02:00"), rec("2027-01-09 01:00"), rec("2026-11-09 02:00")],
        {"keep_monthly": 12},
        ["2027-01-09 02:00", "2026-11-09 02:00"],
        id="gaps-count-only-periods-that-have-backups"),
    pytest.param(
        daily("2026-12-20", 21),  # 2026-12-20 .. 2027-01-09
        {"keep_last": 2, "keep_daily": 4, "keep_weekly": 3, "keep_monthly": 2},
        # last/daily: 01-09..01-06; weekly: W01 (01-09), W53 (01-03), W52 (12-27); monthly: 01-09, 12-31
        ["2027-01-09 02:00", "2027-01-08 02:00", "2027-01-07 02:00", "2027-01-06 02:00", "2027-01-03 02:00",
         "2026-12-31 02:00", "2026-12-27 02:00"],
        id="gfs-union-of-rules"),
]


@pytest.mark.parametrize("records, rules, expected", CASES)
def test_rules_keep_the_newest_backup_of_each_recent_period(records: list[Record], rules: dict[str, int],
                                                            expected: list[str]) -> None:
    decisions = decide(records, rules, NOW)
    assert kept(decisions) == expected
    assert [d.record.time for d in decisions] == sorted((r.time for r in records), reverse=True)


def test_every_reason_is_listed_with_its_rank() -> None:
    records = daily("2026-12-20", 21)
    decisions = by_time(decide(records, {"keep_last": 2, "keep_daily": 4, "keep_weekly": 3, "keep_monthly": 2}, NOW))
    assert decisions["2027-01-09 02:00"] == "keep: last #1, daily #1, weekly #1, monthly #1"
    assert decisions["2027-01-08 02:00"] == "keep: last #2, daily #2"
    assert decisions["2027-01-03 02:00"] == "keep: weekly #2"
    assert decisions["2026-12-31 02:00"] == "keep: monthly #2"
    assert decisions["2026-12-27 02:00"] == "keep: weekly #3"
    # within the reach of keep_weekly and keep_monthly: the finer rule's period is named
    assert decisions["2027-01-01 02:00"] == "delete: 20270103T020000Z-0000 is newer in its week 2026-W53 (keep_weekly)"
    assert decisions["2027-01-05 02:00"] == "delete: 20270109T020000Z-0000 is newer in its week 2027-W01 (keep_weekly)"
    # older than what any rule reaches: the rule reaching furthest back is named
    assert decisions["2026-12-26 02:00"] == "delete: beyond keep_weekly 3"
    assert decisions["2026-12-20 02:00"] == "delete: beyond keep_weekly 3"


def test_beyond_names_the_rule() -> None:
    decisions = by_time(decide(daily("2027-01-01", 9), {"keep_daily": 7}, NOW))
    assert decisions["2027-01-02 02:00"] == "delete: beyond keep_daily 7"
    assert decisions["2027-01-03 02:00"] == "keep: daily #7"


def test_the_newest_verified_backup_is_never_deleted() -> None:
    records = daily("2026-12-01", 40)
    records[3] = Record(records[3].id, records[3].time, verified=True)  # 2026-12-04, long past every rule
    records[1] = Record(records[1].id, records[1].time, verified=True)  # older verified: may go
    decisions = by_time(decide(records, {"keep_last": 3}, NOW))
    assert decisions["2026-12-04 02:00"] == "keep: newest verified backup"
    assert decisions["2026-12-02 02:00"] == "delete: beyond keep_last 3"
    assert len([text for text in decisions.values() if text.startswith("keep")]) == 4


def test_min_keep_is_a_floor() -> None:
    records = daily("2027-01-01", 6)
    decisions = by_time(decide(records, {"keep_last": 1}, NOW, min_keep=3))
    assert decisions["2027-01-06 02:00"] == "keep: last #1"
    assert decisions["2027-01-05 02:00"] == "keep: min_keep 3"
    assert decisions["2027-01-04 02:00"] == "keep: min_keep 3"
    assert decisions["2027-01-03 02:00"] == "delete: beyond keep_last 1"


def test_zero_counts_and_a_single_backup_keep_at_least_one() -> None:
    decisions = decide([rec("2020-01-01 00:00")], {"keep_daily": 0}, NOW)
    assert [d.text for d in decisions] == ["keep: min_keep 1"]


def test_backups_from_the_future_are_kept() -> None:
    records = [rec("2027-01-11 02:00"), *daily("2027-01-01", 9)]
    decisions = by_time(decide(records, {"keep_last": 1}, NOW))
    assert decisions["2027-01-11 02:00"] == "keep: last #1, newer than now (clock skew?)"
    assert decisions["2027-01-09 02:00"].startswith("delete")


def test_no_rules_keep_everything_and_unknown_rules_are_refused() -> None:
    records = daily("2027-01-01", 3)
    assert all(d.keep for d in decide(records, {}, NOW))
    with pytest.raises(ValueError, match="keep_dayly"):
        decide(records, {"keep_dayly": 3}, NOW)


def test_the_result_depends_only_on_its_inputs() -> None:
    records = daily("2026-11-15", 60)
    rules = {"keep_last": 3, "keep_daily": 7, "keep_weekly": 4, "keep_monthly": 3}
    assert decide(records, rules, NOW) == decide(list(reversed(records)), rules, NOW)
