"""Archived rows staged next to a table (ADBC ingest into temporary tables): load back, compare, merge.

Rows are matched by their text form as a record of the table's columns (one fixed column order,
settings pinned): two rows match when every column's value prints the same, which is exact for
every type we archive and needs no equality operator (json has none).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .arrow import READ_LOCK_TIMEOUT_MS, adbc_connect, adbc_error
from .quote import quote_ident

# -- archived rows staged next to the table: load back, compare, merge -------------------------------
#
# Parquet rows go in bulk: ADBC ingests Arrow batches into temporary staging tables (COPY binary);
# the statements below then work on them in the same session and transaction. Rows are matched by
# their text form as a record of the table's columns (one fixed column order, settings pinned):
# two rows match when every column's value prints the same, which is exact for every type we
# archive and needs no equality operator (json has none).

@dataclass(frozen=True)
class StagedColumn:
    """A target column and where its values are in a staging table.

    ``kind`` ``value``: one staging column, cast to the target type; ``interval``: the three
    columns (months, days, nanoseconds) of an interval archived as Arrow's month-day-nano struct;
    ``time_micros``: a time archived as int64 microseconds since midnight (the portable profile);
    ``missing``: the archive has no such column (added to the table later): NULL.
    """

    target: str
    staging: tuple[str, ...]
    kind: str = "value"


@dataclass(frozen=True)
class RowComparison:
    database_only: int  # rows of the database the archive lacks (late data, changed rows)
    archive_only: int  # archived rows the database lacks (dropped, deleted, changed or not restored)
    common: int


def _range_condition(alias: str, column: str, low_sql: str | None, high_sql: str | None) -> str:
    parts = [f"{alias}.{quote_ident(column)} >= {low_sql}" if low_sql else "",
             f"{alias}.{quote_ident(column)} < {high_sql}" if high_sql else ""]
    return " AND ".join(part for part in parts if part) or "true"


def _staged_expression(column: StagedColumn, pg_type: str) -> str:
    if column.kind == "missing":
        return f"CAST(NULL AS {pg_type})"
    if column.kind == "time_micros":  # the portable profile's time: microseconds since midnight
        micros = f"s.{quote_ident(column.staging[0])}"
        return (f"CASE WHEN {micros} IS NULL THEN NULL WHEN {micros} >= 86400000000 THEN TIME '24:00:00' "
                f"ELSE TIME '00:00' + {micros} * interval '1 microsecond' END::{pg_type}")
    if column.kind == "interval":
        months, days, nanos = (f"s.{quote_ident(part)}" for part in column.staging)
        return (f"CASE WHEN {months} IS NULL THEN NULL ELSE pg_catalog.make_interval(months => {months}, "
                f"days => {days}) + ({nanos} / 1000) * interval '1 microsecond' END::{pg_type}")
    return f"CAST(s.{quote_ident(column.staging[0])} AS {pg_type})"


class Staging:
    """One ADBC session holding archived rows in temporary tables (gone with the session).

    ``columns`` are the table's columns in a fixed order with their types; every source
    (staged table or relation) is read as exactly these columns.
    """

    def __init__(self, cursor: Any, dsn: str, columns: Sequence[tuple[str, str]]) -> None:
        self._cursor = cursor
        self._dsn = dsn
        self.columns = list(columns)
        self.sources: list[tuple[str, list[StagedColumn]]] = []

    @property
    def names(self) -> str:
        return ", ".join(quote_ident(name) for name, _ in self.columns)

    def _key(self, alias: str) -> str:
        """A row's identity: its text form as a record (exact; measured faster than hashing it, since
        the text output is most of the cost either way)."""
        return "ROW(" + ", ".join(f"{alias}.{quote_ident(name)}" for name, _ in self.columns) + ")::text"

    def stage(self, batches: Any, staged: Sequence[StagedColumn]) -> int:
        """Ingest one archive's batches (a RecordBatchReader) as a new source; its row count."""
        table = f"archiver_staging_{len(self.sources)}"
        self._cursor.adbc_ingest(table, batches, mode="create", temporary=True)
        self.sources.append((table, list(staged)))
        return int(self.scalar(f"SELECT count(*) FROM pg_temp.{table}"))

    def typed(self, index: int = 0) -> str:
        """A staged source as the table's columns and types."""
        table, staged = self.sources[index]
        by_target = {column.target: column for column in staged}
        values = ", ".join(f"{_staged_expression(by_target.get(name, StagedColumn(name, (), 'missing')), pg_type)} "
                           f"AS {quote_ident(name)}" for name, pg_type in self.columns)
        return f"(SELECT {values} FROM pg_temp.{table} AS s)"

    def relation(self, relation: str) -> str:
        return f"(SELECT {self.names} FROM {relation})"

    def scalar(self, statement: str) -> Any:
        self._cursor.execute(statement)
        row = self._cursor.fetchone()
        return row[0] if row else None

    def row(self, statement: str) -> tuple[Any, ...]:
        self._cursor.execute(statement)
        return tuple(self._cursor.fetchone())

    def execute(self, statement: str) -> None:
        self._cursor.execute(statement)

    def compare(self, relation: str, *, condition: str = "true", source: int = 0) -> RowComparison:
        """How the rows of ``relation`` (quoted) and of a staged source differ, as multisets."""
        row = self.row(
            f"WITH d AS (SELECT {self._key('t')} AS k, count(*) AS c FROM {self.relation(relation)} AS t "
            f"WHERE {condition} GROUP BY 1), "
            f"a AS (SELECT {self._key('t')} AS k, count(*) AS c FROM {self.typed(source)} AS t "
            f"WHERE {condition} GROUP BY 1) "
            "SELECT coalesce(sum(greatest(coalesce(d.c, 0) - coalesce(a.c, 0), 0)), 0), "
            "coalesce(sum(greatest(coalesce(a.c, 0) - coalesce(d.c, 0), 0)), 0), "
            "coalesce(sum(least(coalesce(d.c, 0), coalesce(a.c, 0))), 0) FROM d FULL JOIN a ON a.k = d.k")
        return RowComparison(int(row[0]), int(row[1]), int(row[2]))

    def insert_missing(self, target: str, *, condition: str, source: str | None = None) -> int:
        """Insert the rows of ``source`` (a relation; default: the first staged archive) within
        ``condition`` that ``target`` does not hold yet (as a multiset: a row archived twice and
        present once is inserted once); the count inserted. Into a window the target holds no row
        of, every row goes in without matching."""
        rows = (source if source.startswith("(") else self.relation(source)) if source else self.typed(0)
        if not int(self.scalar(f"SELECT count(*) FROM {self.relation(target)} AS t WHERE {condition}")):
            self.execute(f"INSERT INTO {target} ({self.names}) SELECT {self.names} FROM {rows} AS t WHERE {condition}")
            return int(self._cursor.rowcount)
        names = ", ".join(f"s.{quote_ident(name)}" for name, _ in self.columns)
        self.execute(
            f"WITH present AS (SELECT {self._key('t')} AS k, count(*) AS c FROM {self.relation(target)} AS t "
            f"WHERE {condition} GROUP BY 1), "
            f"staged AS (SELECT t.*, {self._key('t')} AS archiver_key, "
            f"row_number() OVER (PARTITION BY {self._key('t')}) AS archiver_n FROM {rows} AS t "
            f"WHERE {condition}) "
            f"INSERT INTO {target} ({self.names}) SELECT {names} FROM staged AS s "
            "LEFT JOIN present AS p ON p.k = s.archiver_key WHERE s.archiver_n > coalesce(p.c, 0)")
        return int(self._cursor.rowcount)

    def combined(self, *, distinct: bool) -> str:
        """Every staged source as one relation (its name): side by side (UNION ALL), or with
        ``distinct`` as a merge in which rows held by several sources count once (see merge)."""
        if distinct:
            return self.merge(None)
        if len(self.sources) == 1:
            return self.typed(0)
        return "(" + " UNION ALL ".join(f"SELECT * FROM {self.typed(index)} AS t"
                                        for index in range(len(self.sources))) + ")"

    def merge(self, relation: str | None) -> str:
        """A temporary table holding every row of ``relation`` plus the staged rows it lacks, over
        all sources (per distinct row, as many copies as the source holding most of them); its name."""
        parts = [f"SELECT 0 AS archiver_src, {self._key('t')} AS archiver_key, t.* FROM {self.relation(relation)} AS t"
                 ] if relation else []
        parts += [f"SELECT {index + 1} AS archiver_src, {self._key('t')} AS archiver_key, t.* FROM {self.typed(index)} AS t"
                  for index in range(len(self.sources))]
        names = ", ".join(f"u.{quote_ident(name)}" for name, _ in self.columns)
        self.execute(
            f"CREATE TEMPORARY TABLE archiver_merged AS SELECT {self.names} FROM ("
            f"SELECT DISTINCT ON (u.archiver_key, u.archiver_n) {names} FROM ("
            "SELECT v.*, row_number() OVER (PARTITION BY v.archiver_src, v.archiver_key) AS archiver_n FROM ("
            + " UNION ALL ".join(parts) + ") AS v) AS u ORDER BY u.archiver_key, u.archiver_n, u.archiver_src) AS m")
        return "pg_temp.archiver_merged"

    def batches(self, statement: str, *, batch_bytes: int) -> Iterator[Any]:
        """The rows of ``statement`` as Arrow record batches (COPY binary)."""
        self._cursor.adbc_statement.set_options(**{"adbc.postgresql.batch_size_hint_bytes": str(int(batch_bytes))})
        self._cursor.execute(statement)
        reader = self._cursor.fetch_record_batch()
        while True:
            try:
                yield reader.read_next_batch()
            except StopIteration:
                return


