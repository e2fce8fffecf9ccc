"""``archiver backups show NAME ID --commands`` for a base backup: unpacking it with standard tools only.

The base backup's tar is fetched and checked against the manifest (the SHA-256 of what is stored),
streamed through ``age -d`` (when encrypted), the decompressor and ``tar -x`` into ``$PGDATA``, and
proven by ``pg_verifybackup`` against the server's own ``backup_manifest``. The WAL it needs is
described (keys, and the pipeline for one file): recovery then runs as the README's "Restoring by
hand" says.
"""

from __future__ import annotations

import shlex
from typing import Any

from ..backup.handbook import decode_pipeline, fetch_command


def base_restore_commands(manifest: dict[str, Any], urls: dict[str, str], wal_url: str, *,
                          identity: str = "key.txt", endpoint_url: str | None = None) -> list[str]:
    """Shell lines (comments start with ``#``) that unpack ``manifest``'s base backup into ``$PGDATA``."""
    objects = manifest.get("objects") or {}
    base, server_manifest = objects["base"], objects["backup_manifest"]
    tar = urls["base"].rsplit("/", 1)[-1]
    lines = [f"# base backup {manifest.get('id')} (PostgreSQL {(manifest.get('server') or {}).get('version')}, "
             f"timeline {manifest.get('timeline')}, {manifest.get('start_lsn')} .. {manifest.get('stop_lsn')}); "
             "run as the server's user with PGDATA set to a new directory",
             "# 1. fetch the objects and check each against the manifest (the SHA-256 of what is stored)",
             fetch_command(urls["base"], tar, endpoint_url),
             f"echo {shlex.quote(str(base['sha256']) + '  ' + tar)} | sha256sum -c -",
             fetch_command(urls["backup_manifest"], "backup_manifest", endpoint_url),
             f"echo {shlex.quote(str(server_manifest['sha256']) + '  backup_manifest')} | sha256sum -c -"]
    if base.get("encryption"):
        recipients = ", ".join(base["encryption"].get("recipients") or [])
        lines.append(f"# encrypted with age to {recipients}: {identity} is an identity (private key) of one of them")
    lines += ["# 2. unpack into $PGDATA and prove it with the server's own manifest",
              'mkdir -m 700 "$PGDATA"',
              f'{decode_pipeline(base, tar, identity)} | tar -x -C "$PGDATA"',
              'mkdir -p -m 700 "$PGDATA/pg_wal"',
              'pg_verifybackup -n -m backup_manifest "$PGDATA"',
              f"# 3. WAL from {manifest.get('start_wal')} on, under {wal_url}: each file is stored as "
              "<timeline>/<walfile>.<completed>.<sha256 of the plain file>.zst (.age appended when encrypted; "
              ".history and .backup files are never encrypted)",
              f"#    one file for restore_command: {_wal_pipeline(base, identity)} > %p "
              "(exit 1 when the archive has no such file)",
              "# 4. touch \"$PGDATA/recovery.signal\", set restore_command and recovery_target_time in "
              "\"$PGDATA/postgresql.auto.conf\", start the server (README: Restoring by hand)"]
    return lines


def _wal_pipeline(base: dict[str, Any], identity: str) -> str:
    if base.get("encryption"):
        return f"age -d -i {shlex.quote(identity)} KEY | zstd -d"
    return "zstd -d < KEY"
