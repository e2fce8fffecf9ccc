"""Shared pieces of the restore and drill tests: damaging stored backups, looking at targets."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import yaml

from archiver.backup.manifest import backup_manifest_key
from archiver.backup.task import run_backup
from archiver.pg.connect import query
from archiver.pg.scratch import LocalPostgres
from archiver.storage.base import Store
from archiver.storage.documents import write_json
from tests.backup_helpers import backup_policy, load_policy, read_manifest
from tests.helpers import CliResult, run_cli

CORRUPTIONS = ["flipped byte", "truncated", "missing", "wrong object"]


def rewrite_manifest(store: Store, backup_id: str, change: Any) -> dict[str, Any]:
    """Apply ``change(document)`` to a backup's manifest and store it again."""
    document = read_manifest(store, backup_id)
    change(document)
    write_json(store, backup_manifest_key(backup_id), document)
    return document


def damage(store: Store, backup_id: str, how: str, *, other_backup: str | None = None,
           needle: bytes | None = None) -> str:
    """Damage the dump object of ``backup_id`` the way a real store can; returns a regex the error must match.

    ``flipped byte``: one byte changed in place, the size unchanged (with ``needle``, inside that
    text, so that pg_restore would load the altered row without complaint); ``truncated``: the
    last 100 bytes gone; ``missing``: the object deleted; ``wrong object``: the manifest points at
    ``other_backup``'s dump, with that object's size, so that only the checksum tells them apart.
    """
    entry = read_manifest(store, backup_id)["objects"]["dump"]
    key = entry["key"]
    if how == "flipped byte":
        data = bytearray(store.get_bytes(key))
        at = data.find(needle) + len(needle) // 2 if needle else len(data) // 2
        assert at >= len(needle or b"") // 2, "the needle is not in the stored object"
        data[at] ^= 0x01
        store.put_bytes(key, bytes(data))
        return "SHA-256" if needle else "SHA-256|cannot be decompressed"
    if how == "truncated":
        store.put_bytes(key, store.get_bytes(key)[:-100])
        return "truncated or replaced"
    if how == "missing":
        store.delete(key)
        return "is missing"
    assert how == "wrong object" and other_backup is not None
    other = read_manifest(store, other_backup)["objects"]["dump"]

    def point_elsewhere(document: dict[str, Any]) -> None:
        document["objects"]["dump"].update(key=other["key"], size=other["size"])
    rewrite_manifest(store, backup_id, point_elsewhere)
    return "SHA-256"


def database_exists(instance: LocalPostgres, name: str) -> bool:
    return bool(query(instance.dsn(), "SELECT 1 FROM pg_database WHERE datname = %s", (name,)))


def role_exists(instance: LocalPostgres, role: str) -> bool:
    return bool(query(instance.dsn(), "SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)))


def user_tables(dsn: str) -> list[str]:
    return [f"{schema}.{name}" for schema, name in query(
        dsn, "SELECT schemaname, tablename FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema') "
             "AND schemaname NOT LIKE '\\_timescaledb%' ORDER BY 1, 2")]


def add_verify_section(policy_path: Path, **verify: Any) -> Path:
    document = yaml.safe_load(policy_path.read_text())
    document["verify"] = {"schedule": "0 5 * * 1", **verify}
    policy_path.write_text(yaml.safe_dump(document, sort_keys=False))
    return policy_path


def fresh_name() -> str:
    return f"restored_{uuid.uuid4().hex[:10]}"


def restore(policy_path: Path, target: str, *args: str, env: dict[str, str] | None = None) -> CliResult:
    return run_cli("--policies", str(policy_path.parent), "restore", "app", "--target", target, *args, env=env)


def backed_up(tmp_path: Path, source: str, store: Store, s3: str | None, **backup: Any) -> tuple[Path, str]:
    path = backup_policy(tmp_path, source, store, s3, **backup)
    return path, str(run_backup(load_policy(path), store=store).data["id"])
