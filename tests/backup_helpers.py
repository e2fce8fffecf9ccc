"""Shared pieces of the backup tests: policies on disk, restoring a backup with the real pg_restore."""

from __future__ import annotations

import hashlib
import io
import subprocess
import uuid
from pathlib import Path
from typing import Any

import yaml

from archiver.backup.manifest import backup_manifest_key
from archiver.pg.connect import connect
from archiver.pg.dsn import dsn_env
from archiver.pg.scratch import LocalPostgres
from archiver.pg.stats import PINNED_SETTINGS
from archiver.pg.target import content_stats
from archiver.policy.files import get_policy
from archiver.policy.schema import Policy
from archiver.storage.base import Store
from archiver.storage.compress import open_decompressed
from archiver.storage.documents import read_json


def write_policy(directory: Path, name: str, dsn: str, storage_url: str, *, endpoint_url: str | None = None,
                 backup: dict[str, Any] | None = None, database: dict[str, Any] | None = None) -> Path:
    storage: dict[str, Any] = {"url": storage_url}
    if endpoint_url:
        storage.update(endpoint_url=endpoint_url, region="us-east-1")
    document = {
        "database": {"dsn": dsn, **(database or {})},
        "storage": storage,
        "backup": {"schedule": "0 2 * * *", **(backup or {})},
    }
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def load_policy(path: Path) -> Policy:
    return get_policy([path], path.stem)


def read_manifest(store: Store, backup_id: str) -> dict[str, Any]:
    return read_json(store, backup_manifest_key(backup_id))


def fetch_object(store: Store, entry: dict[str, Any]) -> bytes:
    """An object's original bytes, after checking its stored size and SHA-256 against the manifest."""
    with store.open(entry["key"]) as stream:
        stored = stream.read()
    assert len(stored) == entry["size"]
    assert hashlib.sha256(stored).hexdigest() == entry["sha256"]
    data = open_decompressed(io.BytesIO(stored), entry["codec"]).read()
    assert len(data) == entry["uncompressed_size"]
    return data


def pg_restore(instance: LocalPostgres, dbname: str, dump: bytes, *extra: str) -> subprocess.CompletedProcess[str]:
    """Plain pg_restore, reading the dump from stdin; the connection from PG* variables."""
    env = {"PATH": "/usr/bin:/bin", **dsn_env(instance.dsn(dbname))}
    argv = [str(instance.bindir / "pg_restore"), "--no-password", "--exit-on-error", f"--dbname={dbname}", *extra]
    result = subprocess.run(argv, input=dump, capture_output=True, env=env)
    assert result.returncode == 0, result.stderr.decode()
    return subprocess.CompletedProcess(argv, 0, result.stdout.decode(), result.stderr.decode())


def psql_file(instance: LocalPostgres, dbname: str, script: bytes) -> str:
    """Run a SQL script with psql (errors reported, not fatal: globals re-create existing roles)."""
    env = {"PATH": "/usr/bin:/bin", **dsn_env(instance.dsn(dbname))}
    result = subprocess.run([str(instance.bindir / "psql"), "-X", "-q", "-f", "-"], input=script,
                            capture_output=True, env=env)
    assert result.returncode == 0, result.stderr.decode()
    return result.stderr.decode()


def new_database(instance: LocalPostgres) -> tuple[str, str]:
    name = f"r_{uuid.uuid4().hex[:12]}"
    return name, instance.create_database(name)


def restore_backup(instance: LocalPostgres, store: Store, backup_id: str) -> str:
    """Restore a (non-TimescaleDB) backup into a new database of ``instance``; its DSN."""
    document = read_manifest(store, backup_id)
    name, dsn = new_database(instance)
    pg_restore(instance, name, fetch_object(store, document["objects"]["dump"]))
    return dsn


def manifest_stats(document: dict[str, Any]) -> dict[str, tuple[int, str | None]]:
    return {f"{t['schema']}.{t['name']}": (t["rows"], t.get("checksum")) for t in document["content"]["tables"]}


def live_stats(dsn: str) -> dict[str, tuple[int, str | None]]:
    stats = content_stats(dsn)
    return {s.table.qualified_name: (s.rows, s.checksum) for s in stats.tables}


def table_digest(dsn: str, table: str, order_by: str) -> tuple[int, str]:
    """Row count and an ordered digest of a table's text, computed independently of archiver's checksum."""
    with connect(dsn, safe_search_path=False) as conn:  # the test's own SQL, as psql would run it
        for name, value in PINNED_SETTINGS.items():
            conn.execute("SELECT set_config(%s, %s, false)", (name, value))
        row = conn.execute(f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY {order_by}), '')) "
                           f"FROM {table} AS t").fetchone()
    assert row is not None
    return int(row[0]), str(row[1])
