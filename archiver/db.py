"""The only module that talks to database drivers (psycopg 3, ADBC).

Everything else asks this module for connections, catalog facts and locks, and never sees a
driver type. DSNs are parsed by libpq's own parser (``psycopg.conninfo``), so redaction is
exact: a password containing ``@`` or ``:`` is found as reliably as a plain one.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import conninfo as pg_conninfo

from .errors import DatabaseError, LockBusy, UsageError

REDACTED = "********"
_SECRET_KEYS = ("password", "sslpassword")


def parse_dsn(dsn: str) -> dict[str, str]:
    """Split a libpq DSN (URI or key=value) into its parameters."""
    try:
        return {k: str(v) for k, v in pg_conninfo.conninfo_to_dict(dsn).items() if v is not None}
    except psycopg.ProgrammingError as exc:
        raise UsageError(f"not a valid PostgreSQL connection string: {_scrub(str(exc), dsn)}") from None


def redact_dsn(dsn: str) -> str:
    """The DSN as key=value pairs with every secret replaced; safe for logs and manifests."""
    try:
        params = parse_dsn(dsn)
    except UsageError:
        return "<unparseable dsn>"
    for key in _SECRET_KEYS:
        if key in params:
            params[key] = REDACTED
    return pg_conninfo.make_conninfo("", **params)


def dsn_has_password(dsn: str) -> bool:
    return bool(parse_dsn(dsn).get("password"))


def dsn_with(dsn: str, **overrides: str) -> str:
    """The same connection with some parameters replaced (e.g. another dbname)."""
    return pg_conninfo.make_conninfo(dsn, **overrides)


def dsn_env(dsn: str) -> dict[str, str]:
    """libpq environment variables equivalent to ``dsn``.

    External programs (pg_dump, pg_restore, psql) get their connection through the
    environment, so no password ever appears in an argv that ``ps`` can show.
    """
    mapping = {
        "host": "PGHOST", "hostaddr": "PGHOSTADDR", "port": "PGPORT", "dbname": "PGDATABASE",
        "user": "PGUSER", "password": "PGPASSWORD", "passfile": "PGPASSFILE",
        "sslmode": "PGSSLMODE", "sslrootcert": "PGSSLROOTCERT", "sslcert": "PGSSLCERT",
        "sslkey": "PGSSLKEY", "sslpassword": "PGSSLPASSWORD", "connect_timeout": "PGCONNECT_TIMEOUT",
        "application_name": "PGAPPNAME", "options": "PGOPTIONS", "service": "PGSERVICE",
        "target_session_attrs": "PGTARGETSESSIONATTRS", "gssencmode": "PGGSSENCMODE",
        "channel_binding": "PGCHANNELBINDING", "krbsrvname": "PGKRBSRVNAME",
    }
    env: dict[str, str] = {}
    for key, value in parse_dsn(dsn).items():
        if key in mapping:
            env[mapping[key]] = value
    return env


def _scrub(message: str, dsn: str) -> str:
    """Remove the DSN's secrets from a driver message (exact strings, not patterns)."""
    try:
        params = pg_conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return message.replace(dsn, "<dsn>") if dsn else message
    for key in _SECRET_KEYS:
        secret = params.get(key)
        if secret:
            message = message.replace(str(secret), REDACTED)
    return message


@contextlib.contextmanager
def connect(dsn: str, *, autocommit: bool = True, application_name: str = "archiver",
            connect_timeout: int = 10) -> Iterator[psycopg.Connection[Any]]:
    """A psycopg connection whose errors never carry the password."""
    try:
        conn = psycopg.connect(dsn, autocommit=autocommit, application_name=application_name,
                               connect_timeout=connect_timeout)
    except psycopg.Error as exc:
        raise DatabaseError(f"cannot connect to {redact_dsn(dsn)}: {_scrub(str(exc), dsn).strip()}") from None
    try:
        with conn:
            yield conn
    except psycopg.Error as exc:
        raise DatabaseError(f"database error on {redact_dsn(dsn)}: {_scrub(str(exc), dsn).strip()}") from None


def server_version_num(dsn: str) -> int:
    """``server_version_num`` (e.g. 150018)."""
    with connect(dsn) as conn:
        return int(conn.info.server_version)


