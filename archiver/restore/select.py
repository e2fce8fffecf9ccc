"""Choosing the backup to restore (newest, by id, or before a time), and what it holds."""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..backup.manifest import (
    BACKUPS_PREFIX,
    BackupEntry,
    backup_manifest_key,
    check_backup_id,
    list_backups,
    verification_key,
)
from ..common.timeutil import isoformat, parse_timestamp
from ..errors import ObjectNotFound, UsageError
from ..pg.stats import CHECKSUM_METHODS
from ..storage.base import Store
from ..storage.documents import ManifestError, read_json

PROGRAM_MAJOR = re.compile(r"\(PostgreSQL\)\s+(\d+)")

LOCK_MARGIN = 100  # the restore's own catalog work (the database, extensions, roles)
BACKUPS_HINT = "choose another backup (archiver backups list {policy}) with --backup ID"


# -- choosing the backup ------------------------------------------------------------------------

def select_backup(store: Store, *, backup_id: str | None = None, before: datetime | None = None,
                  policy: str = "") -> BackupEntry:
    """The backup to restore: ``backup_id``, else the newest taken before ``before``, else the newest."""
    if backup_id is not None:
        check_backup_id(backup_id)
        try:
            document = read_json(store, backup_manifest_key(backup_id))
        except ObjectNotFound:
            newest = [entry.id for entry in list_backups(store)[:5]]
            raise UsageError(f"no backup {backup_id!r} in {store.describe(BACKUPS_PREFIX)}",
                             hint=f"newest backups: {', '.join(newest)}" if newest else "the store holds no backups"
                             ) from None
        verification = None
        with contextlib.suppress(ObjectNotFound):
            verification = read_json(store, verification_key(backup_id))
        return BackupEntry(backup_id, document, verification)
    backups = list_backups(store)
    if not backups:
        raise UsageError(f"no backups in {store.describe(BACKUPS_PREFIX)}",
                         hint="check storage.url of the policy; only backups with a manifest count")
    if before is None:
        return backups[0]
    earlier = [entry for entry in backups if entry.time < before]
    if not earlier:
        raise UsageError(f"no backup taken before {isoformat(before)}; the oldest is {backups[-1].id} "
                         f"({isoformat(backups[-1].time)})")
    return earlier[0]


def parse_before(text: str) -> datetime:
    try:
        return parse_timestamp(text)
    except ValueError:
        raise UsageError(f"--before: {text!r} is not a timestamp (allowed: ISO 8601, e.g. 2026-11-23T02:00:00Z "
                         "or 2026-11-23)") from None


# -- what the backup holds -----------------------------------------------------------------------

@dataclass(frozen=True)
class Source:
    entry: BackupEntry

    @property
    def document(self) -> dict[str, Any]:
        return self.entry.manifest

    @property
    def dump(self) -> dict[str, Any]:
        objects = self.document.get("objects", {})
        if "dump" not in objects:
            raise ManifestError(f"manifest of backup {self.entry.id} lists no dump object")
        return dict(objects["dump"])

    @property
    def globals(self) -> dict[str, Any] | None:
        entry = self.document.get("objects", {}).get("globals")
        return dict(entry) if entry else None

    @property
    def database(self) -> dict[str, Any]:
        return dict(self.document.get("database", {}))

    @property
    def server_version_num(self) -> int:
        return int(self.database.get("server_version_num", 0))

    @property
    def major(self) -> int:
        return self.server_version_num // 10000

    @property
    def timescaledb(self) -> str | None:
        version = self.document.get("timescaledb_version")
        return str(version) if version else None

    @property
    def extensions(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in self.database.get("extensions", {}).items()}

    @property
    def extension_schemas(self) -> dict[str, str]:
        """Where each extension lived (manifests from before recorded none: public, TimescaleDB's default)."""
        return {str(k): str(v) for k, v in self.database.get("extension_schemas", {}).items()}

    @property
    def tables(self) -> list[dict[str, Any]]:
        return list(self.document.get("content", {}).get("tables", []))

    @property
    def rows(self) -> int:
        return sum(int(table.get("rows", 0)) for table in self.tables)

    @property
    def checksum_method(self) -> str | None:
        """The checksum method of the manifest's tables when this archiver can compute it, else None."""
        method = self.document.get("content", {}).get("method")
        return str(method) if method in CHECKSUM_METHODS else None

    @property
    def pg_dump_major(self) -> int | None:
        match = PROGRAM_MAJOR.search(str(self.document.get("tools", {}).get("pg_dump", {}).get("version", "")))
        return int(match.group(1)) if match else None

    @property
    def locks_needed(self) -> int:
        """About how many locks a restore in one transaction takes: one per relation it creates (the
        manifest records how many the source had; older manifests: three per table and chunk)."""
        recorded = self.database.get("relations")
        if recorded:
            return int(recorded) + LOCK_MARGIN
        chunks = sum(int(entry.get("chunks", 0)) for entry in self.document.get("content", {}).get("hypertables", []))
        return 3 * (len(self.tables) + chunks) + LOCK_MARGIN

    def describe(self) -> str:
        parts = [f"database {self.database.get('name', '?')} on PostgreSQL {self.database.get('server_version', '?')}"]
        if self.timescaledb:
            parts.append(f"TimescaleDB {self.timescaledb}")
        parts.append(f"{len(self.tables)} tables, {self.rows:,} rows")
        return ", ".join(parts)
