"""An order-independent content fingerprint of a chunk, computed the same way on both sides.

The database side is one SQL aggregate query over the chunk; the archive side is computed with
``pyarrow.compute`` over the Parquet file read back from the store. Both produce the same
document, so comparing them proves that what the store holds is what the database holds:

- ``rows``: the row count; ``time``: min and max of the time column;
- per column ``nulls`` and, by kind:

  ========== ===========================================================================
  bool       ``trues``
  int        ``sum`` (exact, arbitrary precision)
  float      ``nan``, ``pinf``, ``ninf`` counts, and ``fsum``/``fabs``: the sum and the sum of
             absolute values of the finite values, compared with a tolerance of
             4 x rows x 2^-52 x fabs (the worst rounding error of summing in any order)
  decimal    ``sum`` (exact); NaN/Infinity (which a Parquet decimal cannot hold) turn it into
             NaN/Infinity, which marks the chunk unrepresentable
  numeric    (text form) ``sum`` of the finite values (exact), ``nan``, ``pinf``, ``ninf``
  timestamp  ``sum`` of seconds since 1970 (exact, microsecond precision); an infinite value
             makes it infinite, which marks the chunk unrepresentable
  date       ``sum`` of days since 1970, ``infinite`` (must be 0)
  time       ``sum`` of seconds since midnight (exact)
  interval   ``months``, ``days``, ``micros`` sums (exact)
  uuid       ``hi``: exact sum of the first 8 bytes read as a big-endian signed integer
  text       ``bytes``: total octet length of the value as exported (JSON and enums as text)
  binary     ``bytes``: total octet length
  list       ``elements``: total element count; ``irregular`` (multi-dimensional arrays or
             lower bounds other than 1, which Arrow lists cannot hold) and, for arrays of
             timestamps/dates, ``infinite``: both must be 0
  ========== ===========================================================================

Texts and binaries are summarised by length only (a same-length edit is not seen), uuids by
their first half and floats within a rounding tolerance; the other kinds exactly. The measures
were chosen to cost the database little more than the scan itself. Values are stored as
canonical decimal strings (floats as their shortest round-trip form).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Context, Decimal
from typing import Any

from . import typemap as tm
from .typemap import ColumnPlan

# PostgreSQL numerics carry up to 131072 digits before the point: never round a sum.
EXACT = Context(prec=200_000, Emax=999_999, Emin=-999_999)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def canonical(value: Any) -> str:
    """One spelling per number: integers plainly, decimals without trailing zeros, floats by repr."""
    if value is None:
        return "0"
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    number = Decimal(value)
    if not number.is_finite():
        return str(number)
    if number == 0:
        return "0"
    return format(number.normalize(EXACT), "f")


APPROXIMATE = "fsum"
TOLERANCE_FACTOR = 4 * 2.0 ** -52


def _close_enough(left: str, right: str, magnitude: float, rows: int) -> bool:
    a, b = float(left), float(right)
    return a == b or abs(a - b) <= TOLERANCE_FACTOR * max(rows, 1) * magnitude


def time_number(value: Any) -> str | None:
    """A time column bound as a canonical number: seconds since 1970 for timestamps (exact to the
    microsecond), days since 1970 for dates, the value itself for integers."""
    return None if value is None else canonical(value)


def time_display(value: str | None, kind: str) -> str | None:
    """A time bound as people read it: ISO-8601 UTC for timestamps and dates, the integer otherwise."""
    if value is None or kind not in (tm.TIMESTAMP, tm.DATE):
        return value
    try:
        if kind == tm.DATE:
            return (date(1970, 1, 1) + timedelta(days=int(value))).isoformat()
        moment = EPOCH + timedelta(microseconds=int(Decimal(value).scaleb(6, EXACT)))
        return moment.isoformat().replace("+00:00", "Z")
    except (OverflowError, ValueError, ArithmeticError):
        return value


@dataclass
class Fingerprint:
    rows: int
    columns: dict[str, dict[str, str]] = field(default_factory=dict)
    time_min: str | None = None
    time_max: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "time": {"min": self.time_min, "max": self.time_max}, "columns": self.columns}

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> Fingerprint:
        time = document.get("time") or {}
        return cls(rows=int(document["rows"]), columns={name: {k: str(v) for k, v in measures.items()}
                                                          for name, measures in document.get("columns", {}).items()},
                   time_min=time_number(time.get("min")), time_max=time_number(time.get("max")))

    def differences(self, other: Fingerprint, *, mine: str = "database", theirs: str = "archive") -> list[str]:
        """What differs, one line each; empty when the fingerprints match."""
        found: list[str] = []
        if self.rows != other.rows:
            found.append(f"row count {self.rows} ({mine}) != {other.rows} ({theirs})")
        for label, a, b in (("min time", self.time_min, other.time_min), ("max time", self.time_max, other.time_max)):
            if a != b:
                found.append(f"{label} {a} ({mine}) != {b} ({theirs})")
        for name in sorted(set(self.columns) | set(other.columns)):
            left, right = self.columns.get(name), other.columns.get(name)
            if left is None or right is None:
                found.append(f"column {name!r} only in {mine if right is None else theirs}")
                continue
            for measure in sorted(set(left) | set(right)):
                if measure == APPROXIMATE and measure in left and measure in right:
                    magnitude = max(float(left.get("fabs", "0")), float(right.get("fabs", "0")))
                    if _close_enough(left[measure], right[measure], magnitude, max(self.rows, other.rows)):
                        continue
                elif measure == "fabs" and measure in left and measure in right:
                    magnitude = max(float(left[measure]), float(right[measure]))
                    if _close_enough(left[measure], right[measure], magnitude, max(self.rows, other.rows)):
                        continue
                if left.get(measure) != right.get(measure):
                    found.append(f"column {name!r} {measure} {left.get(measure)} ({mine}) != "
                                 f"{right.get(measure)} ({theirs})")
        return found

    def matches(self, other: Fingerprint) -> bool:
        return not self.differences(other)


# --------------------------------------------------------------------------------------------
# Database side


def _special_value_counts(v: str) -> list[tuple[str, str]]:
    """Counts of NaN and the infinities, which sums leave out (float and numeric alike)."""
    return [("nan", f"count(*) FILTER (WHERE {v} = 'NaN')"),
            ("pinf", f"count(*) FILTER (WHERE {v} = 'Infinity')"),
            ("ninf", f"count(*) FILTER (WHERE {v} = '-Infinity')")]


def _send_bits(function: str, expression: str, start: int, length: int) -> str:
    """A big-endian slice of a type's binary send form as a signed integer (``bit(n)`` -> int)."""
    target = "bigint" if length == 8 else "int"
    return f"('x' || encode(substr({function}({expression}), {start}, {length}), 'hex'))::bit({length * 8})::{target}"


