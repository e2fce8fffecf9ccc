"""The catalog on storage: JSON manifests, written last, read back by listing and restore.

Only manifests make things exist: a data object that no manifest references is not a backup or
an archive. This module holds what every kind of manifest shares: ids, canonical JSON, reading
with clear errors. Storage key layout (relative to the policy's storage URL):

    backups/<backup-id>/dump.pgdump.zst         the custom-format dump (codec in the manifest)
    backups/<backup-id>/globals.sql.zst         roles and grants (pg_dumpall --globals-only)
    backups/<backup-id>/manifest.json           written last
    backups/<backup-id>/verification.json       result of the newest restore drill
    archive/<database>/<schema>.<table>/year=YYYY/month=MM/day=DD/<chunk>_<start>_<end>.parquet
    catalog/archive/<database>/<schema>.<table>/...json   archive manifests, outside the Parquet
                                                           tree so that query engines reading the
                                                           archive/ prefix see only Parquet files
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .errors import ObjectNotFound, TaskFailed
from .storage import PutResult, Store
from .timeutil import utcnow

FORMAT_VERSION = 1
BACKUPS_PREFIX = "backups/"
ARCHIVE_PREFIX = "archive/"
ARCHIVE_CATALOG_PREFIX = "catalog/archive/"


class ManifestError(TaskFailed):
    """A manifest that cannot be read or does not make sense."""


def new_id(now: datetime | None = None) -> str:
    """Sortable, UTC-time-based id: ``20261123T020000Z-3f9a`` (the suffix separates same-second runs)."""
    moment = now or utcnow()
    return f"{moment:%Y%m%dT%H%M%SZ}-{secrets.token_hex(2)}"


def dumps(document: dict[str, Any]) -> bytes:
    """Canonical JSON: sorted keys, UTF-8, newline-terminated."""
    return (json.dumps(document, sort_keys=True, indent=2, ensure_ascii=False, default=str) + "\n").encode()


def write_json(store: Store, key: str, document: dict[str, Any], *, if_absent: bool = False) -> PutResult:
    return store.put_bytes(key, dumps(document), if_absent=if_absent, content_type="application/json")


def read_json(store: Store, key: str) -> dict[str, Any]:
    try:
        raw = store.get_bytes(key)
    except ObjectNotFound:
        raise
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"manifest {store.describe(key)} is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ManifestError(f"manifest {store.describe(key)} is not a JSON object")
    version = document.get("format_version")
    if version is not None and version > FORMAT_VERSION:
        raise ManifestError(f"manifest {store.describe(key)} has format_version {version}; this archiver reads up to "
                            f"{FORMAT_VERSION}", hint="upgrade archiver")
    return document


# --------------------------------------------------------------------------------------------
# Archive manifests (one per chunk/partition, overwritten by a newer version of the same chunk)

ARCHIVE_KIND = "archive"


def archive_catalog_prefix(database_part: str, table_part: str | None = None) -> str:
    """``catalog/archive/<database>/[<schema>.<table>/]`` (parts already made key-safe)."""
    return f"{ARCHIVE_CATALOG_PREFIX}{database_part}/" + (f"{table_part}/" if table_part else "")


@dataclass(frozen=True)
class LoadedManifest:
    key: str
    document: dict[str, Any] | None
    error: str | None = None

    @property
    def data_key(self) -> str | None:
        return ((self.document or {}).get("object") or {}).get("key")


def read_archive_manifest(store: Store, key: str) -> LoadedManifest | None:
    """The manifest at ``key``; None when absent; an unreadable one carries its error."""
    try:
        document = read_json(store, key)
    except ObjectNotFound:
        return None
    except ManifestError as exc:
        return LoadedManifest(key, None, str(exc))
    problem = _archive_manifest_problem(document)
    return LoadedManifest(key, None if problem else document, problem)


def list_archive_manifests(store: Store, prefix: str) -> dict[str, LoadedManifest]:
    """Every archive manifest under ``prefix`` by key (listing errors propagate: never guess)."""
    found: dict[str, LoadedManifest] = {}
    for info in store.list(prefix):
        if info.key.endswith(".json"):
            loaded = read_archive_manifest(store, info.key)
            if loaded is not None:
                found[info.key] = loaded
    return found


def _archive_manifest_problem(document: dict[str, Any]) -> str | None:
    if document.get("kind") != ARCHIVE_KIND:
        return f"not an archive manifest (kind {document.get('kind')!r})"
    for name in ("table", "chunk", "range", "rows", "fingerprint", "object", "version"):
        if name not in document:
            return f"archive manifest lacks {name!r}"
    if not isinstance(document["object"], dict) or not document["object"].get("key"):
        return "archive manifest names no object"
    return None
