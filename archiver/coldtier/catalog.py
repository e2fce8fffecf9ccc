"""The cold tier's catalog of one table, read in one listing: which archive is current for each
range, what a killed run left behind, and which ranges ``restore-archive`` brought back.

- Each range (an :class:`~archiver.coldtier.identity.Identity`) has at most one *current* manifest. A new
  version's manifest lists what it ``supersedes``; a run killed before it removed those leaves
  them behind as *stale*, and the next run deletes them. Two manifests of one range where neither
  supersedes the other are *duplicates* (written by archiver before ranges had identities, when a
  re-created chunk got a second archive): the next archive merges them.
- A data object under the table's ``archive/`` prefix that no manifest references is an *orphan*
  (a killed export's upload, or a superseded version whose deletion was interrupted).
- A *rehydration record* (``catalog/rehydrated/...``) says that rows of a range were loaded back
  from a given archive version, in which windows: the database then legitimately holds a subset
  of the archived rows, which archive must not export over the archive and retention may drop
  again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..common.timeutil import isoformat, utcnow
from ..errors import ObjectNotFound
from ..storage.base import Store
from ..storage.documents import FORMAT_VERSION, ManifestError, read_json, write_json
from . import identity as ident
from . import layout
from .chunks import TableInfo
from .identity import Identity, TimeValue
from .manifest import LoadedManifest, archive_catalog_prefix, list_archive_manifests, objects_of

REHYDRATED_PREFIX = "catalog/rehydrated/"


@dataclass
class Archived:
    """The archive of one range: its current manifest and what other manifests claim the range."""

    identity: Identity
    current: LoadedManifest
    stale: list[LoadedManifest] = field(default_factory=list)  # superseded by current; garbage
    duplicates: list[LoadedManifest] = field(default_factory=list)  # claim the range too; must be merged

    @property
    def document(self) -> dict[str, Any]:
        assert self.current.document is not None
        return self.current.document

    @property
    def version(self) -> int:
        return max(int((loaded.document or {}).get("version", 1)) for loaded in self.all_manifests)

    @property
    def all_manifests(self) -> list[LoadedManifest]:
        return [self.current, *self.duplicates, *self.stale]


@dataclass
class Rehydration:
    key: str
    document: dict[str, Any]

    @property
    def windows(self) -> list[tuple[TimeValue | None, TimeValue | None]]:
        return [(ident.parse_bound_json(low), ident.parse_bound_json(high))
                for low, high in self.document.get("windows", [])]

    def covers_whole_range(self, identity: Identity) -> bool:
        return any(ident.covers(window, identity) for window in self.windows)


@dataclass
class TableCatalog:
    database: str
    table: str
    archived: dict[str, Archived] = field(default_factory=dict)  # by identity stem
    unplaced: list[LoadedManifest] = field(default_factory=list)  # legacy manifests of a space slice no longer known
    unreadable: list[LoadedManifest] = field(default_factory=list)
    rehydrated: dict[str, Rehydration] = field(default_factory=dict)  # by identity stem

    def find(self, identity: Identity) -> Archived | None:
        return self.archived.get(identity.stem)

    def unreadable_for(self, identity: Identity) -> list[LoadedManifest]:
        """Unreadable manifests that may describe ``identity`` (same key, or a legacy key of its time range)."""
        tokens = _time_tokens(identity)
        found = []
        for loaded in self.unreadable:
            parts = loaded.key.rsplit("/", 1)[-1].removesuffix(".json").split("_")
            if len(parts) >= 2 and tokens in ((parts[0], parts[1]), (parts[-2], parts[-1])):
                found.append(loaded)  # a new-style stem starts with the range, a legacy one ends with it
        return found

    def unplaced_for(self, identity: Identity) -> list[LoadedManifest]:
        return [loaded for loaded in self.unplaced
                if ident.of_manifest(loaded.document or {}).time_range == identity.time_range]

    def referenced_objects(self) -> set[str]:
        keys = {key for archived in self.archived.values() for loaded in archived.all_manifests
                for key in loaded.data_keys}
        keys |= {key for loaded in self.unplaced for key in loaded.data_keys}
        return keys


def _time_tokens(identity: Identity) -> tuple[str, str]:
    return ident.range_token(identity.start, unbounded="min"), ident.range_token(identity.end, unbounded="max")


def catalog_prefix(database: str, table: str | None = None) -> str:
    return archive_catalog_prefix(ident.key_part(database), ident.key_part(table) if table else None)


def rehydration_prefix(database: str, table: str) -> str:
    return f"{REHYDRATED_PREFIX}{ident.key_part(database)}/{ident.key_part(table)}/"


def rehydration_key(database: str, target: Identity) -> str:
    return f"{rehydration_prefix(database, target.table)}{target.stem}.json"


def _supersedes(loaded: LoadedManifest) -> set[str]:
    """Keys of the manifests this one replaced, other than its own (a new version usually
    overwrites the previous version's manifest at the same key)."""
    return {str(entry.get("manifest")) for entry in (loaded.document or {}).get("supersedes", [])} - {loaded.key}


def superseded_keys(manifests: Iterable[LoadedManifest]) -> set[str]:
    """Manifests another manifest says it replaced: left by a run interrupted before it removed them."""
    return {key for loaded in manifests for key in _supersedes(loaded)}


def _group(identity: Identity, manifests: list[LoadedManifest]) -> Archived:
    """One range's manifests: the newest is current; those it supersedes are stale, the rest duplicates."""
    replaced = superseded_keys(manifests)  # one that another manifest of the range replaced is never current
    ordered = sorted(manifests, key=lambda loaded: (loaded.key not in replaced,
                                                    int((loaded.document or {}).get("version", 1)), loaded.key),
                     reverse=True)
    current, others = ordered[0], ordered[1:]
    superseded = _supersedes(current)
    return Archived(identity, current, stale=[m for m in others if m.key in superseded],
                    duplicates=[m for m in others if m.key not in superseded])


def load_table_catalog(store: Store, database: str, info: TableInfo) -> TableCatalog:
    """Every manifest and rehydration record of ``info``'s table (two listings; errors propagate)."""
    catalog = TableCatalog(database, info.display)
    claims: dict[str, tuple[Identity, list[LoadedManifest]]] = {}
    slices = info.chunk_slices()
    for loaded in list_archive_manifests(store, catalog_prefix(database, info.display)).values():
        if loaded.document is None:
            catalog.unreadable.append(loaded)
            continue
        found = ident.of_manifest(loaded.document, slices, info.space_partitioned)
        if found.space is None:
            catalog.unplaced.append(loaded)
            continue
        claims.setdefault(found.stem, (found, []))[1].append(loaded)
    catalog.archived = {stem: _group(found, loaded) for stem, (found, loaded) in claims.items()}
    for info_object in store.list(rehydration_prefix(database, info.display)):
        if info_object.key.endswith(".json"):
            try:
                document = read_json(store, info_object.key)
            except (ObjectNotFound, ManifestError):
                continue
            catalog.rehydrated[info_object.key.rsplit("/", 1)[-1].removesuffix(".json")] = \
                Rehydration(info_object.key, document)
    return catalog


def orphans(store: Store, catalog: TableCatalog) -> list[str]:
    """Parquet objects under the table's ``archive/`` prefix (of this layout or the one before) that
    no manifest references."""
    referenced = catalog.referenced_objects()
    return sorted(info.key for prefix in layout.data_prefixes(catalog.database, catalog.table)
                  for info in store.list(prefix) if info.key.endswith(".parquet") and info.key not in referenced)


# -- rehydration records -------------------------------------------------------------------------

def record_rehydration(store: Store, database: str, target: Identity, archived: dict[str, Any],
                       window: tuple[TimeValue | None, TimeValue | None], state: str,
                       previous: dict[str, Any] | None = None, rows: int | None = None) -> dict[str, Any]:
    """Write (or update) the record that rows of ``target`` were loaded back from ``archived``."""
    document = dict(previous or {})
    windows = [list(pair) for pair in document.get("windows", [])]
    pair = [ident.bound_json(window[0]), ident.bound_json(window[1])]
    if pair not in windows:
        windows.append(pair)
    document.update({
        "kind": "rehydration", "format_version": FORMAT_VERSION, "identity": target.to_json(),
        "archive": {"version": archived.get("version"), "keys": [entry["key"] for entry in objects_of(archived)],
                    "rows": archived.get("rows")},
        "windows": windows, "state": state, "updated_at": isoformat(utcnow()),
    })
    if rows is not None:
        document["rows_loaded"] = int(document.get("rows_loaded", 0)) + rows
    write_json(store, rehydration_key(database, target), document)
    return document


def forget_rehydration(store: Store, key: str) -> None:
    store.delete(key)
