"""The only module that talks to database drivers (psycopg 3, ADBC).

Everything else asks this module for connections, catalog facts and locks, and never sees a
driver type. DSNs are parsed by libpq's own parser (``psycopg.conninfo``), so redaction is
exact: a password containing ``@`` or ``:`` is found as reliably as a plain one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
import tenacity
from psycopg import conninfo as pg_conninfo
from psycopg import sql

from .errors import DatabaseError, UsageError

_log = logging.getLogger("archiver.db")

REDACTED = "********"
_SECRET_KEYS = ("password", "sslpassword")


def parse_dsn(dsn: str, *, source: str = "") -> dict[str, str]:
    """Split a libpq DSN (URI or key=value) into its parameters.

    ``source`` names where the DSN came from (``--target``, a policy key) in the error. The
    error never quotes the DSN: libpq's parse errors quote fragments of it, which may be a
    password's, so they are reworded (see :func:`_parse_problem`).
    """
    where = f"{source}: " if source else ""
    if problem := _url_problem(dsn):
        raise UsageError(f"{where}not a valid PostgreSQL connection URL: {problem}")
    try:
        return {k: str(v) for k, v in pg_conninfo.conninfo_to_dict(dsn).items() if v is not None}
    except psycopg.ProgrammingError as exc:
        raise UsageError(f"{where}not a valid PostgreSQL connection string: {_parse_problem(str(exc), dsn)}") from None


_URL_PREFIXES = ("postgresql://", "postgres://")


def _url_problem(dsn: str) -> str | None:
    """An unescaped ``@`` that would make libpq split a URL's password into host, port or dbname.

    libpq takes the user:password part up to the *first* ``@`` (before any ``/``): with
    ``postgresql://u:p@ss:w0rd@host/db`` the password is ``p``, the host ``ss`` and the port
    ``w0rd@host``, and the rest of the password ends up in every connection error. A ``/`` in
    the password hides the ``@`` from libpq altogether. So an ``@`` left after the user:password
    part (before the ``?`` options) means the URL cannot be read as intended.
    """
    if not dsn.startswith(_URL_PREFIXES):
        return None
    rest = dsn.split("://", 1)[1]
    slash = rest.find("/")
    at = rest.find("@", 0, slash if slash >= 0 else len(rest))
    host_and_path = rest[at + 1:].split("?", 1)[0]
    if "@" in host_and_path:
        return ("an '@' is not percent-encoded (a user or password holding '@', '/' or ':' must write them as "
                "%40, %2F and %3A, or use the key=value form: password='...')")
    return None


# libpq's parse errors, reworded without the fragment of the DSN they quote
_PARSE_PROBLEMS = (
    ('missing "=" after', 'a word without "=" (write key=value pairs; quote a value that holds spaces: key=\'a b\')'),
    ("unterminated quoted string", "a quoted value is not closed"),
    ("invalid connection option", "an unknown connection option (or a value holding spaces without quotes: "
                                  "write key='a b')"),
    ("invalid percent-encoded token", "an invalid %XX escape (write '%' itself as %25)"),
    ("forbidden value %00", "a %00 escape"),
    ("unexpected spaces found", "a space (write it as %20)"),
    ("IPv6 host address", "an unterminated or empty [IPv6] host"),
    ("unexpected character", "an unexpected character in the host or port"),
    ("URI query parameter", "a malformed ?key=value parameter"),
    ("invalid URI", "a malformed URL"),
)


def _parse_problem(message: str, dsn: str) -> str:
    """libpq's parse error for ``dsn`` in words that quote nothing from it.

    The fragment libpq quotes (the word after which "=" is missing, the bad %-escape, the whole
    URL) may be part of a password. Only a DSN that cannot hold a password (no "password", no
    "@", no "%") keeps libpq's own words, which name the offending option.
    """
    first_line = message.strip().splitlines()[0] if message.strip() else "cannot be parsed"
    lowered = dsn.lower()
    if "password" not in lowered and "@" not in dsn and "%" not in dsn:
        return first_line
    return next((reworded for prefix, reworded in _PARSE_PROBLEMS if prefix in first_line),
                "cannot be parsed (libpq's detail is withheld: it would quote part of the string)")


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
    """Remove the DSN's secrets from a driver message (exact strings, not patterns).

    For a URL that libpq splits in the wrong place (an unescaped ``@``, see :func:`_url_problem`)
    any parsed value may hold part of the password, so every one of them goes, with the URL's
    user:password@host part as written.
    """
    try:
        params = pg_conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return message.replace(dsn, "<dsn>") if dsn else message
    secrets = [str(params[key]) for key in _SECRET_KEYS if params.get(key)]
    if _url_problem(dsn):
        authority = dsn.split("://", 1)[1].split("?", 1)[0]
        secrets += [dsn, authority, *(str(value) for value in params.values() if len(str(value)) >= 3)]
    for secret in sorted(set(secrets), key=len, reverse=True):
        message = message.replace(secret, REDACTED)
    return message


@dataclass
class ConnectRetry:
    """How hard to try a connection that fails for a reason that may pass (server restarting,
    network blip, too many connections). Authentication and missing databases are not retried."""

    attempts: int = 5
    max_seconds: float = 60.0
    max_wait: float = 10.0


CONNECT_RETRY = ConnectRetry()
_PERMANENT_SQLSTATES = {
    "28P01": "authentication failed",
    "28000": "not authorised",
    "3D000": "the database does not exist",
    "42501": "permission denied",
}
# libpq reports a refused login as a plain connection failure (no SQLSTATE): recognise the
# server's FATAL messages, which say what no retry can change.
_PERMANENT_MESSAGES = (
    (re.compile(r"password authentication failed|authentication failed for user"), "authentication failed"),
    (re.compile(r'FATAL:\s+database ".*" does not exist'), "the database does not exist"),
    (re.compile(r'FATAL:\s+role ".*" does not exist'), "the role does not exist"),
    (re.compile(r"no pg_hba\.conf entry"), "pg_hba.conf rejects this connection"),
    (re.compile(r"permission denied for database"), "permission denied"),
    (re.compile(r"certificate verify failed|SSL error: certificate"), "the server's certificate is not trusted"),
)


def _permanent_reason(sqlstate: str | None, detail: str) -> str | None:
    if sqlstate in _PERMANENT_SQLSTATES:
        return _PERMANENT_SQLSTATES[sqlstate]
    return next((reason for pattern, reason in _PERMANENT_MESSAGES if pattern.search(detail)), None)


class DatabaseMissing(DatabaseError):
    """The server answered, but the database named in the DSN does not exist."""


class _TransientConnectError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# -- a safe search_path in every session -------------------------------------------------------
#
# Objects in a user's database may be hostile: a role that can CREATE in any schema on the
# search_path can plant a function or operator (hash_record_extended(its_table, integer),
# octet_length(varchar), count(), ...) that an unqualified call would run with archiver's
# privileges, or that ALTER ROLE/DATABASE ... SET search_path puts ahead of pg_catalog. So every
# session archiver opens resolves names in pg_catalog only: pg_temp is never searched for
# functions or operators, and only this session can create objects in it. As pg_dump does, the
# setting is made with set_config() right after connecting, before anything else runs; it
# overrides role and database settings, and survives poolers that drop startup options. Only a
# policy's own SQL checks run with the role's search_path, in a session of their own
# (first_value(..., safe_search_path=False)).
SAFE_SEARCH_PATH = "pg_catalog, pg_temp"
_PIN_SEARCH_PATH = "SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', false)"


def safe_options(dsn: str) -> str:
    """The DSN's ``options`` (or ``$PGOPTIONS``) with the safe search_path appended (later ``-c`` wins).

    For drivers that run queries of their own while connecting (ADBC reads pg_type), where
    only a startup option comes early enough.
    """
    existing = parse_dsn(dsn).get("options") or os.environ.get("PGOPTIONS", "")
    return f"{existing} -c search_path={SAFE_SEARCH_PATH.replace(' ', '')}".strip()


def _pin_search_path(conn: psycopg.Connection[Any]) -> None:
    conn.execute(_PIN_SEARCH_PATH)
    if not conn.autocommit:
        conn.commit()  # a rolled-back set_config() would be undone


def _open(dsn: str, *, safe_search_path: bool = True, **kwargs: Any) -> psycopg.Connection[Any]:
    try:
        conn = psycopg.connect(dsn, **kwargs)
    except psycopg.Error as exc:
        detail = _scrub(str(exc), dsn).strip()
        reason = _permanent_reason(getattr(exc, "sqlstate", None), detail)
        if reason is not None:
            error = DatabaseMissing if reason == "the database does not exist" else DatabaseError
            raise error(f"cannot connect to {redact_dsn(dsn)}: {detail} (permanent: {reason}; not retried)") from None
        raise _TransientConnectError(detail) from None
    if safe_search_path:
        try:
            _pin_search_path(conn)
        except psycopg.Error as exc:
            conn.close()
            raise DatabaseError(f"cannot set a safe search_path on {redact_dsn(dsn)}: "
                                f"{_scrub(str(exc), dsn).strip()}") from None
    return conn


def open_connection(dsn: str, *, autocommit: bool = True, application_name: str = "archiver",
                    connect_timeout: int = 10, safe_search_path: bool = True) -> psycopg.Connection[Any]:
    """Connect, retrying transient failures with exponential backoff and jitter.

    The session's search_path is ``pg_catalog, pg_temp`` unless ``safe_search_path`` is False
    (only for SQL the operator wrote, which expects the role's own search_path).
    """
    settings = CONNECT_RETRY
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(_TransientConnectError),
        stop=tenacity.stop_after_attempt(settings.attempts) | tenacity.stop_after_delay(settings.max_seconds),
        wait=tenacity.wait_random_exponential(multiplier=0.5, max=settings.max_wait),
        before_sleep=lambda state: _log.warning("db.connect.retry", extra={"fields": {
            "target": redact_dsn(dsn), "attempt": state.attempt_number,
            "error": str(state.outcome.exception()) if state.outcome else ""}}),
        reraise=True,
    )
    keepalive = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}
    try:
        return retrying(_open, dsn, safe_search_path=safe_search_path, autocommit=autocommit,
                        application_name=application_name[:63], connect_timeout=connect_timeout, **keepalive)
    except _TransientConnectError as exc:
        raise DatabaseError(f"cannot connect to {redact_dsn(dsn)} after {settings.attempts} attempts: {exc.message}") from None


@contextlib.contextmanager
def connect(dsn: str, *, autocommit: bool = True, application_name: str = "archiver",
            connect_timeout: int = 10, safe_search_path: bool = True) -> Iterator[psycopg.Connection[Any]]:
    """A psycopg connection whose errors never carry the password (search_path: see open_connection)."""
    conn = open_connection(dsn, autocommit=autocommit, application_name=application_name,
                           connect_timeout=connect_timeout, safe_search_path=safe_search_path)
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
    """Run the operator's own SQL as psql would: with the role's search_path (no task calls this)."""
    with connect(dsn, safe_search_path=False) as conn:
        conn.execute(sql, params)  # type: ignore[arg-type]


def query(dsn: str, sql: str, params: tuple[Any, ...] | None = None) -> list[tuple[Any, ...]]:
    """The rows of the operator's own SQL, run as psql would: with the role's search_path (no task calls this)."""
    with connect(dsn, safe_search_path=False) as conn:
        return list(conn.execute(sql, params).fetchall())  # type: ignore[arg-type]


# -- advisory locks ----------------------------------------------------------------------------

ADVISORY_NAMESPACE = 0x41524348  # 'ARCH': the first key of every archiver advisory lock


def advisory_key(name: str) -> int:
    """A stable positive int4 for a lock name (e.g. ``telemetry:backup``)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big") & 0x7FFFFFFF


@dataclass(frozen=True)
class LockHolder:
    pid: int
    application_name: str
    client: str
    since: Any  # datetime of the holder's connection start


def _advisory_holder(conn: psycopg.Connection[Any], key: int) -> LockHolder | None:
    row = conn.execute(
        """SELECT a.pid, a.application_name, coalesce(host(a.client_addr), 'local socket'), a.backend_start
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
            WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s::oid AND l.objid = %s::oid
              AND l.objsubid = 2 AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())""",
        (ADVISORY_NAMESPACE, key)).fetchone()
    return LockHolder(*row) if row else None


class AdvisoryLockBusy(Exception):
    def __init__(self, holder: LockHolder | None) -> None:
        super().__init__("advisory lock busy")
        self.holder = holder


@contextlib.contextmanager
def advisory_lock(dsn: str, name: str, *, holder: str) -> Iterator[None]:
    """Hold a session advisory lock on its own connection for the duration of the block.

    The server frees it if this process dies (the connection closes; TCP keepalives catch a
    vanished host). ``holder`` is shown to whoever finds the lock busy, as application_name.
    Raises AdvisoryLockBusy at once when another session holds it (no waiting).
    """
    conn = open_connection(dsn, application_name=holder)
    with _holding_advisory_lock(conn, dsn, name):
        yield


@contextlib.contextmanager
def server_advisory_lock(dsn: str, name: str, *, holder: str) -> Iterator[None]:
    """``advisory_lock`` taken in the server's maintenance database (``postgres``, else ``template1``).

    For a lock about a database that may not exist yet (a restore target): every archiver
    process picks the same maintenance database, so they exclude each other whether or not
    the target exists.
    """
    conn, _ = _first_connection(_maintenance_dsns(dsn), application_name=holder)
    with _holding_advisory_lock(conn, dsn, name):
        yield


@contextlib.contextmanager
def _holding_advisory_lock(conn: psycopg.Connection[Any], dsn: str, name: str) -> Iterator[None]:
    key = advisory_key(name)
    try:
        got = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (ADVISORY_NAMESPACE, key)).fetchone()
        if not got or not got[0]:
            raise AdvisoryLockBusy(_advisory_holder(conn, key))
        yield
    except psycopg.Error as exc:
        raise DatabaseError(f"advisory lock {name!r} on {redact_dsn(dsn)}: {_scrub(str(exc), dsn).strip()}") from None
    finally:
        conn.close()  # ends the session, which releases the lock