def _measures_sql(plan: ColumnPlan) -> list[tuple[str, str]]:
    v, s = plan.value_sql, plan.select_sql
    measures = [("nulls", f"count(*) - count({s})")]
    kind = plan.kind
    if kind == tm.BOOL:
        measures.append(("trues", f"count(*) FILTER (WHERE {v})"))
    elif kind == tm.INT:
        measures.append(("sum", f"sum({v})"))
    elif kind == tm.FLOAT:
        finite = f"{v} > '-Infinity' AND {v} < 'Infinity'"  # NaN sorts above Infinity in PostgreSQL
        measures += [*_special_value_counts(v),
                     ("fsum", f"sum({v}::float8) FILTER (WHERE {finite})"),
                     ("fabs", f"sum(abs({v}::float8)) FILTER (WHERE {finite})")]
    elif kind == tm.DECIMAL:
        measures.append(("sum", f"sum({v})"))
    elif kind == tm.NUMERIC_TEXT:
        measures += [("sum", f"sum({v}) FILTER (WHERE {v} NOT IN ('NaN', 'Infinity', '-Infinity'))"),
                     *_special_value_counts(v)]
    elif kind == tm.TIMESTAMP:
        measures.append(("sum", f"sum(extract(epoch FROM {v}))"))
    elif kind == tm.DATE:
        measures += [("sum", f"sum({v} - DATE '1970-01-01') FILTER (WHERE isfinite({v}))"),
                     ("infinite", f"count(*) FILTER (WHERE NOT isfinite({v}))")]
    elif kind == tm.TIME:
        measures.append(("sum", f"sum(extract(epoch FROM {v}))"))
    elif kind == tm.INTERVAL:
        measures += [("micros", f"sum({_send_bits('interval_send', v, 1, 8)})"),
                     ("days", f"sum({_send_bits('interval_send', v, 9, 4)})"),
                     ("months", f"sum({_send_bits('interval_send', v, 13, 4)})")]
    elif kind == tm.UUID:
        measures.append(("hi", f"sum({_send_bits('uuid_send', v, 1, 8)})"))
    elif kind in (tm.TEXT, tm.BINARY):
        measures.append(("bytes", f"sum(octet_length({plan.length_sql or s}))"))
    elif kind == tm.LIST:
        measures += [("elements", f"sum(cardinality({v}))"),
                     ("irregular", f"count(*) FILTER (WHERE array_ndims({v}) > 1 OR array_lower({v}, 1) <> 1)")]
        if plan.elem_kind in (tm.TIMESTAMP, tm.DATE):
            measures.append(("infinite", f"sum((SELECT count(*) FROM unnest({v}) AS e(x) WHERE NOT isfinite(e.x)))"))
    return measures


