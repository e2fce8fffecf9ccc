"""Chunk ranges, cutoffs and the storage keys of archives (pure functions)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from archiver import chunks
from archiver.chunks import Chunk, TableInfo
from tests.coldtier import table

UTC = timezone.utc


def info(time_type: str = "timestamptz", unit: str | None = None) -> TableInfo:
    return TableInfo("public", "asset_metrics", chunks.HYPERTABLE, "time", time_type, [], [],
                     table("public.asset_metrics", 7, 90, time_unit=unit))


def test_partition_bounds_as_pg_get_expr_prints_them() -> None:
    assert chunks.parse_bound("'2026-11-01 00:00:00+00'", "timestamptz") == datetime(2026, 11, 1, tzinfo=UTC)
    assert chunks.parse_bound("'2026-11-01 06:30:00.25'", "timestamp") == datetime(2026, 11, 1, 6, 30, 0, 250000,
                                                                                    tzinfo=UTC)
    assert chunks.parse_bound("'2026-11-01'", "date") == datetime(2026, 11, 1, tzinfo=UTC)
    assert chunks.parse_bound("86400", "integer") == 86400
    assert chunks.parse_bound("MINVALUE", "timestamptz") is None
    assert chunks.parse_bound("'infinity'", "timestamptz") is None


def test_a_chunk_is_due_only_when_its_whole_range_ends_by_the_cutoff() -> None:
    now = datetime(2026, 11, 23, 12, tzinfo=UTC)
    boundary = chunks.cutoff(now, timedelta(days=7), None)
    day = lambda d: datetime(2026, 11, d, tzinfo=UTC)  # noqa: E731
    ending_before = Chunk("s", "a", day(15), day(16))
    ending_at = Chunk("s", "b", day(16), datetime(2026, 11, 16, 12, tzinfo=UTC))
    straddling = Chunk("s", "c", day(16), day(17))
    unbounded = Chunk("s", "d", day(1), None)
    assert chunks.due([ending_before, ending_at, straddling, unbounded], boundary) == [ending_before, ending_at]


def test_integer_time_durations_convert_into_the_table_units() -> None:
    assert chunks.duration_in_units(timedelta(days=7), "s") == 604_800
    assert chunks.duration_in_units(timedelta(days=1), "ms") == 86_400_000
    assert chunks.duration_in_units(timedelta(hours=1), "ns") == 3_600_000_000_000
    assert chunks.cutoff(1_000_000, timedelta(days=1), "s") == 1_000_000 - 86_400
    assert chunks.integer_to_datetime(86_400_000, "ms") == datetime(1970, 1, 2, tzinfo=UTC)


def test_keys_are_hive_style_and_manifests_live_outside_the_parquet_tree() -> None:
    chunk = Chunk("_timescaledb_internal", "_hyper_1_7_chunk", datetime(2026, 11, 1, tzinfo=UTC),
                  datetime(2026, 11, 2, tzinfo=UTC))
    assert chunks.data_key("telemetry", info(), chunk) == (
        "archive/telemetry/public.asset_metrics/year=2026/month=11/day=01/"
        "_hyper_1_7_chunk_20261101T000000Z_20261102T000000Z.parquet")
    assert chunks.manifest_key("telemetry", info(), chunk) == (
        "catalog/archive/telemetry/public.asset_metrics/_hyper_1_7_chunk_20261101T000000Z_20261102T000000Z.json")


def test_integer_ranges_appear_as_integers_and_dates_come_from_the_unit() -> None:
    chunk = Chunk("_timescaledb_internal", "_hyper_2_1_chunk", 1_762_000_000, 1_762_086_400)
    key = chunks.data_key("telemetry", info("integer", "s"), chunk)
    assert key.endswith("/year=2025/month=11/day=01/_hyper_2_1_chunk_1762000000_1762086400.parquet")


def test_odd_names_cannot_escape_their_key_segment() -> None:
    chunk = Chunk("public", "p/../x y", None, datetime(2026, 1, 1, 0, 0, 0, 500, tzinfo=UTC))
    stem = chunks.chunk_stem(chunk)
    assert "/" not in stem and stem == "p%2F..%2Fx%20y_min_20260101T000000.000500Z"


@pytest.mark.parametrize("value, text", [(None, "unbounded"), (5, "5"),
                                         (datetime(2026, 1, 1, tzinfo=UTC), "2026-01-01T00:00:00Z")])
def test_values_are_shown_plainly(value: object, text: str) -> None:
    assert chunks.show_value(value) == text  # type: ignore[arg-type]
