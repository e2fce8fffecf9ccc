"""pg_dump / pg_dumpall / pg_restore / pg_amcheck: argv builders, name patterns, expected warnings.

Programs run as argv lists, never through a shell. Their connection comes from ``PG*``
environment variables (:func:`archiver.pg.dsn.dsn_env`), so no password appears in an argv that
``ps`` can show. Running them is :mod:`archiver.common.process`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from ..pg.dsn import dsn_with
from ..policy.schema import PgDumpConfig

# -- argv ---------------------------------------------------------------------------------------

def lock_wait_timeout_ms(value: timedelta) -> int:
    return max(1, int(value.total_seconds() * 1000))


def pg_dump_argv(pg_dump: Path, options: PgDumpConfig, snapshot: str | None) -> list[str]:
    """pg_dump in custom format, uncompressed (compression happens in archiver), to stdout.

    The database comes from ``PGDATABASE``; ``--no-password`` makes a missing password an
    error instead of a prompt that would hang a cron job.
    """
    argv = [str(pg_dump), "--format=custom", "--compress=0", "--no-password"]
    if snapshot:
        argv.append(f"--snapshot={snapshot}")
    if options.lock_wait_timeout is not None:
        argv.append(f"--lock-wait-timeout={lock_wait_timeout_ms(options.lock_wait_timeout)}")
    argv += [f"--exclude-schema={pattern}" for pattern in options.exclude_schemas]
    argv += [f"--exclude-table={pattern}" for pattern in options.exclude_tables]
    argv += [f"--exclude-table-data={pattern}" for pattern in options.exclude_table_data]
    argv += list(options.extra_args)
    return argv


def pg_dumpall_globals_argv(pg_dumpall: Path, *, database: str | None, include_role_passwords: bool) -> list[str]:
    """Roles, memberships, role settings and tablespaces of the whole cluster (``--globals-only``).

    ``-l`` names the database to read them from (a name, never a connection string), so a
    cluster without a ``postgres`` database works too.
    """
    argv = [str(pg_dumpall), "--globals-only", "--no-password"]
    if not include_role_passwords:
        argv.append("--no-role-passwords")
    if database:
        argv.append(f"--database={database}")
    return argv


def pg_restore_argv(pg_restore: Path, *, dbname: str, single_transaction: bool = True, clean: bool = False,
                    jobs: int = 1, no_tablespaces: bool = False, archive: Path | None = None) -> list[str]:
    """pg_restore into ``dbname`` (a name; host, user and password come from ``PG*`` variables).

    ``--exit-on-error``: the first error ends the restore (with ``--single-transaction`` it also
    rolls everything back). ``--verbose`` names each step on stderr, which the progress display
    counts and the error message shows the last of. Without ``archive`` the dump is read from stdin.
    """
    argv = [str(pg_restore), "--no-password", "--exit-on-error", "--verbose", f"--dbname={dsn_with('', dbname=dbname)}"]
    if single_transaction:
        argv.append("--single-transaction")
    if jobs > 1:
        argv.append(f"--jobs={jobs}")
    if clean:
        argv += ["--clean", "--if-exists"]
    if no_tablespaces:
        argv.append("--no-tablespaces")
    if archive is not None:
        argv.append(str(archive))
    return argv


def pg_amcheck_argv(pg_amcheck: Path) -> list[str]:
    """pg_amcheck of the database named by ``PGDATABASE``: every table's heap and every B-tree index.

    ``--install-missing`` creates the amcheck extension where it is missing (a scratch database).
    """
    return [str(pg_amcheck), "--no-password", "--install-missing"]


def child_env(connection_env: Mapping[str, str], application_name: str) -> dict[str, str]:
    """The environment of a client program: ours plus the connection, named in pg_stat_activity."""
    env = {**os.environ, **connection_env}
    if "PGAPPNAME" not in connection_env:
        env["PGAPPNAME"] = application_name
    return env


# -- psql-style name patterns (pg_dump -n/-N/-t/-T) ------------------------------------------------

@dataclass(frozen=True)
class NamePattern:
    """A pg_dump pattern as anchored POSIX regexes for the server's ``~`` operator."""

    text: str
    schema: str | None  # None: the pattern had no schema part
    name: str


_REGEX_SPECIALS = set("|*+?()[]{}.^$\\")


def parse_name_pattern(pattern: str) -> NamePattern:
    """Translate a psql/pg_dump name pattern (``public.metric*``, ``"MixedCase"``) to regexes.

    The rules of psql's ``\\d`` (which pg_dump follows): outside double quotes letters fold to
    lower case, ``*`` is any run of characters, ``?`` any one character, ``.`` separates schema
    and name, ``$`` is literal and other regex syntax (``[0-9]``) keeps its meaning; inside
    double quotes everything is literal and ``""`` is one quote.
    """
    parts: list[list[str]] = [[]]
    quoted = False
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == '"':
            if quoted and pattern[index + 1:index + 2] == '"':
                parts[-1].append('"')
                index += 1
            else:
                quoted = not quoted
        elif quoted:
            parts[-1].append("\\" + char if char in _REGEX_SPECIALS else char)
        elif char == ".":
            parts.append([])
        elif char == "*":
            parts[-1].append(".*")
        elif char == "?":
            parts[-1].append(".")
        elif char == "$":
            parts[-1].append("\\$")
        else:
            parts[-1].append(char.lower())
        index += 1
    if len(parts) > 2:
        parts = parts[-2:]  # database.schema.table: the database part must be the current one
    regexes = ["^(" + "".join(part) + ")$" for part in parts]
    if len(regexes) == 1:
        return NamePattern(pattern, None, regexes[0])
    return NamePattern(pattern, regexes[0], regexes[1])


def schema_pattern(pattern: str) -> str:
    """A ``-n``/``-N`` pattern names schemas only: its last part is the schema name."""
    return parse_name_pattern(pattern).name


# -- pg_dump's warnings -----------------------------------------------------------------------------

_CIRCULAR_FK = re.compile(r"warning: there are circular foreign-key constraints")


def is_expected_warning(warning: str, extensions: Mapping[str, str]) -> bool:
    """TimescaleDB's catalogs have circular foreign keys; pg_dump warns about them on every dump.

    They are harmless for a full dump (the warning is about --data-only restores).
    """
    return "timescaledb" in extensions and bool(_CIRCULAR_FK.search(warning))