def probe_server(dsn: str, *, timeout: int = 2) -> int:
    """``server_version_num`` with one quick attempt (no retries): for readiness polling."""
    try:
        with psycopg.connect(dsn, connect_timeout=timeout, autocommit=True) as conn:
            _pin_search_path(conn)
            return int(conn.info.server_version)
    except psycopg.Error as exc:
        raise DatabaseError(_scrub(str(exc), dsn).strip()) from None


def extension_available(dsn: str, name: str) -> bool:
    """Whether the server can CREATE EXTENSION ``name`` (installed files, any version)."""
    with connect(dsn) as conn:
        return conn.execute("SELECT 1 FROM pg_catalog.pg_available_extensions WHERE name = %s",
                            (name,)).fetchone() is not None


# -- consistent snapshots, database facts and content checksums ---------------------------------
#
# A backup's row counts and checksums are taken in the very snapshot pg_dump dumps: one
# connection opens a REPEATABLE READ transaction, exports its snapshot (pg_dump --snapshot=...)
# and keeps it open while pg_dump runs. The same checksum code runs on a restored database,
# so a restore drill compares like with like.

# Text output of every type must not depend on the server's or the session's configuration.
PINNED_SETTINGS = {
    "TimeZone": "UTC",
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "postgres",
    "extra_float_digits": "3",
    "bytea_output": "hex",
    "lc_monetary": "C",
    "xmloption": "content",
}
# Per table: the row count and the exact (numeric) sum over rows of a 64-bit row hash, so the
# result does not depend on row order. The row hash is hash_record_extended(row, 0), which hashes
# each value with its type's own extended hash function (the functions hash partitioning relies
# on, stable across versions); it is 4x cheaper than hashing the row's text and 10x cheaper than
# an md5 of it. It sees values, not their spelling: numeric 1.5 and 1.50 hash alike. A table
# falls back to hashtextextended(row text, 0), which sees the text exactly, when a column type
# has no extended hash function (json, point, ...) or hashes an OID that a restore changes
# (enums and reg* types, also inside arrays, domains, composites and ranges), and on servers
# before PostgreSQL 14. Both assume the same byte order on both sides, as hash partitioning does.
#
# v2 (what backups record now) hashes a row's columns in the order of their names (sorted by
# code point: a fixed order that no server setting changes), not in column-position order as
# v1 did: pg_dump re-creates an inheritance child whose parent gained a column after it with
# another column order, and the same rows must give the same checksum there. A manifest names
# its method (content.method); a restore drill computes with that method, so backups taken
# before v2 still verify. Every function is schema-qualified, on top of the session's safe
# search_path: hashing runs on databases whose users may have planted look-alike functions.
CHECKSUM_V1 = "hash64-sum/v1"
CHECKSUM_V2 = "hash64-sum/v2"
CHECKSUM_METHOD = CHECKSUM_V2
CHECKSUM_METHODS = (CHECKSUM_V1, CHECKSUM_V2)
ROW_HASHES = {  # v1; {row} is the whole row
    "record": "pg_catalog.sum(pg_catalog.hash_record_extended({row}, 0))",
    "text": "pg_catalog.sum(pg_catalog.hashtextextended(({row})::text, 0))",
}