def measure_names(plan: ColumnPlan) -> list[str]:
    """The measures of a column: the same list on both sides."""
    return [measure for measure, _ in _measures_sql(plan)]


def _bound_sql(plan: ColumnPlan, function: str) -> str:
    bound = f"{function}({plan.value_sql})"
    if plan.kind == tm.TIMESTAMP:
        return f"extract(epoch FROM {bound})"
    if plan.kind == tm.DATE:
        return f"CASE WHEN isfinite({bound}) THEN {bound} - DATE '1970-01-01' END"
    return bound


@dataclass(frozen=True)
class DatabaseQuery:
    sql: str
    layout: list[tuple[str, str]]  # (column, measure) per output column after rows/min/max


def database_query(plans: list[ColumnPlan], relation: str, time_column: str) -> DatabaseQuery:
    """One aggregate query computing the fingerprint of ``relation`` (an already quoted name)."""
    time_plan = next(plan for plan in plans if plan.name == time_column)
    parts = ["count(*)", *(_bound_sql(time_plan, function) for function in ("min", "max"))]
    layout: list[tuple[str, str]] = []
    for plan in plans:
        for measure, expression in _measures_sql(plan):
            parts.append(expression)
            layout.append((plan.name, measure))
    return DatabaseQuery(f"SELECT {', '.join(parts)} FROM {relation}", layout)


def from_database_row(query: DatabaseQuery, row: tuple[Any, ...]) -> Fingerprint:
    fingerprint = Fingerprint(rows=int(row[0]), time_min=time_number(row[1]), time_max=time_number(row[2]))
    for (column, measure), value in zip(query.layout, row[3:], strict=True):
        fingerprint.columns.setdefault(column, {})[measure] = canonical(value)
    return fingerprint


def unrepresentable(fingerprint: Fingerprint, plans: list[ColumnPlan]) -> list[str]:
    """Values the database holds that the planned Arrow types cannot (read from the database side)."""
    problems: list[str] = []
    kinds = {plan.name: plan.kind for plan in plans}
    special = ("NaN", "Infinity", "-Infinity")
    for column, measures in sorted(fingerprint.columns.items()):
        kind = kinds.get(column)
        if kind == tm.DECIMAL and measures.get("sum") in special:
            problems.append(f"column {column!r} holds NaN or Infinity numeric values, which a Parquet decimal cannot "
                            "store")
        if kind == tm.TIMESTAMP and measures.get("sum") in special:
            problems.append(f"column {column!r} holds infinite timestamps, which Parquet timestamps cannot store")
        if measures.get("infinite", "0") != "0":
            problems.append(f"column {column!r} holds {measures['infinite']} infinite timestamp/date value(s), which "
                            "Parquet cannot store")
        if measures.get("irregular", "0") != "0":
            problems.append(f"column {column!r} holds {measures['irregular']} multi-dimensional array(s) or arrays "
                            "with a lower bound other than 1, which Parquet lists cannot store")
    return problems
