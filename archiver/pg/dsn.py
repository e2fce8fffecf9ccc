"""libpq connection strings: parsing, redaction, environment for external programs.

DSNs are parsed by libpq's own parser (``psycopg.conninfo``), so redaction is exact: a password
containing ``@`` or ``:`` is found as reliably as a plain one.
"""

from __future__ import annotations

import psycopg
from psycopg import conninfo as pg_conninfo

from ..common.log import REDACTED
from ..errors import UsageError

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


def scrub(message: str, dsn: str) -> str:
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