def row_expression(method: str, columns: Sequence[str]) -> str:
    """The row a checksum hashes: ``t`` / ``ROW(t.*)`` (v1), or its columns by name (v2)."""
    if method == CHECKSUM_V1:
        return "t"
    return "ROW(" + ", ".join(f"t.{quote_ident(name)}" for name in sorted(columns)) + ")"


def row_hash_sql(method: str, row_hash: str, columns: Sequence[str]) -> str:
    """The aggregate that sums a table's row hashes (``t`` is the table's alias)."""
    row = row_expression(method, columns)
    if method == CHECKSUM_V1 and row_hash == "text":
        row = "ROW(t.*)"
    return ROW_HASHES[row_hash].format(row=row)


@dataclass(frozen=True)
class DatabaseFacts:
    name: str
    server_version: str
    server_version_num: int
    size_bytes: int
    extensions: dict[str, str]  # name -> installed version (pg_extension.extversion)
    snapshot_time: datetime
    extension_schemas: dict[str, str] = field(default_factory=dict)  # name -> schema (pg_extension.extnamespace)


@dataclass(frozen=True)
class TableRef:
    """A table whose rows a backup accounts for.

    ``kind``: ``table``; ``partition`` (a leaf of a declaratively partitioned table);
    ``hypertable`` (a TimescaleDB hypertable, counted whole: all its chunks, compressed ones
    decompressed); ``continuous_aggregate`` (the materialization hypertable of a cagg, whose
    view is ``view``). Chunks and TimescaleDB's internal compressed tables are not listed:
    their rows are in their hypertable's totals, and their names are internal.
    """

    schema: str
    name: str
    kind: str
    parent: str | None = None
    view: str | None = None
    data_excluded: bool = False
    row_hash: str | None = None  # the row hash a manifest recorded, to checksum the same way again

    @property
    def qualified_name(self) -> str:
        return f"{self.schema}.{self.name}"

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> "TableRef":
        """A table entry of a backup manifest (``content.tables[]``), to count it again elsewhere."""
        return cls(entry["schema"], entry["name"], entry["kind"], parent=entry.get("parent"), view=entry.get("view"),
                   data_excluded=bool(entry.get("data_excluded")), row_hash=entry.get("row_hash"))


