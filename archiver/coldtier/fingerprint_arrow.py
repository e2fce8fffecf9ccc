"""The archive side of a fingerprint: the same measures computed with ``pyarrow.compute`` over Parquet batches.

See :mod:`archiver.coldtier.fingerprint` for the measures and why they were chosen.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from . import typemap as tm
from .fingerprint import EXACT, Fingerprint, canonical, measure_names, time_number
from .typemap import ColumnPlan

# --------------------------------------------------------------------------------------------
# Arrow side


def exact_sum(values: pa.Array) -> int:
    """Exact sum of an integer array (pyarrow's int64 sum wraps around silently)."""
    values = values.cast(pa.int64())
    high = pc.sum(pc.shift_right(values, 32)).as_py() or 0
    low = pc.sum(pc.bit_wise_and(values, 0xFFFFFFFF)).as_py() or 0
    return high * (1 << 32) + low


def _valid_only(values: pa.Array, validity: pa.Array) -> pa.Array:
    return values if validity.null_count == 0 else pc.filter(values, pc.is_valid(validity))


def _fixed_words(values: pa.Array, word: pa.DataType, per_value: int) -> list[pa.Array]:
    """The words of each fixed-width value (e.g. a uuid's two 64-bit halves), as separate arrays."""
    data = values.buffers()[1]
    words = pa.Array.from_buffers(word, len(values) * per_value, [None, data], offset=values.offset * per_value)
    grouped = pa.FixedSizeListArray.from_arrays(words, per_value)
    return [_valid_only(pc.list_element(grouped, index), values) for index in range(per_value)]


def _as_micros(values: pa.Array) -> pa.Array:
    """Timestamps/times in any unit as integer microseconds."""
    unit = values.type.unit
    integers = values.cast(pa.int64())
    if unit == "us":
        return integers
    if unit in ("s", "ms"):
        return pc.multiply(integers, 1_000_000 if unit == "s" else 1_000)
    return pc.divide(integers, 1_000)


def _u64(value: int) -> pa.Scalar:
    return pa.scalar(value, pa.uint64())


def _byteswap64(values: pa.Array) -> pa.Array:
    """Reverse the bytes of each uint64 (to read big-endian data on a little-endian machine)."""
    result = None
    for index in range(8):
        byte = pc.bit_wise_and(pc.shift_right(values, _u64(8 * index)), _u64(0xFF))
        moved = pc.shift_left(byte, _u64(8 * (7 - index)))
        result = moved if result is None else pc.bit_wise_or(result, moved)
    assert result is not None
    return result


def _plain(values: pa.Array) -> pa.Array:
    if isinstance(values.type, pa.BaseExtensionType):
        values = values.storage
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    return values


def _add(left: Any, right: Any) -> Any:
    if isinstance(left, Decimal) or isinstance(right, Decimal):
        return EXACT.add(Decimal(left), Decimal(right))
    return left + right


def _count(values: pa.Array, mask: pa.Array) -> int:
    return int(pc.sum(mask.cast(pa.int64())).as_py() or 0)


class ArrowFingerprint:
    """Accumulates the fingerprint of record batches (any order, any batch size)."""

    def __init__(self, plans: list[ColumnPlan], time_column: str) -> None:
        self.plans = plans
        self.time_column = time_column
        self.rows = 0
        self.totals: dict[str, dict[str, Any]] = {plan.name: dict.fromkeys(measure_names(plan), 0) for plan in plans}
        self._by_name = {plan.name: plan for plan in plans}
        self.time_min: Any = None
        self.time_max: Any = None
        self._time_kind = ""

    def add(self, batch: pa.RecordBatch) -> None:
        self.add_rows(batch.num_rows)
        for plan in self.plans:
            self.add_column(plan.name, batch.column(batch.schema.get_field_index(plan.name)))

    def add_rows(self, count: int) -> None:
        self.rows += count

    def merge(self, other: ArrowFingerprint) -> None:
        """Add another accumulator's rows (of the same plans): the fingerprint of a set of files."""
        self.rows += other.rows
        for name, measures in other.totals.items():
            for measure, amount in measures.items():
                self.totals[name][measure] = _add(self.totals[name][measure], amount)
        for value in (other.time_min, other.time_max):
            if value is not None:
                self.time_min = value if self.time_min is None else min(self.time_min, value)
                self.time_max = value if self.time_max is None else max(self.time_max, value)
        self._time_kind = self._time_kind or other._time_kind

    def add_column(self, name: str, values: pa.Array | pa.ChunkedArray) -> None:
        """Part of one column (rows are counted separately, with :meth:`add_rows`)."""
        plan = self._by_name[name]
        pieces = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
        bucket = self.totals[name]
        for piece in pieces:
            for measure, amount in self._measures(plan, piece):
                bucket[measure] = _add(bucket[measure], amount)
            if name == self.time_column and piece.null_count < len(piece):
                self._time_bounds(plan, piece)

    def _time_bounds(self, plan: ColumnPlan, values: pa.Array) -> None:
        if plan.kind == tm.TIMESTAMP:
            numbers = _as_micros(values)
        elif plan.kind == tm.DATE:
            numbers = values.cast(pa.int32())
        else:
            numbers = values
        bounds = pc.min_max(numbers)
        low, high = bounds["min"].as_py(), bounds["max"].as_py()
        self.time_min = low if self.time_min is None else min(self.time_min, low)
        self.time_max = high if self.time_max is None else max(self.time_max, high)
        self._time_kind = plan.kind

    def _measures(self, plan: ColumnPlan, values: pa.Array) -> list[tuple[str, Any]]:
        found: list[tuple[str, Any]] = [("nulls", values.null_count)]
        kind = plan.kind
        plain = _plain(values)
        if kind == tm.BOOL:
            found.append(("trues", int(pc.sum(plain.cast(pa.int64())).as_py() or 0)))
        elif kind == tm.INT:
            found.append(("sum", exact_sum(plain)))
        elif kind == tm.FLOAT:
            wide = plain.cast(pa.float64())
            finite = pc.filter(wide, pc.is_finite(wide))
            found += [("nan", _count(plain, pc.is_nan(plain))),
                      ("pinf", _count(plain, pc.equal(plain, math.inf))),
                      ("ninf", _count(plain, pc.equal(plain, -math.inf))),
                      ("fsum", pc.sum(finite).as_py() or 0.0),
                      ("fabs", pc.sum(pc.abs(finite)).as_py() or 0.0)]
        elif kind == tm.DECIMAL:
            total = pc.sum(plain.cast(pa.decimal256(76, plain.type.scale))).as_py()
            found.append(("sum", total if total is not None else Decimal(0)))
        elif kind == tm.NUMERIC_TEXT:
            found += self._numeric_text(plain)
        elif kind == tm.TIMESTAMP:
            found.append(("sum", Decimal(exact_sum(_as_micros(plain))).scaleb(-6, EXACT)))
        elif kind == tm.DATE:
            found += [("sum", exact_sum(plain.cast(pa.int32()))), ("infinite", 0)]
        elif kind == tm.TIME:  # time64, or (portable profile) int64 microseconds since midnight
            micros = plain if pa.types.is_integer(plain.type) else _as_micros(plain)
            found.append(("sum", Decimal(exact_sum(micros)).scaleb(-6, EXACT)))
        elif kind == tm.INTERVAL:
            fields = {name: pc.struct_field(plain, name) for name in ("months", "days", "nanoseconds")}
            valid = {name: _valid_only(field, plain) for name, field in fields.items()}
            found += [("months", exact_sum(valid["months"])), ("days", exact_sum(valid["days"])),
                      ("micros", exact_sum(pc.divide(valid["nanoseconds"], 1000)))]
        elif kind == tm.UUID:
            high = _byteswap64(_fixed_words(plain, pa.uint64(), 2)[0]).view(pa.int64())
            found.append(("hi", exact_sum(high)))
        elif kind in (tm.TEXT, tm.BINARY):
            found.append(("bytes", exact_sum(pc.binary_length(plain))))
        elif kind == tm.LIST:
            found += [("elements", exact_sum(pc.list_value_length(plain))), ("irregular", 0)]
            if plan.elem_kind in (tm.TIMESTAMP, tm.DATE):
                found.append(("infinite", 0))
        return found

    @staticmethod
    def _numeric_text(values: pa.Array) -> list[tuple[str, Any]]:
        total, nan, pinf, ninf = Decimal(0), 0, 0, 0
        for text in values.to_pylist():
            if text is None:
                continue
            if text == "NaN":
                nan += 1
            elif text == "Infinity":
                pinf += 1
            elif text == "-Infinity":
                ninf += 1
            else:
                total = EXACT.add(total, Decimal(text))
        return [("sum", total), ("nan", nan), ("pinf", pinf), ("ninf", ninf)]

    def result(self) -> Fingerprint:
        low, high = self.time_min, self.time_max
        if self._time_kind == tm.TIMESTAMP:
            low, high = (None if v is None else Decimal(v).scaleb(-6, EXACT) for v in (low, high))
        return Fingerprint(rows=self.rows, time_min=time_number(low), time_max=time_number(high),
                           columns={name: {measure: canonical(value) for measure, value in measures.items()}
                                    for name, measures in self.totals.items()})
