"""Backup manifests: ids, keys under ``backups/``, and reading every backup in one listing.

Only a manifest makes a backup: data objects that no manifest references are orphans.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..common.timeutil import parse_timestamp, utcnow
from ..errors import UsageError
from ..storage.base import ObjectInfo, Store
from ..storage.documents import ManifestError, read_json

BACKUPS_PREFIX = "backups/"


def new_id(now: datetime | None = None) -> str:
    """Sortable, UTC-time-based id: ``20261123T020000Z-3f9a`` (the suffix separates same-second runs)."""
    moment = now or utcnow()
    return f"{moment:%Y%m%dT%H%M%SZ}-{secrets.token_hex(2)}"


# -- backups ----------------------------------------------------------------------------------

BACKUP_MANIFEST = "manifest.json"
VERIFICATION = "verification.json"
_BACKUP_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{4,}$")


def backup_prefix(backup_id: str) -> str:
    return f"{BACKUPS_PREFIX}{backup_id}/"


def backup_manifest_key(backup_id: str) -> str:
    return f"{backup_prefix(backup_id)}{BACKUP_MANIFEST}"


def verification_key(backup_id: str) -> str:
    return f"{backup_prefix(backup_id)}{VERIFICATION}"


def dump_key(backup_id: str, suffix: str) -> str:
    """``suffix`` is the codec's file suffix (``.zst``, ``.gz`` or empty)."""
    return f"{backup_prefix(backup_id)}dump.pgdump{suffix}"


def globals_key(backup_id: str, suffix: str) -> str:
    return f"{backup_prefix(backup_id)}globals.sql{suffix}"


BACKUP_ID_FORMAT = "YYYYMMDDTHHMMSSZ-xxxx"
_USER_BACKUP_ID = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{4,32}", re.ASCII)


def id_time(backup_id: str) -> datetime | None:
    """The UTC time encoded in a backup id, or None for a name that is not one."""
    if not _BACKUP_ID.match(backup_id):
        return None
    try:
        return datetime.strptime(backup_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:  # 20261399T...: the shape of an id, but no date
        return None


def check_backup_id(text: str, *, flag: str = "--backup") -> str:
    """A backup id typed by a user, checked before it becomes part of any storage key."""
    if not _USER_BACKUP_ID.fullmatch(text) or id_time(text) is None:
        shown = repr(text) if len(text) <= 60 else repr(text[:57] + "...")
        raise UsageError(f"{flag}: {shown} is not a backup id (format {BACKUP_ID_FORMAT}, e.g. 20261123T020000Z-3f9a)",
                         hint="archiver backups list NAME shows the ids")
    return text


def backup_id_of(key: str) -> str | None:
    """The backup id of a key under ``backups/``, or None."""
    if not key.startswith(BACKUPS_PREFIX):
        return None
    rest = key[len(BACKUPS_PREFIX):]
    return rest.split("/", 1)[0] if "/" in rest else None


@dataclass(frozen=True)
class BackupEntry:
    """A backup: its manifest, and the newest restore drill's verdict when there is one."""

    id: str
    manifest: dict[str, Any]
    verification: dict[str, Any] | None = None
    stored: tuple[ObjectInfo, ...] = ()  # every object found under backups/<id>/

    @property
    def time(self) -> datetime:
        """When the backup's snapshot was taken (its point in time)."""
        text = self.manifest.get("snapshot_time") or self.manifest.get("started_at")
        if text:
            return parse_timestamp(str(text))
        moment = id_time(self.id)
        assert moment is not None
        return moment

    @property
    def size(self) -> int:
        return sum(int(obj.get("size", 0)) for obj in self.manifest.get("objects", {}).values())

    @property
    def duration_seconds(self) -> float:
        return float(self.manifest.get("duration_seconds", 0.0))

    @property
    def verified(self) -> str:
        """``yes`` (the newest drill passed), ``failed``, or ``no`` (never checked)."""
        if not self.verification:
            return "no"
        return {"passed": "yes", "failed": "failed"}.get(str(self.verification.get("result")), "no")

    @property
    def object_keys(self) -> list[str]:
        return [str(obj["key"]) for obj in self.manifest.get("objects", {}).values() if obj.get("key")]


@dataclass(frozen=True)
class BackupScan:
    """Everything under ``backups/``: the backups (those with a manifest) and the rest."""

    backups: list[BackupEntry]  # newest first
    orphans: list[ObjectInfo]  # objects under backups/ that belong to no manifest


def scan_backups(store: Store) -> BackupScan:
    """Read every backup manifest (and verification) in one listing.

    Only a manifest makes a backup: data objects without one (a killed run's leftovers, or a
    run still in progress) are returned as orphans. An unreadable manifest raises: callers
    that delete must not act on a partial picture.
    """
    by_id: dict[str, list[ObjectInfo]] = {}
    loose: list[ObjectInfo] = []
    for info in store.list(BACKUPS_PREFIX):
        backup_id = backup_id_of(info.key)
        if backup_id is None:
            loose.append(info)
        else:
            by_id.setdefault(backup_id, []).append(info)
    backups: list[BackupEntry] = []
    orphans = list(loose)
    for backup_id, objects in by_id.items():
        keys = {info.key for info in objects}
        manifest_key = backup_manifest_key(backup_id)
        if manifest_key not in keys:
            orphans.extend(objects)
            continue
        document = read_json(store, manifest_key)
        if document.get("id") != backup_id:
            raise ManifestError(f"manifest {store.describe(manifest_key)} names backup {document.get('id')!r}, "
                                f"not {backup_id!r}")
        verification = read_json(store, verification_key(backup_id)) if verification_key(backup_id) in keys else None
        entry = BackupEntry(backup_id, document, verification, tuple(objects))
        referenced = set(entry.object_keys) | {manifest_key, verification_key(backup_id)}
        orphans.extend(info for info in objects if info.key not in referenced)
        backups.append(entry)
    backups.sort(key=lambda entry: (entry.time, entry.id), reverse=True)
    return BackupScan(backups, sorted(orphans, key=lambda info: info.key))


def list_backups(store: Store) -> list[BackupEntry]:
    """Backups newest first (only those with a manifest)."""
    return scan_backups(store).backups