@dataclass(frozen=True)
class TableStats:
    table: TableRef
    rows: int
    checksum: str | None  # None when checksums were not asked for
    row_hash: str | None = None  # "record" or "text" (see ROW_HASHES)

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"schema": self.table.schema, "name": self.table.name, "kind": self.table.kind,
                                 "rows": self.rows}
        if self.checksum is not None:
            entry["checksum"] = self.checksum
            entry["row_hash"] = self.row_hash
        if self.table.parent:
            entry["parent"] = self.table.parent
        if self.table.view:
            entry["view"] = self.table.view
        if self.table.data_excluded:
            entry["data_excluded"] = True
        return entry


@dataclass(frozen=True)
class LargeObjectStats:
    count: int
    checksum: str | None
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"count": self.count}
        if self.checksum is not None:
            entry["checksum"] = self.checksum
        if self.note:
            entry["note"] = self.note
        return entry


@dataclass(frozen=True)
class ContentStats:
    tables: list[TableStats]
    large_objects: LargeObjectStats
    materialized_views: list[MatviewStats] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(stats.rows for stats in self.tables)


@dataclass(frozen=True)
class TableFilter:
    """Tables pg_dump leaves out, as anchored regexes (see ``dump.parse_name_pattern``).

    Each table pattern is ``(schema_regex or None, name_regex)``; without a schema part it
    matches tables visible on the search path, as pg_dump's own pattern expansion does.
    """

    exclude_schemas: tuple[str, ...] = ()
    exclude_tables: tuple[tuple[str | None, str], ...] = ()
    exclude_table_data: tuple[tuple[str | None, str], ...] = ()


def combine_checksum(rows: int, hash_sum: Any, row_hash: str = "record", method: str = CHECKSUM_METHOD) -> str:
    """32 hex digits from a table's row count and the sum of its rows' hashes."""
    return hashlib.sha256(f"{method}:{row_hash}:{rows}:{int(hash_sum or 0)}".encode()).hexdigest()[:32]


def empty_checksum(method: str = CHECKSUM_METHOD) -> str:
    return combine_checksum(0, 0, method=method)


EMPTY_CHECKSUM = empty_checksum()

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

_COLUMN_NAMES_SQL = ("SELECT a.attname FROM pg_catalog.pg_attribute a WHERE a.attrelid = %s::pg_catalog.regclass "
                     "AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum")

