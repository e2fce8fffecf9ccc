"""Gathering the facts about one range that archive and retention decide on (decisions.RangeFacts).

Cheap facts first: the catalog (current archive, duplicates, unreadable or unplaced manifests,
rehydration), the stored object's check, the database fingerprint. Only when the fingerprint
differs is the archive downloaded and compared with the database row by row.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..pg.connect import Session
from ..storage.base import Store
from ..storage.integrity import ObjectMismatch
from . import identity as ident
from . import merge
from .catalog import Archived, TableCatalog
from .chunks import Chunk, TableInfo
from .decisions import RangeFacts
from .export import database_fingerprint
from .fingerprint import Fingerprint
from .identity import Identity
from .manifest import describe_objects
from .objects import check_object


def range_text(identity: Identity) -> str:
    """How an operator names a range on the command line (``--accept-deletes``)."""
    return f"{ident.show_value(identity.start)}/{ident.show_value(identity.end)}"


def accept_command(policy: str, info: TableInfo, identity: Identity) -> str:
    """The command an operator runs to record deletions in a range (printed in hold lines)."""
    return f"archiver archive {policy} --table {info.display} --accept-deletes {range_text(identity)}"


def accepts(wanted: list[str], chunk: Chunk, identity: Identity) -> bool:
    """Does an ``--accept-deletes`` value name this range (``START/END`` as printed, or the chunk's name)?"""
    names = {chunk.name, chunk.display, range_text(identity)}
    return any(value in names for value in wanted)


def blocked(catalog: TableCatalog, identity: Identity) -> str | None:
    unreadable = catalog.unreadable_for(identity)
    if unreadable:
        return (f"an archive manifest that may describe this range is unreadable ({unreadable[0].key}: "
                f"{unreadable[0].error}); not writing over or dropping what it may describe: repair or remove it")
    unplaced = catalog.unplaced_for(identity)
    if unplaced:
        return (f"a legacy archive of this time range ({unplaced[0].key}) does not say which space partition it holds "
                "and its chunk is gone; not archiving or dropping this range until it is placed or removed")
    return None


def database_matches(current: Session, info: TableInfo, chunk: Chunk, document: dict[str, Any]) -> bool:
    """Does the database hold exactly the rows it held when this version was written? (A merged
    version also holds rows that were no longer in the database: its database_fingerprint says
    what was.)"""
    stored = Fingerprint.from_json(document.get("database_fingerprint") or document["fingerprint"])
    return not stored.differences(database_fingerprint(current, chunk, info.plans(), info.time_column))


def gather(current: Session, dsn: str, store: Store, info: TableInfo, chunk: Chunk, catalog: TableCatalog, *,
           check_rows: bool, thorough: bool = False, accept_deletes: bool = False,
           work_dir: str | None = None) -> tuple[RangeFacts, Archived | None]:
    """The facts of a chunk's range. ``check_rows``: compare the database's rows with the archive's
    (fingerprint, then row by row when it differs); ``thorough``: read every byte of the object."""
    identity = info.identity(chunk)
    archived = catalog.find(identity)
    record = catalog.rehydrated.get(identity.stem)
    facts = RangeFacts(blocked=blocked(catalog, identity), accept_deletes=accept_deletes, rehydrated=record is not None,
                       rehydrated_whole=bool(record and record.covers_whole_range(identity)))
    if archived is None:
        return facts, None
    document = archived.document
    facts = replace(facts, version=archived.version, rows=document.get("rows"), key=describe_objects(document),
                    archived_only=int(document.get("archived_only_rows", 0)),
                    duplicates=len(archived.duplicates), object_problem=check_object(store, document, thorough=thorough),
                    archived_only_columns=tuple(merge.columns_only_archived(info, [document])))
    if facts.object_problem or check_rows or accept_deletes:
        facts = with_rows(current, dsn, store, info, chunk, document, facts, work_dir)
    return facts, archived


def with_rows(current: Session, dsn: str, store: Store, info: TableInfo, chunk: Chunk, document: dict[str, Any],
              facts: RangeFacts, work_dir: str | None = None) -> RangeFacts:
    """``facts`` with the database's rows compared to the archive's: the fingerprint (in
    ``current``'s transaction), and row by row (another session) when it differs."""
    facts = replace(facts, database_matches=database_matches(current, info, chunk, document))
    if facts.object_problem or facts.database_matches or facts.duplicates or facts.archived_only_columns:
        return facts
    try:
        comparison = merge.compare(dsn, store, info, chunk, document, work_dir)
    except ObjectMismatch as exc:
        return replace(facts, object_problem=exc.message)
    return replace(facts, database_only=comparison.database_only, archive_only=comparison.archive_only,
                   common=comparison.common)
