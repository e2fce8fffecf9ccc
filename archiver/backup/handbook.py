"""``archiver backups show NAME ID --commands``: restoring a backup with standard tools only.

A backup must be restorable at 3 a.m. without archiver: this prints the exact shell commands for one
backup, with its object keys and checksums. Fetch each object and check its SHA-256 against the
manifest (what is stored: encrypted, if it is), then stream it through ``age -d`` (when encrypted),
the decompressor, and psql (the roles) or pg_restore (the database). The same pipelines are in the
README's "Restoring by hand".
"""

from __future__ import annotations

import shlex
from pathlib import PurePosixPath
from typing import Any

DECOMPRESS = {"zstd": "zstd -d", "gzip": "gzip -d", "none": ""}


def fetch_command(url: str, name: str, endpoint_url: str | None) -> str:
    """Copy a stored object (``s3://`` or ``file://`` URL) to the file ``name`` in the current directory."""
    if url.startswith("file://"):
        return f"cp {shlex.quote(url.removeprefix('file://'))} {shlex.quote(name)}"
    endpoint = f" --endpoint-url {shlex.quote(endpoint_url)}" if endpoint_url else ""
    return f"aws s3 cp{endpoint} {shlex.quote(url)} {shlex.quote(name)}"


def decode_pipeline(entry: dict[str, Any], name: str, identity: str) -> str:
    """The command that writes an object's original bytes to stdout: age -d | decompress."""
    steps: list[str] = []
    if entry.get("encryption"):
        steps.append(f"age -d -i {shlex.quote(identity)} {shlex.quote(name)}")
    decompress = DECOMPRESS.get(str(entry.get("codec", "none")), "")
    if steps:
        if decompress:
            steps.append(decompress)
    else:
        steps.append(f"{decompress} < {shlex.quote(name)}" if decompress else f"cat {shlex.quote(name)}")
    return " | ".join(steps)


def restore_commands(manifest: dict[str, Any], urls: dict[str, str], *, identity: str = "key.txt",
                     endpoint_url: str | None = None, database: str | None = None) -> list[str]:
    """Shell lines (comments start with ``#``) that restore ``manifest``'s backup into the server that the
    PG* environment variables point at, as a new database ``database`` (default: the source's name)."""
    objects = manifest.get("objects") or {}
    dbname = shlex.quote(database or str((manifest.get("database") or {}).get("name") or "restored"))
    names = {role: PurePosixPath(str(entry["key"])).name for role, entry in objects.items()}
    lines = [f"# backup {manifest.get('id')} of database {(manifest.get('database') or {}).get('name')!r} "
             f"(PostgreSQL {(manifest.get('database') or {}).get('server_version')}); the target server comes from "
             "PGHOST, PGPORT, PGUSER (a superuser) and PGPASSWORD or ~/.pgpass",
             "# 1. fetch the objects and check each against the manifest (the SHA-256 of what is stored)"]
    for role in ("dump", "globals"):
        if role in objects:
            lines.append(fetch_command(urls[role], names[role], endpoint_url))
            lines.append(f"echo {shlex.quote(str(objects[role]['sha256']) + '  ' + names[role])} | sha256sum -c -")
    if any(entry.get("encryption") for entry in objects.values()):
        recipients = ", ".join(objects["dump"].get("encryption", {}).get("recipients") or [])
        lines.append(f"# encrypted with age to {recipients}: {identity} is an identity (private key) of one of them")
    if "globals" in objects:
        lines += ["# 2. roles, memberships and tablespaces (cluster-wide: errors for roles that exist already are fine)",
                  f"{decode_pipeline(objects['globals'], names['globals'], identity)} | psql -X -q -d postgres"]
    lines += ["# 3. the database", f"createdb -T template0 {dbname}"]
    restore = "pg_restore --exit-on-error --no-password"
    if version := manifest.get("timescaledb_version"):
        create = shlex.quote(f"CREATE EXTENSION IF NOT EXISTS timescaledb VERSION '{version}'")  # the dump's own
        lines += [f"psql -X -v ON_ERROR_STOP=1 -d {dbname} -c {create} -c 'SELECT timescaledb_pre_restore()'",
                  f"{decode_pipeline(objects['dump'], names['dump'], identity)} | {restore} -d {dbname}",
                  f"psql -X -v ON_ERROR_STOP=1 -d {dbname} -c 'SELECT timescaledb_post_restore()'"]
    else:
        lines.append(f"{decode_pipeline(objects['dump'], names['dump'], identity)} | {restore} --single-transaction "
                     f"-d {dbname}")
    return lines
