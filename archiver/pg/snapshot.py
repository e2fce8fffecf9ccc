"""Consistent snapshots: database facts, table lists and content checksums in one transaction.

A backup's row counts and checksums are taken in the very snapshot pg_dump dumps; the same code
runs on a restored database, so a restore drill compares like with like.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import psycopg
from psycopg import sql

from ..errors import DatabaseError
from .connect import open_connection
from .dsn import redact_dsn, scrub
from .properties import read_database_properties
from .stats import (
    CHECKSUM_METHOD,
    CHECKSUM_METHODS,
    PINNED_SETTINGS,
    ContentStats,
    DatabaseFacts,
    HypertableStats,
    LargeObjectStats,
    MatviewRef,
    MatviewStats,
    TableFilter,
    TableRef,
    TableStats,
    combine_checksum,
    empty_checksum,
)
from .tablestats import table_stats

_TABLES_SQL = """
SELECT c.oid, n.nspname, c.relname, c.relkind::text, c.relispartition,
       (SELECT pn.nspname || '.' || pc.relname FROM pg_inherits i JOIN pg_class pc ON pc.oid = i.inhparent
          JOIN pg_namespace pn ON pn.oid = pc.relnamespace WHERE i.inhrelid = c.oid LIMIT 1) AS parent
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname !~ '^pg_(toast|temp_)'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                  AND d.deptype = 'e')
ORDER BY n.nspname, c.relname
"""

_TIMESCALE_SQL = """
SELECT h.schema_name, h.table_name,
       CASE WHEN h.compression_state = 2 THEN 'internal'
            WHEN ca.user_view_name IS NOT NULL THEN 'continuous_aggregate'
            ELSE 'hypertable' END,
       CASE WHEN ca.user_view_name IS NOT NULL THEN ca.user_view_schema || '.' || ca.user_view_name END
FROM _timescaledb_catalog.hypertable h
LEFT JOIN _timescaledb_catalog.continuous_agg ca ON ca.mat_hypertable_id = h.id
UNION ALL
SELECT c.schema_name, c.table_name, 'chunk', NULL FROM _timescaledb_catalog.chunk c
"""


# Hypertables with their chunk counts, through the documented information views (the catalog
# tables change between TimescaleDB versions). A continuous aggregate's materialization
# hypertable is not in timescaledb_information.hypertables, so it is added from its view.
_HYPERTABLES_SQL = """
SELECT h.hypertable_schema, h.hypertable_name, count(c.chunk_name), count(c.chunk_name) FILTER (WHERE c.is_compressed)
FROM (SELECT hypertable_schema::text, hypertable_name::text FROM timescaledb_information.hypertables
      UNION SELECT materialization_hypertable_schema::text, materialization_hypertable_name::text
            FROM timescaledb_information.continuous_aggregates) AS h
LEFT JOIN timescaledb_information.chunks AS c
       ON c.hypertable_schema::text = h.hypertable_schema AND c.hypertable_name::text = h.hypertable_name
