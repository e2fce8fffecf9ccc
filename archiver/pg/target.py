"""Restore targets: inspect, create, clean and undo; checks run on a restored database.

What a restore needs to know about its target before it writes anything, and the few statements
it runs around pg_restore (roles, the TimescaleDB extension, cleaning, undoing).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from ..errors import DatabaseError, UsageError
from .catalog import EXTENSION_SCHEMA_SQL
from .connect import connect, first_connection, maintenance_dsns
from .dsn import parse_dsn, redact_dsn, scrub
from .snapshot import reading_session
from .stats import CHECKSUM_METHOD, ContentStats, HypertableStats, MatviewRef, MatviewStats, TableRef


def missing_tables(dsn: str, tables: Sequence[TableRef]) -> list[TableRef]:
    """The tables of ``tables`` that do not exist in the database."""
    if not tables:
        return []
    with connect(dsn, application_name="archiver verify") as conn:
        present = {(schema, name) for schema, name in conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'p')").fetchall()}
    return [table for table in tables if (table.schema, table.name) not in present]


def first_value(dsn: str, statement: str, *, application_name: str = "archiver check") -> Any:
    """The first column of the first row of ``statement`` (None when it returns no row), run read-only.

    A policy's SQL check is the operator's own SQL: it runs in a session of its own with the role's
    (and the database's) search_path, as it would in psql, never in one of archiver's sessions.
    """
    with connect(dsn, autocommit=False, application_name=application_name, safe_search_path=False) as conn:
        conn.read_only = True
        row = conn.execute(statement).fetchone()
        conn.rollback()
    return None if row is None else row[0]


# -- restore targets ------------------------------------------------------------------------------
#
# What a restore needs to know about its target before it writes anything, and the few
# statements it runs around pg_restore (roles, the TimescaleDB extension, cleaning, undoing).

_USER_NAMESPACES = ("n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast|temp_)'")


def _not_extension_member(catalog: str, alias: str) -> str:
    return (f"NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = '{catalog}'::regclass "
            f"AND d.objid = {alias}.oid AND d.deptype = 'e')")


_TARGET_SQL = {
    "relations": f"""
        SELECT n.nspname, c.relname, c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f', 'c') AND {_USER_NAMESPACES}
          AND {_not_extension_member('pg_class', 'c')} ORDER BY 1, 2""",
    "functions": f"""
        SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE {_USER_NAMESPACES} AND {_not_extension_member('pg_proc', 'p')}""",
    "types": f"""
        SELECT count(*) FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
        WHERE {_USER_NAMESPACES} AND t.typrelid = 0 AND t.typtype IN ('b', 'd', 'e', 'r') AND t.typcategory <> 'A'
          AND {_not_extension_member('pg_type', 't')}""",
    "schemas": f"""
        SELECT n.nspname FROM pg_namespace n WHERE {_USER_NAMESPACES} AND n.nspname <> 'public'
          AND {_not_extension_member('pg_namespace', 'n')} ORDER BY 1""",
}


@dataclass(frozen=True)
class TargetContents:
    """What a database already holds, apart from what every new database has."""

    schemas: tuple[str, ...] = ()  # besides public, not created by an extension
    tables: tuple[str, ...] = ()  # tables and partitioned tables (TimescaleDB chunks left out), qualified
    relations: int = 0  # tables, views, sequences, foreign tables, composite types (chunks included)
    functions: int = 0
    types: int = 0
    large_objects: int = 0
    extensions: dict[str, str] = field(default_factory=dict)  # besides plpgsql

    def is_empty(self, *, ignoring_extensions: dict[str, str] | None = None) -> bool:
        """No user object at all; extensions in ``ignoring_extensions`` at exactly that version are allowed."""
        allowed = ignoring_extensions or {}
        extra = {name: version for name, version in self.extensions.items() if allowed.get(name) != version}
        return not (self.schemas or self.relations or self.functions or self.types or self.large_objects or extra)

    def describe(self) -> str:
        parts = []
        for count, noun in ((len(self.tables), "table"), (self.relations - len(self.tables), "other relation"),
                            (self.functions, "function"), (self.types, "type"), (self.large_objects, "large object")):
            if count > 0:
                parts.append(f"{count} {noun}{'s' if count != 1 else ''}")
        if self.schemas:
            parts.append(f"schema{'s' if len(self.schemas) != 1 else ''} {', '.join(self.schemas)}")
        if self.extensions:
            parts.append("extension" + ("s " if len(self.extensions) != 1 else " ")
                         + ", ".join(f"{name} {version}" for name, version in sorted(self.extensions.items())))
        return ", ".join(parts) or "nothing"


@dataclass(frozen=True)
class TargetFacts:
    name: str
    server_version: str
    server_version_num: int
    user: str
    superuser: bool
    create_role: bool
    create_db: bool
    available: dict[str, list[str]]  # extension -> versions the server can create (only those asked about)
    preload_libraries: tuple[str, ...]
    roles: frozenset[str]
    tablespaces: frozenset[str]
    contents: TargetContents
    # the shared lock table: max_locks_per_transaction x (max_connections + max_prepared_transactions)
    lock_slots: int = 0
    max_locks_per_transaction: int = 0


def inspect_target(dsn: str, extensions: Sequence[str] = (), *, connect_timeout: int = 10) -> TargetFacts:
    """Facts about a restore target, read-only; raises DatabaseMissing when its database does not exist."""
    with connect(dsn, application_name="archiver restore (inspect)", connect_timeout=connect_timeout) as conn:
        row = conn.execute(
            "SELECT current_database(), current_setting('server_version'), current_setting('server_version_num')::int, "
            "current_user, r.rolsuper, r.rolcreaterole, r.rolcreatedb, current_setting('shared_preload_libraries'), "
            "current_setting('max_locks_per_transaction')::int, current_setting('max_connections')::int "
            "+ current_setting('max_prepared_transactions')::int "
            "FROM pg_roles r WHERE r.rolname = current_user").fetchone()
        assert row is not None
        available: dict[str, list[str]] = {}
        for name, version in conn.execute("SELECT name, version FROM pg_available_extension_versions "
                                          "WHERE name = ANY(%s) ORDER BY name, version", (list(extensions),)).fetchall():
            available.setdefault(name, []).append(version)
        roles = frozenset(name for (name,) in conn.execute("SELECT rolname FROM pg_roles").fetchall())
        tablespaces = frozenset(name for (name,) in conn.execute("SELECT spcname FROM pg_tablespace").fetchall())
        relations = conn.execute(_TARGET_SQL["relations"]).fetchall()
        installed = {name: version for name, version in conn.execute(
            "SELECT extname, extversion FROM pg_extension WHERE extname <> 'plpgsql'").fetchall()}
        contents = TargetContents(
            schemas=tuple(name for (name,) in conn.execute(_TARGET_SQL["schemas"]).fetchall()),
            tables=tuple(f"{schema}.{name}" for schema, name, kind in relations
                         if kind in ("r", "p") and not schema.startswith("_timescaledb")),
            relations=len(relations),
            functions=int(conn.execute(_TARGET_SQL["functions"]).fetchone()[0]),  # type: ignore[index]
            types=int(conn.execute(_TARGET_SQL["types"]).fetchone()[0]),  # type: ignore[index]
            large_objects=int(conn.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone()[0]),  # type: ignore[index]
            extensions=installed)
    preload = tuple(part.strip() for part in str(row[7]).split(",") if part.strip())
    return TargetFacts(row[0], row[1], int(row[2]), row[3], bool(row[4]), bool(row[5]), bool(row[6]), available,
                       preload, roles, tablespaces, contents, lock_slots=int(row[8]) * int(row[9]),
                       max_locks_per_transaction=int(row[8]))


def inspect_server(dsn: str, extensions: Sequence[str] = ()) -> TargetFacts:
    """Facts about the server of a DSN whose database does not exist yet (read through ``postgres``/``template1``)."""
    last: DatabaseError | None = None
    for candidate in maintenance_dsns(dsn):
        try:
            facts = inspect_target(candidate, extensions)
        except DatabaseError as exc:
            last = exc
            continue
        return dataclasses.replace(facts, name=parse_dsn(dsn).get("dbname", ""), contents=TargetContents())
    assert last is not None
    raise last


@contextlib.contextmanager
def _maintenance_connection(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection to the same server's ``postgres`` (or ``template1``) database."""
    conn, candidate = first_connection(maintenance_dsns(dsn), application_name="archiver restore")
    try:
        with conn:
            yield conn
    except psycopg.Error as exc:
        raise DatabaseError(f"database error on {redact_dsn(candidate)}: {scrub(str(exc), dsn).strip()}") from None


def create_database(dsn: str, options: str = "") -> None:
    """CREATE DATABASE for the DSN's dbname (from template0, owned by the connecting role).

    ``options``: further clauses (ENCODING ..., LC_COLLATE ..., already quoted; see dbprops.create_options).
    """
    name = parse_dsn(dsn).get("dbname") or ""
    if not name:
        raise UsageError(f"{redact_dsn(dsn)} names no database (dbname=...)")
    with _maintenance_connection(dsn) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0 {}").format(sql.Identifier(name), sql.SQL(options)))


def locale_problem(dsn: str, *, encoding: str, locales: Sequence[str], icu_locale: str | None = None) -> str | None:
    """Why the DSN's server cannot create a database with this encoding and these locales, or None.

    Read-only: the server is asked to load each locale for a temporary collation, in a
    transaction that is rolled back. A libc locale is tried only where the maintenance
    database's encoding is the one asked for (the server refuses a locale of another encoding
    there, which says nothing about CREATE DATABASE); C and POSIX need no trying.
    """
    with _maintenance_connection(dsn) as conn:
        row = conn.execute("SELECT pg_catalog.pg_char_to_encoding(%s), pg_catalog.pg_encoding_to_char("
                           "pg_catalog.pg_char_to_encoding(%s)) = pg_catalog.getdatabaseencoding()",
                           (encoding, encoding)).fetchone()
        assert row is not None
        if int(row[0]) < 0:
            return f"the server does not know encoding {encoding}"
        probes = [sql.SQL("CREATE COLLATION pg_temp.archiver_probe_{} (LC_COLLATE = {}, LC_CTYPE = {})").format(
                      sql.SQL(str(index)), sql.Literal(name), sql.Literal(name))
                  for index, name in enumerate(dict.fromkeys(locales)) if name.lower() not in ("c", "posix") and row[1]]
        if icu_locale:
            probes.append(sql.SQL("CREATE COLLATION pg_temp.archiver_probe_icu (PROVIDER = icu, LOCALE = {})").format(
                sql.Literal(icu_locale)))
        if not probes:
            return None
        conn.execute("BEGIN")
        try:
            for probe in probes:
                conn.execute(probe)
        except psycopg.Error as exc:
            return scrub(str(exc), dsn).strip().splitlines()[0]
        finally:
            conn.execute("ROLLBACK")
    return None


def apply_statements(dsn: str, statements: Sequence[str], *, application_name: str = "archiver restore") -> list[tuple[str, str]]:
    """Run ``statements`` in one transaction, each in a savepoint; (statement, error) for those that failed."""
    failed: list[tuple[str, str]] = []
    with connect(dsn, autocommit=False, application_name=application_name) as conn:
        for statement in statements:
            conn.execute("SAVEPOINT archiver_step")
            try:
                conn.execute(statement)
            except psycopg.Error as exc:
                conn.execute("ROLLBACK TO SAVEPOINT archiver_step")
                failed.append((statement, scrub(str(exc), dsn).strip().splitlines()[0]))
            else:
                conn.execute("RELEASE SAVEPOINT archiver_step")
        conn.commit()
    return failed


def drop_database(dsn: str) -> None:
    """DROP DATABASE for the DSN's dbname, ending its sessions (only for a database archiver created)."""
    name = parse_dsn(dsn).get("dbname") or ""
    with _maintenance_connection(dsn) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def run_in_transaction(dsn: str, statements: Sequence[str], *, application_name: str = "archiver restore") -> None:
    """Run ``statements`` (complete SQL, no parameters) in one transaction: all or nothing."""
    with connect(dsn, autocommit=False, application_name=application_name) as conn:
        for statement in statements:
            conn.execute(statement)
        conn.commit()


def drop_roles(dsn: str, roles: Sequence[str]) -> None:
    """DROP ROLE, through the DSN's database or, once that is gone, the server's maintenance database."""
    conn, candidate = first_connection([dsn, *maintenance_dsns(dsn)], application_name="archiver restore (undo)")
    try:
        with conn:
            for role in reversed(list(roles)):
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
    except psycopg.Error as exc:
        raise DatabaseError(f"database error on {redact_dsn(candidate)}: {scrub(str(exc), dsn).strip()}") from None


def _extension_function(conn: psycopg.Connection[Any], extension: str, function: str) -> sql.Composable:
    """``schema.function`` of an extension's function, the schema read from pg_extension (the search_path
    holds pg_catalog only, and an unqualified name could reach a planted function)."""
    row = conn.execute(EXTENSION_SCHEMA_SQL, (extension,)).fetchone()
    if row is None:
        raise DatabaseError(f"extension {extension} is not installed in database {conn.info.dbname!r}")
    return sql.SQL("{}.{}").format(sql.Identifier(str(row[0])), sql.Identifier(function))


def prepare_timescaledb(dsn: str, version: str, *, create: bool, schema: str = "public") -> None:
    """``CREATE EXTENSION timescaledb WITH SCHEMA ... VERSION ...`` (when ``create``) and ``timescaledb_pre_restore()``."""
    with connect(dsn, application_name="archiver restore") as conn:
        if create:
            conn.execute(sql.SQL("CREATE EXTENSION timescaledb WITH SCHEMA {} VERSION {}").format(
                sql.Identifier(schema), sql.Literal(version)))
        conn.execute(sql.SQL("SELECT {}()").format(_extension_function(conn, "timescaledb", "timescaledb_pre_restore")))


def timescaledb_post_restore(dsn: str) -> None:
    with connect(dsn, application_name="archiver restore") as conn:
        conn.execute(sql.SQL("SELECT {}()").format(_extension_function(conn, "timescaledb", "timescaledb_post_restore")))


def drop_extension(dsn: str, name: str) -> None:
    with connect(dsn, application_name="archiver restore (undo)") as conn:
        conn.execute(sql.SQL("DROP EXTENSION IF EXISTS {} CASCADE").format(sql.Identifier(name)))
        conn.execute(sql.SQL("ALTER DATABASE {} RESET timescaledb.restoring").format(
            sql.Identifier(conn.info.dbname)))


def terminate_sessions(dsn: str, application_name: str) -> int:
    """End the sessions of this database that carry ``application_name`` (a killed pg_restore's backend)."""
    with connect(dsn, application_name="archiver restore (undo)") as conn:
        rows = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND application_name = %s AND pid <> pg_backend_pid()",
                            (application_name[:63],)).fetchall()
    return len(rows)


