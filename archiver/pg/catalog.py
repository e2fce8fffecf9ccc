"""Catalog facts for the cold tier (tables, hypertables, chunks, partitions, jobs) and chunk DDL.

All catalog SQL of the cold tier is here; :mod:`archiver.coldtier.chunks` turns it into ranges.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable, Sequence
from typing import Any, ParamSpec, TypeVar

from ..errors import DatabaseError
from .connect import Session
from .quote import qualified, quote_ident

P = ParamSpec("P")
R = TypeVar("R")
# Catalog reads per function, for tests that prove a run's catalog work does not grow with its chunks.
CALLS: collections.Counter[str] = collections.Counter()


def counted(function: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(function)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        CALLS[function.__name__] += 1
        return function(*args, **kwargs)
    return call


@counted
def current_database(current: Session) -> str:
    return str(current.scalar("SELECT current_database()"))


@counted
def timescaledb_version(current: Session) -> str | None:
    value = current.scalar("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
    return str(value) if value is not None else None


@counted
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


@counted
def table_columns(current: Session, schema: str, table: str) -> list[dict[str, Any]]:
    """Columns in order with their declared type and the base type behind any domain. Type names
    are schema-qualified unless they are in pg_catalog (format_type under a safe search_path), so
    that they mean the same type in any session."""
    with current.transaction():
        current.execute("SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true)")
        return _table_columns(current, schema, table)


def _table_columns(current: Session, schema: str, table: str) -> list[dict[str, Any]]:
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


@counted
def is_hypertable(current: Session, schema: str, table: str) -> bool:
    return bool(current.scalar(
        "SELECT count(*) FROM timescaledb_information.hypertables "
        "WHERE hypertable_schema = %s AND hypertable_name = %s",
        (schema, table)))


@counted
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


@counted
def hypertable_chunks(current: Session, schema: str, table: str) -> list[dict[str, Any]]:
    return current.query_dicts(
        """
        SELECT chunk_schema::text AS schema, chunk_name::text AS name, range_start, range_end,
               range_start_integer, range_end_integer, is_compressed
        FROM timescaledb_information.chunks
        WHERE hypertable_schema = %s AND hypertable_name = %s
        ORDER BY coalesce(range_start_integer, 0), range_start, chunk_name
        """, (schema, table))


@counted
def chunk_space_slices(current: Session, schema: str, table: str) -> list[dict[str, Any]]:
    """Each chunk's slice of every closed (space) dimension of a hypertable: what, with its time
    range, identifies the rows a chunk holds (chunk names change when a chunk is re-created)."""
    return current.query_dicts(
        """
        SELECT c.table_name::text AS chunk, d.column_name::text AS column_name, s.range_start, s.range_end
        FROM _timescaledb_catalog.hypertable h
        JOIN _timescaledb_catalog.chunk c ON c.hypertable_id = h.id
        JOIN _timescaledb_catalog.chunk_constraint cc ON cc.chunk_id = c.id
        JOIN _timescaledb_catalog.dimension_slice s ON s.id = cc.dimension_slice_id
        JOIN _timescaledb_catalog.dimension d ON d.id = s.dimension_id AND d.num_slices IS NOT NULL
        WHERE h.schema_name = %s AND h.table_name = %s
        ORDER BY c.table_name, d.id
        """, (schema, table))


@counted
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


@counted
def call_integer_now(current: Session, function_call: str) -> int:
    """The hypertable's integer "now", from its own integer_now function (a quoted, qualified name)."""
    return int(current.scalar(f"SELECT {function_call}()"))


@counted
def relation_exists(current: Session, schema: str, name: str) -> bool:
    return current.scalar("SELECT to_regclass(%s) IS NOT NULL", (qualified(schema, name),)) is True


