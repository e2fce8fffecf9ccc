"""Chunk ranges, cutoffs and the storage keys of archives (pure functions)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from archiver.coldtier import chunks, layout
from archiver.coldtier.chunks import Chunk, TableInfo
from archiver.coldtier.identity import SLICE_MAX, SLICE_MIN, SpaceSlice
from tests.coldtier_helpers import table

UTC = UTC


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


def test_keys_name_the_range_not_the_chunk_and_manifests_live_outside_the_parquet_tree() -> None:
    chunk = Chunk("_timescaledb_internal", "_hyper_1_7_chunk", datetime(2026, 11, 1, tzinfo=UTC),
                  datetime(2026, 11, 2, tzinfo=UTC))
    recreated = Chunk("_timescaledb_internal", "_hyper_1_93_chunk", chunk.start, chunk.end)
    assert info().identity(chunk) == info().identity(recreated), "a re-created chunk is the same range"
    assert layout.data_key("telemetry", info(), info().identity(chunk), 3, date(2026, 11, 1)) == (
        "archive/telemetry/public.asset_metrics/dt=2026-11-01/20261101T000000Z_20261102T000000Z.v3.parquet")
    assert chunks.manifest_key("telemetry", info(), info().identity(recreated)) == (
        "catalog/archive/telemetry/public.asset_metrics/20261101T000000Z_20261102T000000Z.json")


def test_space_partitions_are_part_of_a_range_identity() -> None:
    day = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 2, tzinfo=UTC)
    low = Chunk("_timescaledb_internal", "_hyper_1_1_chunk", *day, space=(SpaceSlice("device", SLICE_MIN, 1073741823),))
    high = Chunk("_timescaledb_internal", "_hyper_1_2_chunk", *day, space=(SpaceSlice("device", 1073741823, SLICE_MAX),))
    assert info().identity(low).stem == "20261101T000000Z_20261102T000000Z_smin_1073741823"
    assert info().identity(high).stem == "20261101T000000Z_20261102T000000Z_s1073741823_max"


def test_integer_ranges_appear_as_integers_and_dates_come_from_the_unit() -> None:
    chunk = Chunk("_timescaledb_internal", "_hyper_2_1_chunk", 1_762_000_000, 1_762_086_400)
    day = layout.day_of(1_762_000_000, "integer", "s")
    key = layout.data_key("telemetry", info("integer", "s"), info("integer", "s").identity(chunk), 1, day)
    assert key.endswith("/dt=2025-11-01/1762000000_1762086400.v1.parquet")


def test_odd_table_names_cannot_escape_their_key_segment() -> None:
    odd = TableInfo("p/..", "x y", chunks.PARTITIONED, "time", "timestamptz", [], [], table("public.x", 7, 90))
    chunk = Chunk("public", "p/../x y", None, datetime(2026, 1, 1, 0, 0, 0, 500, tzinfo=UTC))
    key = chunks.manifest_key("tele/metry", odd, odd.identity(chunk))
    assert key == "catalog/archive/tele%2Fmetry/p%2F...x%20y/min_20260101T000000.000500Z.json"


@pytest.mark.parametrize("value, text", [(None, "unbounded"), (5, "5"),
                                         (datetime(2026, 1, 1, tzinfo=UTC), "2026-01-01T00:00:00Z")])
def test_values_are_shown_plainly(value: object, text: str) -> None:
    assert chunks.show_value(value) == text  # type: ignore[arg-type]


def test_a_range_is_split_into_the_utc_days_it_touches() -> None:
    late = datetime(2026, 11, 8, 23, tzinfo=UTC)
    assert layout.range_days(late, late + timedelta(days=7), "timestamptz", None) == [
        date(2026, 11, 8) + timedelta(days=offset) for offset in range(8)], "a week from 23:00 touches 8 UTC days"
    assert layout.range_days(datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 2, tzinfo=UTC), "timestamptz",
                             None) == [date(2026, 11, 1)], "a range ends before its end"
    assert layout.range_days(86_400 * 3, 86_400 * 5, "integer", "s") == [date(1970, 1, 4), date(1970, 1, 5)]
    assert layout.day_of(-1, "integer", "s") == date(1969, 12, 31), "integer days are floored"
    assert layout.day_of(1_440 * 2 + 5, "integer", "min") == date(1970, 1, 3)


def test_no_data_path_component_starts_with_an_underscore_or_a_dot() -> None:
    hidden = TableInfo("_private", "_metrics", chunks.PARTITIONED, "time", "timestamptz", [], [],
                       table("_private._metrics", 7, 90))
    chunk = Chunk("_private", "_metrics_p1", datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 2, tzinfo=UTC))
    key = layout.data_key(".db", hidden, hidden.identity(chunk), 1, date(2026, 11, 1))
    assert key == "archive/%2Edb/%5Fprivate._metrics/dt=2026-11-01/20261101T000000Z_20261102T000000Z.v1.parquet"
    assert not any(part.startswith(("_", ".")) for part in key.split("/"))
    assert layout.data_prefixes(".db", "_private._metrics") == ["archive/%2Edb/%5Fprivate._metrics/",
                                                                "archive/.db/_private._metrics/"]
