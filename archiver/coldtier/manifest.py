"""Archive manifests: one per archived range, kept under ``catalog/archive/`` outside the Parquet tree."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ObjectNotFound
from ..storage.base import Store
from ..storage.documents import ManifestError, read_json, write_json

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
    def data_keys(self) -> list[str]:
        return [str(entry["key"]) for entry in objects_of(self.document or {})]


def objects_of(document: dict[str, Any]) -> list[dict[str, Any]]:
    """The data objects of an archive manifest: ``objects`` (one per UTC day), or the one ``object``
    of a manifest written before archives were split by day. Entries without a key are left out."""
    listed = document.get("objects")
    if listed is None:
        listed = [document["object"]] if isinstance(document.get("object"), dict) else []
    return [entry for entry in listed if isinstance(entry, dict) and entry.get("key")]


def describe_objects(document: dict[str, Any]) -> str:
    """The objects of a manifest as a decision line names them."""
    keys = [str(entry["key"]) for entry in objects_of(document)]
    if len(keys) == 1:
        return keys[0]
    return f"{len(keys)} files, {keys[0]} ..." if keys else "no object"


def object_rows(document: dict[str, Any], entry: dict[str, Any]) -> int:
    """The rows an object holds: its own count, or the manifest's for a single-object manifest."""
    return int(entry["rows"]) if "rows" in entry else int(document["rows"])


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
    for name in ("table", "chunk", "range", "rows", "fingerprint", "version"):
        if name not in document:
            return f"archive manifest lacks {name!r}"
    listed = document.get("objects", [document.get("object")] if "object" in document else None)
    if not isinstance(listed, list) or not listed or len(objects_of(document)) != len(listed):
        return "archive manifest names no object" if not listed else "archive manifest lists an object without a key"
    rows = [entry.get("rows") for entry in listed]
    if "objects" in document and (not all(isinstance(count, int) for count in rows) or sum(rows) != document["rows"]):
        return f"archive manifest's objects hold {rows} rows, not its {document['rows']}"
    return None


def supersedes_json(replaces: list[LoadedManifest]) -> list[dict[str, Any]]:
    """What a new version replaces, as its manifest records it."""
    return [{"manifest": loaded.key, "objects": loaded.data_keys, "version": (loaded.document or {}).get("version"),
             "rows": (loaded.document or {}).get("rows")} for loaded in replaces]


def switch_version(store: Store, key: str, document: dict[str, Any], replaces: list[LoadedManifest],
                   keys: list[str]) -> None:
    """Write a new version's manifest (the switch: readers of manifests see the new objects from
    here on), then remove the manifests it replaces, then their objects. A run killed in between
    leaves superseded manifests and objects no manifest references: the next run removes them."""
    write_json(store, key, document)
    for loaded in replaces:
        if loaded.key != key:
            store.delete(loaded.key)
    for loaded in replaces:
        for old in loaded.data_keys:
            if old not in keys:
                store.delete(old)