@counted
def relation_sizes(current: Session, relations: Sequence[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """On-disk size of each chunk/partition with its indexes and TOAST (compressed chunk data
    included), in one query however many there are; relations that do not exist are left out."""
    if not relations:
        return {}
    schemas, names = [schema for schema, _ in relations], [name for _, name in relations]
    rows = current.query(
        """
        SELECT r.schema, r.name, pg_catalog.pg_total_relation_size(c.oid)
        FROM unnest(%s::text[], %s::text[]) AS r(schema, name)
        JOIN pg_catalog.pg_namespace n ON n.nspname = r.schema
        JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = r.name
        """, (schemas, names))
    sizes = {(str(schema), str(name)): int(size or 0) for schema, name, size in rows}
    if timescaledb_version(current):
        for schema, name, size in current.query(
                """
                SELECT ch.schema_name::text, ch.table_name::text,
                       pg_catalog.sum(pg_catalog.pg_total_relation_size(
                           pg_catalog.format('%%I.%%I', cc.schema_name, cc.table_name)::pg_catalog.regclass))
                FROM _timescaledb_catalog.chunk ch JOIN _timescaledb_catalog.chunk cc ON cc.id = ch.compressed_chunk_id
                JOIN unnest(%s::text[], %s::text[]) AS r(schema, name)
                  ON r.schema = ch.schema_name AND r.name = ch.table_name
                GROUP BY 1, 2
                """, (schemas, names)):
            sizes[(schema, name)] = sizes.get((schema, name), 0) + int(size or 0)
    return sizes


@counted
def existing_relations(current: Session, relations: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which of ``relations`` exist, in one query."""
    if not relations:
        return set()
    rows = current.query(
        """
        SELECT r.schema, r.name FROM unnest(%s::text[], %s::text[]) AS r(schema, name)
        WHERE pg_catalog.to_regclass(pg_catalog.format('%%I.%%I', r.schema, r.name)) IS NOT NULL
        """, ([schema for schema, _ in relations], [name for _, name in relations]))
    return {(str(schema), str(name)) for schema, name in rows}


def _job_offset_sql(key: str) -> str:
    """A job config offset as seconds (interval offsets) or an integer (integer-time offsets)."""
    return (f"CASE jsonb_typeof(j.config -> '{key}') WHEN 'string' THEN "
            f"extract(epoch FROM (j.config ->> '{key}')::interval) END AS {key}_seconds, "
            f"CASE jsonb_typeof(j.config -> '{key}') WHEN 'number' THEN (j.config ->> '{key}')::bigint END "
            f"AS {key}_integer, j.config ->> '{key}' AS {key}_text")


@counted
def retention_jobs(current: Session, schema: str, table: str) -> list[dict[str, Any]]:
    """TimescaleDB retention policy jobs on a hypertable (they drop chunks on their own schedule)."""
    return current.query_dicts(
        f"""
        SELECT j.job_id, j.scheduled, {_job_offset_sql('drop_after')}
        FROM timescaledb_information.jobs j
        WHERE j.proc_name = 'policy_retention' AND j.hypertable_schema = %s AND j.hypertable_name = %s
        ORDER BY j.job_id
        """, (schema, table))


@counted
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


@counted
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
    extension_schema = current.scalar(EXTENSION_SCHEMA_SQL, ("timescaledb",))
    if extension_schema is None:
        raise DatabaseError(f"drop_chunks: extension timescaledb is not installed in database {current_database(current)!r}")
    rows = current.query(f"SELECT {quote_ident(str(extension_schema))}.drop_chunks(%s::regclass, "
                         f"older_than => %s::{sql_type})", (qualified(schema, table), boundary))
    return [str(row[0]) for row in rows]


def detach_and_drop_partition(current: Session, parent_schema: str, parent: str, schema: str, name: str) -> None:
    current.execute(f"ALTER TABLE {qualified(parent_schema, parent)} DETACH PARTITION {qualified(schema, name)}")
    current.execute(f"DROP TABLE {qualified(schema, name)}")


EXTENSION_SCHEMA_SQL = ("SELECT n.nspname FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n "
                         "ON n.oid = e.extnamespace WHERE e.extname = %s")


# -- restore-archive targets ------------------------------------------------------------------------

@counted
def target_table(current: Session, schema: str, name: str) -> tuple[str | None, dict[str, str]]:
    """(kind, columns) of a table: kind ``hypertable``, ``partitioned``, ``table`` or None when it does not exist."""
    facts = relation_facts(current, schema, name)
    if facts is None:
        return None, {}
    columns = {row["name"]: row["pg_type"] for row in table_columns(current, schema, name)}
    if timescaledb_version(current) and is_hypertable(current, schema, name):
        return "hypertable", columns
    return ("partitioned" if facts["relkind"] == "p" else "table"), columns


def create_plain_table(current: Session, schema: str, name: str, columns: Sequence[tuple[str, str]]) -> None:
    """A plain table with the archive's columns and PostgreSQL types (restore-archive into another database)."""
    current.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
    definition = ", ".join(f"{quote_ident(column)} {pg_type}" for column, pg_type in columns)
    current.execute(f"CREATE TABLE {qualified(schema, name)} ({definition})")


@counted
def unknown_types(current: Session, types: Sequence[str]) -> set[str]:
    """The type names of ``types`` this database does not know (a domain or enum of another database)."""
    return {name for name in set(types) if current.scalar("SELECT to_regtype(%s)", (name,)) is None}


def create_range_partition_sql(parent_schema: str, parent: str, schema: str, name: str,
                               low_sql: str | None, high_sql: str | None) -> str:
    """A partition for a range whose partition was dropped (bounds from the archive manifest)."""
    return (f"CREATE TABLE {qualified(schema, name)} PARTITION OF {qualified(parent_schema, parent)} "
            f"FOR VALUES FROM ({low_sql or 'MINVALUE'}) TO ({high_sql or 'MAXVALUE'})")