def execute(dsn: str, sql: str, params: tuple[Any, ...] | None = None) -> None:
    with connect(dsn) as conn:
        conn.execute(sql, params)  # type: ignore[arg-type]


def query(dsn: str, sql: str, params: tuple[Any, ...] | None = None) -> list[tuple[Any, ...]]:
    with connect(dsn) as conn:
        return list(conn.execute(sql, params).fetchall())  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Sessions: one connection for a task, in UTC, with driver errors scrubbed and no driver types
# leaking to callers.

LOCK_NOT_AVAILABLE = "55P03"


class LockTimeout(DatabaseError):
    """A lock could not be taken within the lock timeout (someone else is using the relation)."""


def quote_ident(name: str) -> str:
    """A PostgreSQL identifier, always quoted (exact case, any character)."""
    return '"' + name.replace('"', '""') + '"'


def qualified(schema: str, name: str) -> str:
    return f"{quote_ident(schema)}.{quote_ident(name)}"


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class Session:
    """A psycopg connection behind a small, driver-free interface."""

    def __init__(self, conn: psycopg.Connection[Any], dsn: str) -> None:
        self._conn = conn
        self._dsn = dsn

    def _error(self, exc: psycopg.Error) -> DatabaseError:
        message = f"database error on {redact_dsn(self._dsn)}: {_scrub(str(exc), self._dsn).strip()}"
        if getattr(exc, "sqlstate", None) == LOCK_NOT_AVAILABLE:
            return LockTimeout(message)
        return DatabaseError(message)

    def query(self, sql: str, params: tuple[Any, ...] | dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        try:
            cursor = self._conn.execute(sql, params)  # type: ignore[arg-type]
            return list(cursor.fetchall()) if cursor.description is not None else []
        except psycopg.Error as exc:
            raise self._error(exc) from None

    def query_dicts(self, sql: str, params: tuple[Any, ...] | dict[str, Any] | None = None) -> list[dict[str, Any]]:
        try:
            cursor = self._conn.execute(sql, params)  # type: ignore[arg-type]
            if cursor.description is None:
                return []
            names = [column.name for column in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        except psycopg.Error as exc:
            raise self._error(exc) from None

    def scalar(self, sql: str, params: tuple[Any, ...] | dict[str, Any] | None = None) -> Any:
        rows = self.query(sql, params)
        return rows[0][0] if rows else None

    def execute(self, sql: str, params: tuple[Any, ...] | dict[str, Any] | None = None) -> None:
        try:
            self._conn.execute(sql, params)  # type: ignore[arg-type]
        except psycopg.Error as exc:
            raise self._error(exc) from None

    @contextlib.contextmanager
    def transaction(self) -> Iterator["Session"]:
        """BEGIN ... COMMIT, or ROLLBACK when the block raises."""
        self.execute("BEGIN")
        try:
            yield self
        except BaseException:
            try:
                self._conn.execute("ROLLBACK")
            except psycopg.Error:
                pass
            raise
        self.execute("COMMIT")


@contextlib.contextmanager
def session(dsn: str, *, application_name: str = "archiver", connect_timeout: int = 10) -> Iterator[Session]:
    """An autocommit session in UTC with ISO dates (catalog text such as partition bounds depends on it)."""
    with connect(dsn, autocommit=True, application_name=application_name, connect_timeout=connect_timeout) as conn:
        current = Session(conn, dsn)
        current.execute("SET TIME ZONE 'UTC'")
        current.execute("SET DateStyle = 'ISO, YMD'")
        current.execute("SET IntervalStyle = 'postgres'")
        yield current


def _lock_key(name: str) -> int:
    """A stable signed 64-bit advisory lock key for ``name`` (hashtext() may change across majors)."""
    digest = hashlib.sha256(name.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextlib.contextmanager
def advisory_lock(dsn: str, name: str, *, what: str) -> Iterator[None]:
    """Hold a session advisory lock for the block; another holder means LockBusy at once (no waiting)."""
    key = _lock_key(name)
    with session(dsn, application_name=f"archiver {what}") as current:
        if not current.scalar("SELECT pg_try_advisory_lock(%s)", (key,)):
            high, low = (key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF
            holders = current.query(
                "SELECT a.pid, a.application_name, a.backend_start FROM pg_locks l JOIN pg_stat_activity a "
                "ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
                "AND l.classid::bigint = %s AND l.objid::bigint = %s AND l.pid <> pg_backend_pid()",
                (high, low))
            holder = (f" (held by pid {holders[0][0]}, {holders[0][1] or 'unknown program'}, since "
                      f"{holders[0][2]:%Y-%m-%d %H:%M:%S}Z)") if holders else ""
            raise LockBusy(f"another archiver run holds the {what} lock on this database{holder}",
                           hint="wait for it to finish; nothing was changed")
        try:
            yield
        finally:
            try:
                current.execute("SELECT pg_advisory_unlock(%s)", (key,))
            except DatabaseError:
                pass  # the connection is closing anyway, which releases the lock


# --------------------------------------------------------------------------------------------
# Catalog facts for the cold tier (chunks.py and the tasks call these; all catalog SQL is here)


def current_database(current: Session) -> str:
    return str(current.scalar("SELECT current_database()"))


def timescaledb_version(current: Session) -> str | None:
    value = current.scalar("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
    return str(value) if value is not None else None


def relation_facts(current: Session, schema: str, table: str) -> dict[str, Any] | None:
    """relkind, partition strategy and key columns of ``schema.table``; None when it does not exist."""
    rows = current.query_dicts(
        """
        SELECT c.oid::bigint AS oid, c.relkind::text AS relkind, p.partstrat::text AS partstrat,
               p.partnatts AS partnatts,
               (SELECT array_agg(a.attname::text ORDER BY k.ord)
                  FROM unnest(p.partattrs::int2[]) WITH ORDINALITY AS k(attnum, ord)
                  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum) AS partcols,
               pg_get_partkeydef(c.oid) AS partkeydef
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_partitioned_table p ON p.partrelid = c.oid
        WHERE n.nspname = %s AND c.relname = %s
        """, (schema, table))
    return rows[0] if rows else None


def table_columns(current: Session, schema: str, table: str) -> list[dict[str, Any]]:
    """Columns in order with their declared type and the base type behind any domain."""
    return current.query_dicts(
        """
        SELECT a.attname::text AS name, a.attnum AS attnum, a.attnotnull AS not_null,
               format_type(a.atttypid, a.atttypmod) AS pg_type,
               (a.atttypid <> b.oid) AS is_domain,
               format_type(b.oid, b.typmod) AS base_type,
               bt.typname::text AS typname, bt.typtype::text AS typtype, bt.typcategory::text AS category,
               b.typmod AS typmod,
               et.typname::text AS elem_typname, et.typtype::text AS elem_typtype,
               et.typcategory::text AS elem_category, format_type(et.oid, b.typmod) AS elem_type
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        CROSS JOIN LATERAL (
            WITH RECURSIVE d(oid, typmod, depth) AS (
                SELECT a.atttypid, a.atttypmod, 0
                UNION ALL
                SELECT t.typbasetype, CASE WHEN t.typtypmod >= 0 THEN t.typtypmod ELSE d.typmod END, d.depth + 1
                FROM d JOIN pg_type t ON t.oid = d.oid WHERE t.typtype = 'd')
            SELECT d.oid, d.typmod FROM d ORDER BY d.depth DESC LIMIT 1) b
        JOIN pg_type bt ON bt.oid = b.oid
        LEFT JOIN pg_type et ON et.oid = bt.typelem AND bt.typcategory = 'A'
        WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY a.attnum
        """, (schema, table))


def is_hypertable(current: Session, schema: str, table: str) -> bool:
    return bool(current.scalar(
        "SELECT count(*) FROM timescaledb_information.hypertables "
        "WHERE hypertable_schema = %s AND hypertable_name = %s",
        (schema, table)))


def hypertable_dimensions(current: Session, schema: str, table: str) -> list[dict[str, Any]]:
    return current.query_dicts(
        """
        SELECT dimension_number, column_name::text AS column_name, column_type::text AS column_type,
               dimension_type::text AS dimension_type,
               (SELECT format('%%I.%%I', dim.integer_now_func_schema, dim.integer_now_func)
                  FROM _timescaledb_catalog.dimension dim
                  JOIN _timescaledb_catalog.hypertable h ON h.id = dim.hypertable_id
                 WHERE h.schema_name = d.hypertable_schema AND h.table_name = d.hypertable_name
                   AND dim.column_name = d.column_name AND dim.integer_now_func IS NOT NULL) AS integer_now_call
        FROM timescaledb_information.dimensions d
        WHERE hypertable_schema = %s AND hypertable_name = %s
        ORDER BY dimension_number
        """, (schema, table))


def hypertable_chunks(current: Session, schema: str, table: str) -> list[dict[str, Any]]:
    return current.query_dicts(
        """
        SELECT chunk_schema::text AS schema, chunk_name::text AS name, range_start, range_end,
               range_start_integer, range_end_integer, is_compressed
        FROM timescaledb_information.chunks
        WHERE hypertable_schema = %s AND hypertable_name = %s
        ORDER BY coalesce(range_start_integer, 0), range_start, chunk_name
        """, (schema, table))


def range_partitions(current: Session, schema: str, table: str) -> list[dict[str, Any]]:
    """Direct partitions of a partitioned table with their bound expression (as text, UTC, ISO)."""
    return current.query_dicts(
        """
        SELECT n.nspname::text AS schema, c.relname::text AS name, pg_get_expr(c.relpartbound, c.oid) AS bound,
               c.relkind::text AS relkind
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE i.inhparent = (SELECT pc.oid FROM pg_class pc JOIN pg_namespace pn ON pn.oid = pc.relnamespace
                              WHERE pn.nspname = %s AND pc.relname = %s)
        ORDER BY c.relname
        """, (schema, table))


def call_integer_now(current: Session, function_call: str) -> int:
    """The hypertable's integer "now", from its own integer_now function (a quoted, qualified name)."""
    return int(current.scalar(f"SELECT {function_call}()"))


def relation_exists(current: Session, schema: str, name: str) -> bool:
    return current.scalar("SELECT to_regclass(%s) IS NOT NULL", (qualified(schema, name),)) is True


def relation_size(current: Session, schema: str, name: str) -> int:
    """On-disk size of a chunk/partition with its indexes and TOAST (compressed chunk data included)."""
    relation = qualified(schema, name)
    size = current.scalar("SELECT pg_total_relation_size(%s::regclass)", (relation,)) or 0
    compressed = current.scalar(
        """
        SELECT sum(pg_total_relation_size(format('%%I.%%I', cc.schema_name, cc.table_name)::regclass))
        FROM _timescaledb_catalog.chunk ch JOIN _timescaledb_catalog.chunk cc ON cc.id = ch.compressed_chunk_id
        WHERE ch.schema_name = %s AND ch.table_name = %s
        """, (schema, name)) if timescaledb_version(current) else None
    return int(size) + int(compressed or 0)


def _job_offset_sql(key: str) -> str:
    """A job config offset as seconds (interval offsets) or an integer (integer-time offsets)."""
    return (f"CASE jsonb_typeof(j.config -> '{key}') WHEN 'string' THEN "
            f"extract(epoch FROM (j.config ->> '{key}')::interval) END AS {key}_seconds, "
            f"CASE jsonb_typeof(j.config -> '{key}') WHEN 'number' THEN (j.config ->> '{key}')::bigint END "
            f"AS {key}_integer, j.config ->> '{key}' AS {key}_text")


def retention_jobs(current: Session, schema: str, table: str) -> list[dict[str, Any]]:
    """TimescaleDB retention policy jobs on a hypertable (they drop chunks on their own schedule)."""
    return current.query_dicts(
        f"""
        SELECT j.job_id, j.scheduled, {_job_offset_sql('drop_after')}
        FROM timescaledb_information.jobs j
        WHERE j.proc_name = 'policy_retention' AND j.hypertable_schema = %s AND j.hypertable_name = %s
        ORDER BY j.job_id
        """, (schema, table))


def cagg_refresh_jobs(current: Session, schema: str, table: str) -> list[dict[str, Any]]:
    """Continuous aggregates on a hypertable, each with its refresh policy's start_offset (if any)."""
    return current.query_dicts(
        f"""
        SELECT c.view_schema::text AS view_schema, c.view_name::text AS view_name, j.job_id, j.scheduled,
               (j.job_id IS NOT NULL) AS has_policy, {_job_offset_sql('start_offset')}
        FROM timescaledb_information.continuous_aggregates c
        LEFT JOIN timescaledb_information.jobs j
          ON j.proc_name = 'policy_refresh_continuous_aggregate'
         AND j.hypertable_schema = c.view_schema AND j.hypertable_name = c.view_name
        WHERE c.hypertable_schema = %s AND c.hypertable_name = %s
        ORDER BY c.view_name, j.job_id
        """, (schema, table))


def timescaledb_function_exists(current: Session, signature: str) -> bool:
    return current.scalar("SELECT to_regprocedure(%s) IS NOT NULL", (signature,)) is True


def lock_relations(current: Session, relations: list[str], *, mode: str, timeout_ms: int) -> None:
    """Inside a transaction: lock the (already quoted) relations, giving up after ``timeout_ms``."""
    current.execute(f"SET LOCAL lock_timeout = {int(timeout_ms)}")
    current.execute(f"LOCK TABLE {', '.join(relations)} IN {mode} MODE")


def drop_timescaledb_chunk(current: Session, schema: str, name: str) -> None:
    current.execute("SELECT _timescaledb_functions.drop_chunk(%s::regclass)", (qualified(schema, name),))


def drop_chunks_older_than(current: Session, schema: str, table: str, boundary: Any, sql_type: str) -> list[str]:
    """TimescaleDB drop_chunks(older_than => boundary); the names of the chunks it dropped."""
    rows = current.query(f"SELECT drop_chunks(%s::regclass, older_than => %s::{sql_type})",
                         (qualified(schema, table), boundary))
    return [str(row[0]) for row in rows]


def detach_and_drop_partition(current: Session, parent_schema: str, parent: str, schema: str, name: str) -> None:
    current.execute(f"ALTER TABLE {qualified(parent_schema, parent)} DETACH PARTITION {qualified(schema, name)}")
    current.execute(f"DROP TABLE {qualified(schema, name)}")


# --------------------------------------------------------------------------------------------
# Reading rows as Arrow (ADBC: COPY binary -> Arrow record batches)


@contextlib.contextmanager
def exported_snapshot(dsn: str) -> Iterator[tuple[str, Session]]:
    """A REPEATABLE READ transaction whose snapshot other connections can share.

    The export stream (ADBC) and the fingerprint query (this session) then see exactly the same
    rows, even while late data keeps arriving.
    """
    with session(dsn, application_name="archiver archive") as current:
        # one core for the fingerprint: the export stream needs the others, and a production
        # server's parallel workers are not ours to take
        current.execute("SET max_parallel_workers_per_gather = 0")
        current.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            snapshot_id = str(current.scalar("SELECT pg_export_snapshot()"))
            yield snapshot_id, current
        finally:
            try:
                current.execute("COMMIT")
            except DatabaseError:
                pass


def _adbc_error(exc: Exception, dsn: str) -> DatabaseError:
    return DatabaseError(f"database error on {redact_dsn(dsn)} (reading rows): {_scrub(str(exc), dsn).strip()}")


def arrow_batches(dsn: str, sql: str, *, snapshot_id: str | None = None,
                  batch_bytes: int = 8 * 1024 * 1024) -> Iterator[Any]:
    """Yield ``pyarrow.RecordBatch``es of ``sql`` read by ADBC (COPY ... TO STDOUT (FORMAT binary)).

    ``batch_bytes`` is the driver's batch size hint, which bounds memory whatever the result's size.
    With ``snapshot_id`` the rows come from that exported snapshot.
    """
    import adbc_driver_manager
    import adbc_driver_postgresql.dbapi as adbc_dbapi

    uri = dsn_with(dsn, application_name="archiver archive")
    try:
        connection = adbc_dbapi.connect(uri, autocommit=True)
    except adbc_driver_manager.Error as exc:
        raise _adbc_error(exc, dsn) from None
    try:
        cursor = connection.cursor()
        cursor.adbc_statement.set_options(**{"adbc.postgresql.batch_size_hint_bytes": str(int(batch_bytes))})
        if snapshot_id is not None:
            cursor.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            cursor.execute(f"SET TRANSACTION SNAPSHOT {quote_literal(snapshot_id)}")
        cursor.execute(sql)
        reader = cursor.fetch_record_batch()
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            yield batch
        if snapshot_id is not None:
            cursor.execute("COMMIT")
    except adbc_driver_manager.Error as exc:
        raise _adbc_error(exc, dsn) from None
    finally:
        try:
            connection.close()
        except adbc_driver_manager.Error:
            pass
