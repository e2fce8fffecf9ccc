"""Base backups in the store: keys under ``pitr/base/``, and reading every one in one listing.

    pitr/base/<id>/base.tar.zst        the data directory (pg_basebackup -Ft -X none), compressed
    pitr/base/<id>/backup_manifest     the server's manifest (pg_verifybackup reads it), as written
    pitr/base/<id>/manifest.json       ours, written last: objects with SHA-256 and sizes, LSNs, times
    pitr/base/<id>/verification.json   the newest point-in-time drill from this base backup

As for logical backups, only a manifest makes a base backup; objects without one are orphans.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..backup.manifest import id_time
from ..common.timeutil import parse_timestamp
from ..errors import UsageError
from ..policy.schema import PitrConfig, Policy
from ..storage.base import ObjectInfo, Store
from ..storage.documents import ManifestError, read_json
from .walnames import DEFAULT_SEGMENT_SIZE, parse_lsn, segno_of

BASE_PREFIX = "pitr/base/"
MANIFEST = "manifest.json"
VERIFICATION = "verification.json"
SERVER_MANIFEST = "backup_manifest"


def pitr_config(policy: Policy) -> PitrConfig:
    if policy.pitr is None:
        raise UsageError(f"policy {policy.name!r} has no pitr section ({policy.source})",
                         hint="add pitr: {wal: {method: ...}, base_backup: {schedule: ...}} to the policy")
    return policy.pitr


def base_prefix(backup_id: str) -> str:
    return f"{BASE_PREFIX}{backup_id}/"


def base_manifest_key(backup_id: str) -> str:
    return f"{base_prefix(backup_id)}{MANIFEST}"


def base_verification_key(backup_id: str) -> str:
    return f"{base_prefix(backup_id)}{VERIFICATION}"


def base_tar_key(backup_id: str, suffix: str) -> str:
    return f"{base_prefix(backup_id)}base.tar{suffix}"


def server_manifest_key(backup_id: str) -> str:
    return f"{base_prefix(backup_id)}{SERVER_MANIFEST}"


def base_id_of(key: str) -> str | None:
    if not key.startswith(BASE_PREFIX):
        return None
    rest = key[len(BASE_PREFIX):]
    return rest.split("/", 1)[0] if "/" in rest else None


@dataclass(frozen=True)
class BaseBackup:
    """A base backup: its manifest and, when one ran, the newest drill's verdict."""

    id: str
    manifest: dict[str, Any]
    verification: dict[str, Any] | None = None
    stored: tuple[ObjectInfo, ...] = ()

    @property
    def timeline(self) -> int:
        return int(self.manifest["timeline"])

    @property
    def start_lsn(self) -> int:
        return parse_lsn(str(self.manifest["start_lsn"]))

    @property
    def stop_lsn(self) -> int:
        return parse_lsn(str(self.manifest["stop_lsn"]))

    @property
    def segment_size(self) -> int:
        return int(self.manifest.get("server", {}).get("wal_segment_size") or DEFAULT_SEGMENT_SIZE)

    @property
    def start_segno(self) -> int:
        return segno_of(self.start_lsn, self.segment_size)

    @property
    def stop_segno(self) -> int:
        return segno_of(self.stop_lsn, self.segment_size)

    @property
    def started(self) -> datetime:
        return parse_timestamp(str(self.manifest["started_at"]))

    @property
    def stop_time(self) -> datetime:
        """When the backup ended, on the server's clock: the earliest point it can be recovered to."""
        return parse_timestamp(str(self.manifest["stop_time"]))

    @property
    def time(self) -> datetime:
        return self.stop_time

    @property
    def size(self) -> int:
        return sum(int(obj.get("size", 0)) for obj in self.manifest.get("objects", {}).values())

    @property
    def object_keys(self) -> list[str]:
        return [str(obj["key"]) for obj in self.manifest.get("objects", {}).values() if obj.get("key")]

    @property
    def verification_result(self) -> str | None:
        """The newest drill's verdict ("passed" or "failed"), None when none ran."""
        result = self.verification.get("result") if self.verification else None
        return str(result) if result in ("passed", "failed") else None

    @property
    def verified(self) -> str:
        if not self.verification:
            return "no"
        return {"passed": "yes", "failed": "failed"}.get(str(self.verification.get("result")), "no")


@dataclass(frozen=True)
class BaseScan:
    backups: list[BaseBackup]  # newest first
    orphans: list[ObjectInfo]  # objects under pitr/base/ that belong to no manifest


def scan_base_backups(store: Store) -> BaseScan:
    """Every base backup manifest in one listing; an unreadable manifest raises (no partial picture)."""
    by_id: dict[str, list[ObjectInfo]] = {}
    orphans: list[ObjectInfo] = []
    for info in store.list(BASE_PREFIX):
        backup_id = base_id_of(info.key)
        if backup_id is None or id_time(backup_id) is None:
            orphans.append(info)
        else:
            by_id.setdefault(backup_id, []).append(info)
    backups: list[BaseBackup] = []
    for backup_id, objects in by_id.items():
        keys = {info.key for info in objects}
        if base_manifest_key(backup_id) not in keys:
            orphans.extend(objects)
            continue
        document = read_json(store, base_manifest_key(backup_id))
        if document.get("id") != backup_id or document.get("kind") != "base_backup":
            raise ManifestError(f"manifest {store.describe(base_manifest_key(backup_id))} is not the manifest of base "
                                f"backup {backup_id}")
        verification_key = base_verification_key(backup_id)
        verification = read_json(store, verification_key) if verification_key in keys else None
        entry = BaseBackup(backup_id, document, verification, tuple(objects))
        referenced = set(entry.object_keys) | {base_manifest_key(backup_id), verification_key}
        orphans.extend(info for info in objects if info.key not in referenced)
        backups.append(entry)
    backups.sort(key=lambda entry: (entry.stop_time, entry.id), reverse=True)
    return BaseScan(backups, sorted(orphans, key=lambda info: info.key))
