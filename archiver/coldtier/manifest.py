"""Archive manifests: one per archived range, kept under ``catalog/archive/`` outside the Parquet tree."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ObjectNotFound
from ..storage.base import Store
from ..storage.documents import ManifestError, read_json

ARCHIVE_PREFIX = "archive/"
ARCHIVE_CATALOG_PREFIX = "catalog/archive/"


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
