"""The fingerprint: exact where it can be, the same definition on both sides, order-independent."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pyarrow as pa
import pytest

from archiver.coldtier import typemap as tm
from archiver.coldtier.fingerprint import (
    Fingerprint,
    canonical,
    database_query,
    from_database_row,
    measure_names,
    time_display,
    unrepresentable,
)
from archiver.coldtier.fingerprint_arrow import ArrowFingerprint, exact_sum
from archiver.coldtier.parquet import interval_struct


def plan(name: str, arrow_type: pa.DataType, kind: str, **extra: object) -> tm.ColumnPlan:
    return tm.ColumnPlan(name, "t", arrow_type, kind, f'"{name}"', f'"{name}"', **extra)  # type: ignore[arg-type]


def test_exact_sum_does_not_wrap_like_pyarrow_int64_sums() -> None:
    values = pa.array([2**62, 2**62, 2**62, -5, None], pa.int64())
    assert exact_sum(values) == 3 * 2**62 - 5
    assert exact_sum(pa.array([-(2**63), -(2**63)], pa.int64())) == -(2**64)


def test_canonical_numbers_have_one_spelling() -> None:
    assert canonical(Decimal("1.500")) == "1.5"
    assert canonical(Decimal("0.000")) == "0"
    assert canonical(None) == "0"
    assert canonical(Decimal("12345678901234567890123456789012345678.0123456789")) == \
        "12345678901234567890123456789012345678.0123456789"
    assert canonical(Decimal("NaN")) == "NaN"
    assert canonical(0.1) == "0.1"


def batch_of(plans: list[tm.ColumnPlan], columns: list[pa.Array]) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(columns, names=[p.name for p in plans])


def test_arrow_fingerprint_is_independent_of_order_and_batching() -> None:
    plans = [plan("t", pa.timestamp("us", tz="UTC"), tm.TIMESTAMP), plan("v", pa.float64(), tm.FLOAT),
             plan("u", pa.uuid(), tm.UUID), plan("s", pa.string(), tm.TEXT), plan("d", pa.decimal128(10, 2), tm.DECIMAL)]
    times = [datetime(2026, 1, 1, hour, tzinfo=UTC) for hour in range(6)]
    values = [1.5, math.nan, math.inf, -2.25, None, 3.0]
    uuids = [uuid.UUID(int=(n * 0x1234567890ABCDEF) << 64 | n) if n % 3 else None for n in range(6)]
    texts = ["a", "bb", None, "dddd", "é", ""]
    decimals = [Decimal("1.25"), None, Decimal("-3.10"), Decimal("99999999.99"), Decimal("0"), Decimal("0.01")]
    columns = [pa.array(times, pa.timestamp("us", tz="UTC")), pa.array(values, pa.float64()),
               pa.array([u.bytes if u else None for u in uuids], pa.binary(16)), pa.array(texts),
               pa.array(decimals, pa.decimal128(10, 2))]
    columns[2] = pa.ExtensionArray.from_storage(pa.uuid(), columns[2])
    whole = ArrowFingerprint(plans, "t")
    whole.add(batch_of(plans, columns))
    order = [5, 3, 1, 0, 4, 2]
    shuffled = ArrowFingerprint(plans, "t")
    full = batch_of(plans, columns).take(pa.array(order))
    shuffled.add(full.slice(0, 2))
    shuffled.add(full.slice(2))
    a, b = whole.result(), shuffled.result()
    assert a.matches(b) and a.to_json() == b.to_json()
    assert a.rows == 6
    assert a.columns["v"] == {"nulls": "1", "nan": "1", "pinf": "1", "ninf": "0", "fsum": "2.25", "fabs": "6.75"}
    assert a.columns["s"] == {"nulls": "1", "bytes": str(1 + 2 + 4 + 2)}
    assert a.columns["d"] == {"nulls": "1", "sum": "99999998.15"}
    expected_hi = sum(int.from_bytes(u.bytes[:8], "big", signed=True) for u in uuids if u)
    assert a.columns["u"] == {"nulls": "2", "hi": str(expected_hi)}
    assert a.time_min == str(int(times[0].timestamp())) and a.time_max == str(int(times[5].timestamp()))
    assert time_display(a.time_max, tm.TIMESTAMP) == "2026-01-01T05:00:00Z"


def test_intervals_are_summed_per_field() -> None:
    raw = pa.array([pa.MonthDayNano([14, 3, 5_000_000]), None, pa.MonthDayNano([-1, 0, -2_000])],
                   pa.month_day_nano_interval())
    values = interval_struct(raw, tm.INTERVAL_TYPE)
    plans = [plan("t", pa.int64(), tm.INT), plan("i", tm.INTERVAL_TYPE, tm.INTERVAL)]
    accumulator = ArrowFingerprint(plans, "t")
    accumulator.add(batch_of(plans, [pa.array([1, 2, 3]), values]))
    assert accumulator.result().columns["i"] == {"nulls": "1", "months": "13", "days": "3", "micros": "4998"}


def test_float_sums_compare_within_the_documented_tolerance_only() -> None:
    base = Fingerprint(rows=1_000_000, columns={"v": {"fsum": "1000000.0", "fabs": "1000000.0"}})
    rounding = Fingerprint(rows=1_000_000, columns={"v": {"fsum": repr(1000000.0 + 1e-7), "fabs": "1000000.0"}})
    changed = Fingerprint(rows=1_000_000, columns={"v": {"fsum": "1000000.5", "fabs": "1000000.5"}})
    assert base.matches(rounding)
    assert not base.matches(changed)
    assert any("'v' fsum" in line for line in base.differences(changed))


def test_differences_name_what_changed() -> None:
    before = Fingerprint(rows=10, columns={"n": {"nulls": "0", "sum": "5"}}, time_min="1", time_max="2")
    after = Fingerprint(rows=11, columns={"n": {"nulls": "0", "sum": "9"}}, time_min="1", time_max="3")
    assert before.differences(after, mine="archive", theirs="database") == [
        "row count 10 (archive) != 11 (database)", "max time 2 (archive) != 3 (database)",
        "column 'n' sum 5 (archive) != 9 (database)"]
    assert Fingerprint.from_json(before.to_json()).matches(before)


def test_database_side_is_one_aggregate_query_over_the_same_measures() -> None:
    plans = [plan("t", pa.timestamp("us", tz="UTC"), tm.TIMESTAMP), plan("v", pa.float32(), tm.FLOAT),
             tm.ColumnPlan("j", "jsonb", pa.json_(pa.string()), tm.TEXT, '"j"', '"j"', length_sql='("j")::text')]
    query = database_query(plans, '"public"."c1"', "t")
    assert query.sql.startswith('SELECT count(*), extract(epoch FROM min("t")), extract(epoch FROM max("t")), ')
    assert query.sql.endswith(' FROM "public"."c1"')
    assert 'sum("v"::float8) FILTER (WHERE "v" > \'-Infinity\' AND "v" < \'Infinity\')' in query.sql
    assert 'sum(octet_length(("j")::text))' in query.sql
    assert [m for c, m in query.layout if c == "v"] == measure_names(plans[1])
    row = (3, Decimal("10.5"), Decimal("20"), 0, Decimal("31.5"), 0, 0, 0, 0, 1.5, 1.5, 0, 42)
    result = from_database_row(query, row)
    assert result.rows == 3 and result.time_min == "10.5" and result.columns["j"] == {"nulls": "0", "bytes": "42"}


@pytest.mark.parametrize("kind, measures, problem", [
    (tm.DECIMAL, {"sum": "NaN"}, "NaN or Infinity numeric"),
    (tm.TIMESTAMP, {"sum": "Infinity"}, "infinite timestamps"),
    (tm.DATE, {"sum": "0", "infinite": "2"}, "2 infinite timestamp/date"),
    (tm.LIST, {"elements": "4", "irregular": "1"}, "multi-dimensional"),
])
def test_unrepresentable_values_are_named(kind: str, measures: dict[str, str], problem: str) -> None:
    found = unrepresentable(Fingerprint(rows=1, columns={"c": {"nulls": "0", **measures}}),
                               [plan("c", pa.int64(), kind)])
    assert len(found) == 1 and problem in found[0] and "'c'" in found[0]
