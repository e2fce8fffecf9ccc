"""Cold files past ``cold_retention``: expired range by range, manifest first, then data.

A range whose rows are still in the database (its chunk was held back, or re-created) keeps its
archive whatever its age: the archive is what proves the rows may be dropped. Every manifest of
the range goes (current, and any left by an interrupted run), then the objects, then the
record of a restore-archive into it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..pg.catalog import existing_relations
from ..pg.connect import Session
from ..policy.schema import ArchiveConfig
from ..storage.base import Store
from . import decisions as decide
from . import identity as ident
from .catalog import catalog_prefix, rehydration_key
from .chunks import TableInfo
from .decisions import EXPIRE, Decision
from .manifest import LoadedManifest, list_archive_manifests, objects_of
from .steps import record


@dataclass
class Counts:
    dropped: int = 0
    expired: int = 0
    orphans: int = 0


def _chunk_name(document: dict[str, Any]) -> tuple[str, str]:
    chunk = document.get("chunk") or {}
    return str(chunk.get("schema")), str(chunk.get("name"))


def _in_database(loaded: LoadedManifest, present: dict[str, set[str]], named: set[tuple[str, str]]) -> bool:
    """May the range's rows still be in the database? A chunk of the same range (the policy's
    tables), or any relation of the archived chunk's name (kept rather than guessed)."""
    document = loaded.document or {}
    if ident.of_manifest(document).stem in present.get(str(document.get("table")), set()):
        return True
    return _chunk_name(document) in named


def _files(keys: list[str]) -> str:
    return keys[0] if len(keys) == 1 else f"{len(keys)} files ({keys[0]} ...)"


def expire_cold_files(current: Session, store: Store, database: str, config: ArchiveConfig, infos: list[TableInfo],
                      now: datetime, decisions: list[Decision], dry_run: bool, counts: Counts) -> None:
    if config.cold_retention is None:
        return
    present = {info.display: {info.identity(chunk).stem for chunk in info.chunks} for info in infos}
    cold_cutoff = now - config.cold_retention
    manifests = sorted(list_archive_manifests(store, catalog_prefix(database)).items())
    named = existing_relations(current, [_chunk_name(loaded.document) for _, loaded in manifests if loaded.document])
    for key, loaded in manifests:
        document = loaded.document
        verdict = decide.expiry_decision(document, loaded.error, cold_cutoff,
                                           chunk_exists=bool(document) and _in_database(loaded, present, named),
                                           cold_retention=config.cold_retention)
        if verdict is None:
            continue
        action, reason = verdict
        table = document["table"] if document else "?"
        subject = ident.of_manifest(document).describe() if document else key
        if action == EXPIRE and not dry_run:
            assert document is not None
            keys = [entry["key"] for entry in objects_of(document)]
            store.delete(key)  # manifest first: from here on the files are no archive
            for data_key in keys:
                store.delete(data_key)
            found = ident.of_manifest(document)
            if found.space is not None and store.head(rehydration_key(database, found)) is not None:
                store.delete(rehydration_key(database, found))
            counts.expired += 1
            action, reason = "expired", f"{reason}; removed {_files(keys)}"
        record(decisions, Decision("expiry", table, subject, action, reason), "retention.expiry")