GROUP BY 1, 2 ORDER BY 1, 2
"""


_MATVIEWS_SQL = """
SELECT c.oid, n.nspname, c.relname, c.relispopulated
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'm' AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast|temp_)'
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                  AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY n.nspname, c.relname
"""
_MATVIEW_STATE_SQL = """
SELECT c.relispopulated FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'm' AND n.nspname = %s AND c.relname = %s
"""


class SnapshotSession:
    """One REPEATABLE READ, READ ONLY transaction on the source database, with settings pinned.

    Its methods run in that transaction's snapshot. ``cancel`` may be called from another thread
    to stop a running query (a failed dump does not wait for checksums).
    """

    def __init__(self, conn: psycopg.Connection[Any], dsn: str, snapshot_id: str | None) -> None:
        self._conn = conn
        self._dsn = dsn
        self.snapshot_id = snapshot_id

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except psycopg.Error as exc:
            raise DatabaseError(f"{what} on {redact_dsn(self._dsn)}: {scrub(str(exc), self._dsn).strip()}") from None

    def facts(self) -> DatabaseFacts:
        with self._errors("reading database facts"):
            row = self._conn.execute(
                "SELECT current_database(), current_setting('server_version'), "
                "current_setting('server_version_num')::int, pg_database_size(current_database()), "
                "clock_timestamp(), (SELECT pg_catalog.count(*) + 2 * pg_catalog.count(*) FILTER (WHERE "
                "c.reltoastrelid <> 0) FROM pg_catalog.pg_class c "
                "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname NOT IN "
                "('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast|temp_)')").fetchone()
            assert row is not None
            extensions: dict[str, str] = {}
            schemas: dict[str, str] = {}
            for name, version, schema in self._conn.execute(
                    "SELECT e.extname, e.extversion, n.nspname FROM pg_catalog.pg_extension e "
                    "JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace ORDER BY e.extname").fetchall():
                extensions[name], schemas[name] = version, schema
        return DatabaseFacts(row[0], row[1], int(row[2]), int(row[3]), extensions, row[4], schemas, int(row[5]))

    def database_properties(self) -> dict[str, Any]:
        """Encoding, locale, owner, settings, comment and privileges of the database (see dbprops)."""
        with self._errors("reading the database's properties"):
            return read_database_properties(self._conn)

    def materialized_views(self, table_filter: TableFilter | None = None) -> list[MatviewRef]:
        """Materialized views a dump holds (pg_dump's exclusions applied), populated or not."""
        table_filter = table_filter or TableFilter()
        with self._errors("listing materialized views"):
            rows = self._conn.execute(_MATVIEWS_SQL).fetchall()
            excluded = self._matching_oids(table_filter.exclude_schemas, table_filter.exclude_tables)
            no_data = self._matching_oids((), table_filter.exclude_table_data)
        return [MatviewRef(schema, name, bool(populated), data_excluded=oid in no_data)
                for oid, schema, name, populated in rows if oid not in excluded]

    def matview_stats(self, views: Sequence[MatviewRef]) -> list[MatviewStats]:
        """Whether each view is populated now, and its row count when it is (None when it is missing)."""
        results = []
        for view in views:
            with self._errors(f"counting rows of materialized view {view.qualified_name}"):
                row = self._conn.execute(_MATVIEW_STATE_SQL, (view.schema, view.name)).fetchone()
                if row is None:
                    results.append(MatviewStats(view, None, None))
                    continue
                rows = None
                if row[0]:
                    counted = self._conn.execute(sql.SQL("SELECT pg_catalog.count(*) FROM {}.{}").format(
                        sql.Identifier(view.schema), sql.Identifier(view.name))).fetchone()
                    rows = int(counted[0]) if counted else 0
                results.append(MatviewStats(view, bool(row[0]), rows))
        return results

    def tables(self, table_filter: TableFilter | None = None) -> list[TableRef]:
        """Tables whose data a dump holds, classified; pg_dump's exclusions applied."""
        table_filter = table_filter or TableFilter()
        with self._errors("listing tables"):
            rows = self._conn.execute(_TABLES_SQL).fetchall()
            timescale: dict[tuple[str, str], tuple[str, str | None]] = {}
            if self._conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone():
                timescale = {(schema, name): (kind, view) for schema, name, kind, view in
                             self._conn.execute(_TIMESCALE_SQL).fetchall()}
            excluded = self._matching_oids(table_filter.exclude_schemas, table_filter.exclude_tables)
            no_data = self._matching_oids((), table_filter.exclude_table_data)
        tables: list[TableRef] = []
        for oid, schema, name, relkind, is_partition, parent in rows:
            kind, view = timescale.get((schema, name), (None, None))
            if relkind == "p" or kind in ("chunk", "internal") or oid in excluded:
                continue
            if kind is None:
                kind = "partition" if is_partition else "table"
            tables.append(TableRef(schema, name, kind, parent=parent if kind == "partition" else None, view=view,
                                   data_excluded=oid in no_data))
        return tables

    def hypertables(self) -> list[HypertableStats]:
        """TimescaleDB hypertables (continuous aggregates' too) with their chunk counts; [] without TimescaleDB."""
        with self._errors("listing hypertables"):
            if not self._conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone():
                return []
            return [HypertableStats(schema, name, int(chunks), int(compressed))
                    for schema, name, chunks, compressed in self._conn.execute(_HYPERTABLES_SQL).fetchall()]

    def _matching_oids(self, schema_regexes: Sequence[str], table_patterns: Sequence[tuple[str | None, str]]) -> set[int]:
        matched: set[int] = set()
        for regex in schema_regexes:
            matched |= {oid for (oid,) in self._conn.execute(
                "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname ~ %s",
                (regex,)).fetchall()}
        for schema_regex, name_regex in table_patterns:
            if schema_regex is None:
                sql = ("SELECT c.oid FROM pg_class c WHERE c.relname ~ %s AND pg_catalog.pg_table_is_visible(c.oid)")
                params: tuple[Any, ...] = (name_regex,)
            else:
                sql = ("SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                       "WHERE n.nspname ~ %s AND c.relname ~ %s")
                params = (schema_regex, name_regex)
            matched |= {oid for (oid,) in self._conn.execute(sql, params).fetchall()}
        return matched

    def content_stats(self, tables: Sequence[TableRef], *, checksums: bool = True,
                      stop: Callable[[], bool] | None = None, method: str = CHECKSUM_METHOD,
                      matviews: Sequence[MatviewRef] = ()) -> ContentStats:
        """Row count (and content checksum, computed by ``method``) of every table, of the large objects
        and of the populated ``matviews``.

        ``stop`` is polled between tables; when it returns True the work ends with an error
        (with :meth:`cancel`, that also stops the query in flight).
        """
        if method not in CHECKSUM_METHODS:
            raise DatabaseError(f"unknown checksum method {method!r} (this archiver computes "
                                f"{', '.join(CHECKSUM_METHODS)})")
        results: list[TableStats] = []
        for table in tables:
            if stop is not None and stop():
                raise DatabaseError("row counting stopped")
            with self._errors(f"counting rows of {table.qualified_name}"):
                results.append(table_stats(self._conn, table, checksums=checksums, method=method))
        large_objects = self._large_object_stats(checksums, method)
        return ContentStats(results, large_objects, self.matview_stats(matviews))

    def _large_object_stats(self, checksums: bool, method: str) -> LargeObjectStats:
        with self._errors("counting large objects"):
            row = self._conn.execute("SELECT pg_catalog.count(*) FROM pg_catalog.pg_largeobject_metadata").fetchone()
            assert row is not None
            count = int(row[0])
            if not checksums or count == 0:
                return LargeObjectStats(count, empty_checksum(method) if checksums else None)
            # lo_get reads a whole object into memory and fails beyond 1 GB: a checksum is a
            # bonus, never a reason to fail the backup.
            self._conn.execute("SAVEPOINT archiver_lo")
            try:
                row = self._conn.execute(
                    "SELECT pg_catalog.sum(pg_catalog.hashtextextended(m.oid::pg_catalog.text || ':' || "
                    "pg_catalog.md5(pg_catalog.lo_get(m.oid)), 0)) FROM pg_catalog.pg_largeobject_metadata AS m"
                ).fetchone()
            except psycopg.errors.QueryCanceled:
                raise
            except psycopg.Error as exc:
                self._conn.execute("ROLLBACK TO SAVEPOINT archiver_lo")
                return LargeObjectStats(count, None, note=f"no checksum: {str(exc).strip().splitlines()[0]}")
            self._conn.execute("RELEASE SAVEPOINT archiver_lo")
        assert row is not None
        return LargeObjectStats(count, combine_checksum(count, row[0], method=method))

    def cancel(self) -> None:
        """Cancel the running query, if any (thread-safe)."""
        try:
            self._conn.cancel_safe()
        except (psycopg.Error, AttributeError):
            pass


@contextlib.contextmanager
def _snapshot_connection(dsn: str, *, connect_timeout: int, lock_timeout_ms: int | None,
                         application_name: str) -> Iterator[psycopg.Connection[Any]]:
    """A read-only REPEATABLE READ connection, rolled back and closed when the block ends."""
    conn = _open_snapshot_connection(dsn, connect_timeout=connect_timeout, lock_timeout_ms=lock_timeout_ms,
                                     application_name=application_name)
    try:
        yield conn
    finally:
        with contextlib.suppress(psycopg.Error):
            conn.rollback()  # read only: nothing to commit
        conn.close()


def _open_snapshot_connection(dsn: str, *, connect_timeout: int, lock_timeout_ms: int | None,
                              application_name: str) -> psycopg.Connection[Any]:
    conn = open_connection(dsn, autocommit=True, application_name=application_name, connect_timeout=connect_timeout)
    settings = {**PINNED_SETTINGS, "statement_timeout": "0", "idle_in_transaction_session_timeout": "0",
                "lock_timeout": str(lock_timeout_ms or 0)}
    try:
        for name, value in settings.items():  # session settings, outside the transaction
            conn.execute("SELECT pg_catalog.set_config(%s, %s, false)", (name, value))
    except psycopg.Error as exc:
        conn.close()
        raise DatabaseError(f"cannot set up a session on {redact_dsn(dsn)}: {scrub(str(exc), dsn).strip()}") from None
    conn.autocommit = False
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    return conn


@contextlib.contextmanager
def exported_snapshot(dsn: str, *, connect_timeout: int = 10, lock_timeout_ms: int | None = None,
                      application_name: str = "archiver backup") -> Iterator[SnapshotSession]:
    """A session whose snapshot is exported (``session.snapshot_id``) for ``pg_dump --snapshot``.

    The transaction stays open for the whole ``with`` block: pg_dump can import the snapshot
    only while it is. Its first statement takes the snapshot, so the facts, the table list and
    every count describe exactly what pg_dump dumps.
    """
    with _snapshot_connection(dsn, connect_timeout=connect_timeout, lock_timeout_ms=lock_timeout_ms,
                              application_name=application_name) as conn:
        try:
            row = conn.execute("SELECT pg_catalog.pg_export_snapshot()").fetchone()
        except psycopg.Error as exc:
            raise DatabaseError(f"cannot export a snapshot on {redact_dsn(dsn)}: {scrub(str(exc), dsn).strip()}") from None
        assert row is not None
        yield SnapshotSession(conn, dsn, str(row[0]))


@contextlib.contextmanager
def reading_session(dsn: str, *, connect_timeout: int, application_name: str) -> Iterator[SnapshotSession]:
    """A read-only REPEATABLE READ session (no exported snapshot) for looking at a database."""
    with _snapshot_connection(dsn, connect_timeout=connect_timeout, lock_timeout_ms=None,
                              application_name=application_name) as conn:
        yield SnapshotSession(conn, dsn, None)