def clean_database(dsn: str) -> None:
    """Drop everything a database holds (user schemas, extensions, large objects) in one transaction,
    leaving it as a new database from template0: for ``restore --clean`` of a TimescaleDB target."""
    with connect(dsn, autocommit=False, application_name="archiver restore (clean)") as conn:
        schemas = [name for (name,) in conn.execute(_TARGET_SQL["schemas"]).fetchall()]
        extensions = [name for (name,) in conn.execute(
            "SELECT extname FROM pg_extension WHERE extname <> 'plpgsql'").fetchall()]
        for extension in extensions:
            conn.execute(sql.SQL("DROP EXTENSION IF EXISTS {} CASCADE").format(sql.Identifier(extension)))
        for schema in schemas:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        conn.execute("SELECT lo_unlink(oid) FROM pg_largeobject_metadata")
        conn.execute("DROP SCHEMA IF EXISTS public CASCADE")
        if conn.info.server_version >= 150000:
            conn.execute("CREATE SCHEMA public AUTHORIZATION pg_database_owner")
            conn.execute("GRANT USAGE ON SCHEMA public TO PUBLIC")
        else:
            conn.execute("CREATE SCHEMA public")
            conn.execute("GRANT CREATE, USAGE ON SCHEMA public TO PUBLIC")
        conn.execute("COMMENT ON SCHEMA public IS 'standard public schema'")
        conn.execute(sql.SQL("ALTER DATABASE {} RESET timescaledb.restoring").format(sql.Identifier(conn.info.dbname)))
        conn.commit()