STAGING_SETTINGS = ("SET TIME ZONE 'UTC'", "SET DateStyle = 'ISO, YMD'", "SET IntervalStyle = 'postgres'",
                    "SET extra_float_digits = 3", "SET bytea_output = 'hex'", "SET search_path = pg_catalog, pg_temp",
                    f"SET lock_timeout = {READ_LOCK_TIMEOUT_MS}",
                    "SET work_mem = '256MB'")  # the comparisons hash every row's key: keep them in memory


@contextlib.contextmanager
def staging(dsn: str, columns: Sequence[tuple[str, str]], *, what: str,
            isolation: str = "REPEATABLE READ") -> Iterator[Staging]:
    """A :class:`Staging` session in one transaction, committed when the block ends without error
    (so that rows it inserted stay) and rolled back otherwise."""
    import adbc_driver_manager

    try:
        connection = adbc_connect(dsn, f"archiver {what}"[:63], autocommit=True)
    except adbc_driver_manager.Error as exc:
        raise adbc_error(exc, dsn) from None
    try:
        cursor = connection.cursor()
        for statement in STAGING_SETTINGS:
            cursor.execute(statement)
        cursor.execute(f"BEGIN ISOLATION LEVEL {isolation}")
        try:
            yield Staging(cursor, dsn, columns)
        except BaseException:
            with contextlib.suppress(adbc_driver_manager.Error):
                cursor.execute("ROLLBACK")
            raise
        cursor.execute("COMMIT")
    except adbc_driver_manager.Error as exc:
        raise adbc_error(exc, dsn, what) from None
    finally:
        try:
            connection.close()
        except adbc_driver_manager.Error:
            pass


def range_condition(alias: str, column: str, low_sql: str | None, high_sql: str | None) -> str:
    """``alias.column`` within [low, high) (already rendered SQL bounds; None: unbounded)."""
    return _range_condition(alias, column, low_sql, high_sql)