# Does a table have a column whose values hash by OID (enums, reg* types), looking through
# domains, arrays, composite types and ranges?
_OID_HASHED_COLUMNS_SQL = """
WITH RECURSIVE types(oid) AS (
    SELECT a.atttypid FROM pg_attribute a WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped
  UNION
    SELECT x.next FROM types t JOIN pg_type ty ON ty.oid = t.oid
    CROSS JOIN LATERAL (
        SELECT ty.typbasetype WHERE ty.typtype = 'd'
        UNION ALL SELECT ty.typelem WHERE ty.typelem <> 0 AND ty.typlen = -1
        UNION ALL SELECT a.atttypid FROM pg_attribute a
                  WHERE ty.typtype = 'c' AND a.attrelid = ty.typrelid AND a.attnum > 0 AND NOT a.attisdropped
        UNION ALL SELECT r.rngsubtype FROM pg_range r WHERE r.rngtypid = ty.oid OR r.rngmultitypid = ty.oid
    ) AS x(next)
)
SELECT EXISTS (SELECT 1 FROM types t JOIN pg_type ty ON ty.oid = t.oid
               WHERE ty.typtype = 'e' OR (ty.typname LIKE 'reg%%' AND ty.typnamespace = 'pg_catalog'::regnamespace))
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


@dataclass(frozen=True)
class HypertableStats:
    schema: str
    name: str
    chunks: int
    compressed_chunks: int

    @property
    def qualified_name(self) -> str:
        return f"{self.schema}.{self.name}"

    def to_json(self) -> dict[str, Any]:
        return {"schema": self.schema, "name": self.name, "chunks": self.chunks,
                "compressed_chunks": self.compressed_chunks}


@dataclass(frozen=True)
class MatviewRef:
    """A materialized view of a dump: pg_dump keeps its definition and re-computes its rows on restore
    (REFRESH), unless it was not populated; ``data_excluded``: pg_dump leaves it unpopulated."""

    schema: str
    name: str
    populated: bool
    data_excluded: bool = False

    @property
    def qualified_name(self) -> str:
        return f"{self.schema}.{self.name}"

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> "MatviewRef":
        return cls(entry["schema"], entry["name"], bool(entry.get("populated")),
                   data_excluded=bool(entry.get("data_excluded")))


@dataclass(frozen=True)
class MatviewStats:
    view: MatviewRef
    populated: bool | None  # None: the view does not exist
    rows: int | None  # None: not populated (or missing)

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"schema": self.view.schema, "name": self.view.name, "populated": bool(self.populated),
                                 "rows": self.rows}
        if self.view.data_excluded:
            entry["data_excluded"] = True
        return entry


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

# The database's own properties, in the form a backup manifest records them (database.properties).
# pg_database's locale columns differ between versions (daticulocale 15-16, datlocale 17+,
# daticurules 16+), so they are read from the row as JSON.
_DATABASE_SQL = """
SELECT pg_catalog.pg_encoding_to_char(d.encoding), d.datcollate, d.datctype, pg_catalog.to_jsonb(d),
       pg_catalog.pg_get_userbyid(d.datdba), d.datconnlimit, pg_catalog.shobj_description(d.oid, 'pg_database'),
       d.datacl IS NULL
FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database()
"""
_DATABASE_SETTINGS_SQL = """
SELECT CASE WHEN s.setrole = 0 THEN NULL ELSE pg_catalog.pg_get_userbyid(s.setrole) END, s.setconfig
FROM pg_catalog.pg_db_role_setting s JOIN pg_catalog.pg_database d ON d.oid = s.setdatabase
WHERE d.datname = pg_catalog.current_database()
ORDER BY s.setrole <> 0, 1
"""
_DATABASE_ACL_SQL = """
SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_catalog.pg_get_userbyid(a.grantee) END, a.privilege_type, a.is_grantable
FROM pg_catalog.pg_database d CROSS JOIN LATERAL pg_catalog.aclexplode(d.datacl) AS a
WHERE d.datname = pg_catalog.current_database()
ORDER BY 1 NULLS FIRST, 2
"""


def _read_database_properties(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    row = conn.execute(_DATABASE_SQL).fetchone()
    assert row is not None
    encoding, collate, ctype, columns, owner, connection_limit, comment, default_acl = row
    provider_code = str(columns.get("datlocprovider") or "c")
    settings = []
    for role, config in conn.execute(_DATABASE_SETTINGS_SQL).fetchall():
        for item in config or []:
            name, _, value = str(item).partition("=")
            settings.append({"name": name, "value": value, "role": role})
    acl = None if default_acl else [{"grantee": grantee, "privilege": privilege, "grantable": bool(grantable)}
                                    for grantee, privilege, grantable in conn.execute(_DATABASE_ACL_SQL).fetchall()]
    return {"encoding": encoding, "collate": collate, "ctype": ctype,
            "provider": {"c": "libc", "i": "icu", "b": "builtin"}.get(provider_code, provider_code),
            "locale": columns.get("datlocale") or columns.get("daticulocale"), "icu_rules": columns.get("daticurules"),
            "owner": owner, "connection_limit": int(connection_limit), "settings": settings, "comment": comment,
            "acl": acl}


def database_properties(dsn: str, *, connect_timeout: int = 10) -> dict[str, Any]:
    """The properties of a database (a restore target, a restored one), as a backup records them."""
    with connect(dsn, application_name="archiver properties", connect_timeout=connect_timeout) as conn:
        return _read_database_properties(conn)


def matview_stats(dsn: str, views: Sequence[MatviewRef], *, connect_timeout: int = 10) -> list[MatviewStats]:
    """Populated flag and row count of materialized views (of a restored database, say)."""
    with _reading_session(dsn, connect_timeout=connect_timeout, application_name="archiver matviews") as session:
        return session.matview_stats(views)


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
            raise DatabaseError(f"{what} on {redact_dsn(self._dsn)}: {_scrub(str(exc), self._dsn).strip()}") from None

    def facts(self) -> DatabaseFacts:
        with self._errors("reading database facts"):
            row = self._conn.execute(
                "SELECT current_database(), current_setting('server_version'), "
                "current_setting('server_version_num')::int, pg_database_size(current_database()), "
                "clock_timestamp()").fetchone()
            assert row is not None
            extensions: dict[str, str] = {}
            schemas: dict[str, str] = {}
            for name, version, schema in self._conn.execute(
                    "SELECT e.extname, e.extversion, n.nspname FROM pg_catalog.pg_extension e "
                    "JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace ORDER BY e.extname").fetchall():
                extensions[name], schemas[name] = version, schema
        return DatabaseFacts(row[0], row[1], int(row[2]), int(row[3]), extensions, row[4], schemas)

    def database_properties(self) -> dict[str, Any]:
        """Encoding, locale, owner, settings, comment and privileges of the database (see dbprops)."""
        with self._errors("reading the database's properties"):
            return _read_database_properties(self._conn)

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
            results.append(self._table_stats(table, checksums, method))
        large_objects = self._large_object_stats(checksums, method)
        return ContentStats(results, large_objects, self.matview_stats(matviews))

    def _table_stats(self, table: TableRef, checksums: bool, method: str) -> TableStats:
        if table.data_excluded:
            return TableStats(table, 0, empty_checksum(method) if checksums else None, "record" if checksums else None)
        # A hypertable is read whole (its chunks, decompressed); a plain table ONLY, since its
        # inheritance children are listed themselves.
        source = sql.SQL("{only}{schema}.{name} AS t").format(
            only=sql.SQL("" if table.kind in ("hypertable", "continuous_aggregate") else "ONLY "),
            schema=sql.Identifier(table.schema), name=sql.Identifier(table.name))
        with self._errors(f"counting rows of {table.qualified_name}"):
            if not checksums:
                row = self._conn.execute(sql.SQL("SELECT pg_catalog.count(*) FROM {source}").format(
                    source=source)).fetchone()
                assert row is not None
                return TableStats(table, int(row[0]), None)
            columns, oid_hashed = self._columns(table)
            for row_hash in self._row_hashes(table, oid_hashed):
                row = self._hash_rows(source, row_hash_sql(method, row_hash, columns), row_hash)
                if row is not None:
                    checksum = combine_checksum(int(row[0]), row[1], row_hash, method)
                    return TableStats(table, int(row[0]), checksum, row_hash)
        raise DatabaseError(f"cannot checksum {table.qualified_name}")  # unreachable: text hashing always works

    def _columns(self, table: TableRef) -> tuple[list[str], bool]:
        """The table's column names, and whether a column's values hash by OID (see _OID_HASHED_COLUMNS_SQL)."""
        relation = sql.SQL("{}.{}").format(sql.Identifier(table.schema), sql.Identifier(table.name)).as_string(self._conn)
        names = [str(name) for (name,) in self._conn.execute(_COLUMN_NAMES_SQL, (relation,)).fetchall()]
        row = self._conn.execute(_OID_HASHED_COLUMNS_SQL, (relation,)).fetchone()
        return names, bool(row and row[0])

    def _row_hashes(self, table: TableRef, oid_hashed: bool) -> list[str]:
        """The row hashes to try, in order (see ROW_HASHES): the one a manifest recorded first."""
        if self._conn.info.server_version < 140000 or oid_hashed:
            candidates = ["text"]
        else:
            candidates = ["record", "text"]
        if table.row_hash in ROW_HASHES:
            return [table.row_hash] + [row_hash for row_hash in candidates if row_hash != table.row_hash]
        return candidates

    def _hash_rows(self, source: sql.Composable, hash_sql: str, row_hash: str) -> tuple[Any, ...] | None:
        """(count, hash sum), or None when a column type cannot be hashed that way."""
        query = sql.SQL("SELECT pg_catalog.count(*), {hash} FROM {source}").format(hash=sql.SQL(hash_sql),
                                                                                    source=source)
        if row_hash == "text":
            return self._conn.execute(query).fetchone()
        self._conn.execute("SAVEPOINT archiver_hash")
        try:
            row = self._conn.execute(query).fetchone()
        except psycopg.errors.UndefinedFunction:  # "could not identify an extended hash function for type"
            self._conn.execute("ROLLBACK TO SAVEPOINT archiver_hash")
            return None
        self._conn.execute("RELEASE SAVEPOINT archiver_hash")
        return row

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
        raise DatabaseError(f"cannot set up a session on {redact_dsn(dsn)}: {_scrub(str(exc), dsn).strip()}") from None
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
            raise DatabaseError(f"cannot export a snapshot on {redact_dsn(dsn)}: {_scrub(str(exc), dsn).strip()}") from None
        assert row is not None
        yield SnapshotSession(conn, dsn, str(row[0]))


@contextlib.contextmanager
def _reading_session(dsn: str, *, connect_timeout: int, application_name: str) -> Iterator[SnapshotSession]:
    """A read-only REPEATABLE READ session (no exported snapshot) for looking at a database."""
    with _snapshot_connection(dsn, connect_timeout=connect_timeout, lock_timeout_ms=None,
                              application_name=application_name) as conn:
        yield SnapshotSession(conn, dsn, None)


def content_stats(dsn: str, *, checksums: bool = True, connect_timeout: int = 10,
                  tables: Sequence[TableRef] | None = None, method: str = CHECKSUM_METHOD) -> ContentStats:
    """Row counts and checksums of a database (a restored one, say), computed as a backup does (by ``method``)."""
    with _reading_session(dsn, connect_timeout=connect_timeout, application_name="archiver checksums") as session:
        return session.content_stats(session.tables() if tables is None else tables, checksums=checksums,
                                     method=method)


def execute_script(dsn: str, script: str) -> None:
    """Run the operator's own multi-statement SQL script (no parameters) in one transaction, with the
    role's search_path, as psql would (the demo's data; no task calls this)."""
    with connect(dsn, autocommit=False, safe_search_path=False) as conn:
        conn.execute(script.encode())


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
def session(dsn: str, *, application_name: str = "archiver", connect_timeout: int = 10,
            safe_search_path: bool = True) -> Iterator[Session]:
    """An autocommit session in UTC with ISO dates (catalog text such as partition bounds depends on it).

    Its search_path is ``pg_catalog, pg_temp`` (see open_connection); ``safe_search_path=False``
    only for the operator's own SQL (test fixtures), never in a task.
    """
    with connect(dsn, autocommit=True, application_name=application_name, connect_timeout=connect_timeout,
                 safe_search_path=safe_search_path) as conn:
        current = Session(conn, dsn)
        current.execute("SET TIME ZONE 'UTC'")
        current.execute("SET DateStyle = 'ISO, YMD'")
        current.execute("SET IntervalStyle = 'postgres'")
        yield current


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
    extension_schema = current.scalar(_EXTENSION_SCHEMA_SQL, ("timescaledb",))
    if extension_schema is None:
        raise DatabaseError(f"drop_chunks: extension timescaledb is not installed in database {current_database(current)!r}")
    rows = current.query(f"SELECT {quote_ident(str(extension_schema))}.drop_chunks(%s::regclass, "
                         f"older_than => %s::{sql_type})", (qualified(schema, table), boundary))
    return [str(row[0]) for row in rows]


def detach_and_drop_partition(current: Session, parent_schema: str, parent: str, schema: str, name: str) -> None:
    current.execute(f"ALTER TABLE {qualified(parent_schema, parent)} DETACH PARTITION {qualified(schema, name)}")
    current.execute(f"DROP TABLE {qualified(schema, name)}")


# --------------------------------------------------------------------------------------------
# Reading rows as Arrow (ADBC: COPY binary -> Arrow record batches)


# Reading a chunk waits at most this long for its lock. Two sessions of one export read the same
# chunk; were a third (a TimescaleDB job's drop_chunks, an ALTER) to queue for an exclusive lock
# between them, the second would wait behind it forever while the first waits for the second.
READ_LOCK_TIMEOUT_MS = 30_000


@contextlib.contextmanager
def shared_read_snapshot(dsn: str) -> Iterator[tuple[str, Session]]:
    """A REPEATABLE READ transaction whose snapshot other connections can share.

    The export stream (ADBC) and the fingerprint query (this session) then see exactly the same
    rows, even while late data keeps arriving.
    """
    with session(dsn, application_name="archiver archive") as current:
        # one core for the fingerprint: the export stream needs the others, and a production
        # server's parallel workers are not ours to take
        current.execute("SET max_parallel_workers_per_gather = 0")
        current.execute(f"SET lock_timeout = {READ_LOCK_TIMEOUT_MS}")
        current.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            snapshot_id = str(current.scalar("SELECT pg_export_snapshot()"))
            yield snapshot_id, current
        finally:
            try:
                current.execute("COMMIT")
            except DatabaseError:
                pass


def _adbc_connect(dsn: str, application_name: str, **kwargs: Any) -> Any:
    """An ADBC connection whose search_path is safe from the start (a startup option, because the
    driver queries the catalog while connecting) and again after (a pooler may drop startup options)."""
    import adbc_driver_postgresql.dbapi as adbc_dbapi

    connection = adbc_dbapi.connect(dsn_with(dsn, application_name=application_name, options=safe_options(dsn)),
                                    **kwargs)
    try:
        cursor = connection.cursor()
        cursor.execute(_PIN_SEARCH_PATH)
        cursor.fetchall()
        cursor.close()
        if not kwargs.get("autocommit"):
            connection.commit()
    except BaseException:
        connection.close()
        raise
    return connection


def _adbc_error(exc: Exception, dsn: str, what: str = "reading rows") -> DatabaseError:
    message = f"database error on {redact_dsn(dsn)} ({what}): {_scrub(str(exc), dsn).strip()}"
    return LockTimeout(message) if LOCK_NOT_AVAILABLE in str(exc) else DatabaseError(message)


def arrow_batches(dsn: str, sql: str, *, snapshot_id: str | None = None,
                  batch_bytes: int = 8 * 1024 * 1024) -> Iterator[Any]:
    """Yield ``pyarrow.RecordBatch``es of ``sql`` read by ADBC (COPY ... TO STDOUT (FORMAT binary)).

    ``batch_bytes`` is the driver's batch size hint, which bounds memory whatever the result's size.
    With ``snapshot_id`` the rows come from that exported snapshot.
    """
    import adbc_driver_manager

    try:
        connection = _adbc_connect(dsn, "archiver archive", autocommit=True)
    except adbc_driver_manager.Error as exc:
        raise _adbc_error(exc, dsn) from None
    try:
        cursor = connection.cursor()
        cursor.adbc_statement.set_options(**{"adbc.postgresql.batch_size_hint_bytes": str(int(batch_bytes))})
        if snapshot_id is not None:
            cursor.execute(f"SET lock_timeout = {READ_LOCK_TIMEOUT_MS}")
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


def timescale_inventory(dsn: str, *, connect_timeout: int = 10) -> list[HypertableStats]:
    """Hypertables and chunk counts of a database (a restored one, say), read as a backup reads them."""
    with _reading_session(dsn, connect_timeout=connect_timeout, application_name="archiver inventory") as session:
        return session.hypertables()


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
        row = conn.execute(statement).fetchone()  # type: ignore[arg-type]
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


def inspect_target(dsn: str, extensions: Sequence[str] = (), *, connect_timeout: int = 10) -> TargetFacts:
    """Facts about a restore target, read-only; raises DatabaseMissing when its database does not exist."""
    with connect(dsn, application_name="archiver restore (inspect)", connect_timeout=connect_timeout) as conn:
        row = conn.execute(
            "SELECT current_database(), current_setting('server_version'), current_setting('server_version_num')::int, "
            "current_user, r.rolsuper, r.rolcreaterole, r.rolcreatedb, current_setting('shared_preload_libraries') "
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
                       preload, roles, tablespaces, contents)


def inspect_server(dsn: str, extensions: Sequence[str] = ()) -> TargetFacts:
    """Facts about the server of a DSN whose database does not exist yet (read through ``postgres``/``template1``)."""
    last: DatabaseError | None = None
    for candidate in _maintenance_dsns(dsn):
        try:
            facts = inspect_target(candidate, extensions)
        except DatabaseError as exc:
            last = exc
            continue
        return dataclasses.replace(facts, name=parse_dsn(dsn).get("dbname", ""), contents=TargetContents())
    assert last is not None
    raise last


def _maintenance_dsns(dsn: str) -> list[str]:
    return [dsn_with(dsn, dbname=name) for name in ("postgres", "template1")]


def _first_connection(candidates: Sequence[str], *, application_name: str) -> tuple[psycopg.Connection[Any], str]:
    """A connection to the first of ``candidates`` that accepts one, and that candidate."""
    last: DatabaseError | None = None
    for candidate in candidates:
        try:
            return open_connection(candidate, application_name=application_name), candidate
        except DatabaseError as exc:
            last = exc
    assert last is not None
    raise last


@contextlib.contextmanager
def _maintenance_connection(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection to the same server's ``postgres`` (or ``template1``) database."""
    conn, candidate = _first_connection(_maintenance_dsns(dsn), application_name="archiver restore")
    try:
        with conn:
            yield conn
    except psycopg.Error as exc:
        raise DatabaseError(f"database error on {redact_dsn(candidate)}: {_scrub(str(exc), dsn).strip()}") from None


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
            return _scrub(str(exc), dsn).strip().splitlines()[0]
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
                conn.execute(statement)  # type: ignore[arg-type]
            except psycopg.Error as exc:
                conn.execute("ROLLBACK TO SAVEPOINT archiver_step")
                failed.append((statement, _scrub(str(exc), dsn).strip().splitlines()[0]))
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
            conn.execute(statement)  # type: ignore[arg-type]
        conn.commit()