def matview_stats(dsn: str, views: Sequence[MatviewRef], *, connect_timeout: int = 10) -> list[MatviewStats]:
    """Populated flag and row count of materialized views (of a restored database, say)."""
    with reading_session(dsn, connect_timeout=connect_timeout, application_name="archiver matviews") as session:
        return session.matview_stats(views)


def content_stats(dsn: str, *, checksums: bool = True, connect_timeout: int = 10,
                  tables: Sequence[TableRef] | None = None, method: str = CHECKSUM_METHOD,
                  on_table: Callable[[], None] | None = None) -> ContentStats:
    """Row counts and checksums of a database (a restored one, say), computed as a backup does (by ``method``).
    ``on_table`` is called before each table is read (progress)."""

    def tick() -> bool:
        if on_table is not None:
            on_table()
        return False

    with reading_session(dsn, connect_timeout=connect_timeout, application_name="archiver checksums") as session:
        return session.content_stats(session.tables() if tables is None else tables, checksums=checksums,
                                     method=method, stop=tick)


def timescale_inventory(dsn: str, *, connect_timeout: int = 10) -> list[HypertableStats]:
    """Hypertables and chunk counts of a database (a restored one, say), read as a backup reads them."""
    with reading_session(dsn, connect_timeout=connect_timeout, application_name="archiver inventory") as session:
        return session.hypertables()