def drop_roles(dsn: str, roles: Sequence[str]) -> None:
    """DROP ROLE, through the DSN's database or, once that is gone, the server's maintenance database."""
    conn, candidate = _first_connection([dsn, *_maintenance_dsns(dsn)], application_name="archiver restore (undo)")
    try:
        with conn:
            for role in reversed(list(roles)):
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
    except psycopg.Error as exc:
        raise DatabaseError(f"database error on {redact_dsn(candidate)}: {_scrub(str(exc), dsn).strip()}") from None


_EXTENSION_SCHEMA_SQL = ("SELECT n.nspname FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n "
                         "ON n.oid = e.extnamespace WHERE e.extname = %s")


def _extension_function(conn: psycopg.Connection[Any], extension: str, function: str) -> sql.Composable:
    """``schema.function`` of an extension's function, the schema read from pg_extension (the search_path
    holds pg_catalog only, and an unqualified name could reach a planted function)."""
    row = conn.execute(_EXTENSION_SCHEMA_SQL, (extension,)).fetchone()
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
        connection = _adbc_connect(dsn, f"archiver {what}"[:63], autocommit=True)
    except adbc_driver_manager.Error as exc:
        raise _adbc_error(exc, dsn) from None
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
        raise _adbc_error(exc, dsn, what) from None
    finally:
        try:
            connection.close()
        except adbc_driver_manager.Error:
            pass


def range_condition(alias: str, column: str, low_sql: str | None, high_sql: str | None) -> str:
    """``alias.column`` within [low, high) (already rendered SQL bounds; None: unbounded)."""
    return _range_condition(alias, column, low_sql, high_sql)


# -- restore-archive targets ------------------------------------------------------------------------

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


def unknown_types(current: Session, types: Sequence[str]) -> set[str]:
    """The type names of ``types`` this database does not know (a domain or enum of another database)."""
    return {name for name in set(types) if current.scalar("SELECT to_regtype(%s)", (name,)) is None}


def create_range_partition_sql(parent_schema: str, parent: str, schema: str, name: str,
                               low_sql: str | None, high_sql: str | None) -> str:
    """A partition for a range whose partition was dropped (bounds from the archive manifest)."""
    return (f"CREATE TABLE {qualified(schema, name)} PARTITION OF {qualified(parent_schema, parent)} "
            f"FOR VALUES FROM ({low_sql or 'MINVALUE'}) TO ({high_sql or 'MAXVALUE'})")
