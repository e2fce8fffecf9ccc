"""Archives written in an earlier layout, moved to today's (``archiver/coldtier/layout.py``).

Earlier archivers wrote a range's rows as one file under ``year=/month=/day=`` of the range's
start (layout 1), and before ranges had identities under the chunk's name
(``_hyper_1_7_chunk_<start>_<end>.parquet``, which readers skip). Each such archive becomes a new
version of its range in today's layout, crash-safe at every step:

1. its objects are downloaded and checked (size, SHA-256, embedded metadata) against its manifest;
2. their rows are written, one file per UTC day, to the new version's keys, with the file's own
   metadata updated (identity, version, day) and nothing else changed;
3. the new files are read back from the store: each holds only rows of its day, and together
   they have exactly the fingerprint of the old files (same rows, same values);
4. the new version's manifest is written (it lists what it ``supersedes``): readers switch here;
5. the old manifest (when it had another key) and then the old objects are deleted.

A run killed before 4 leaves objects no manifest references; after 4, a superseded manifest or
old objects: the next archive or retention removes them (``steps.clean_table``). A dry run says
which objects would move where. Nothing needs the database: rows are moved, never re-read.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..common.timeutil import isoformat, utcnow
from ..errors import VerificationFailed
from ..storage.base import Store
from ..storage.documents import FORMAT_VERSION
from ..storage.integrity import ObjectMismatch
from . import chunks, layout, parquet
from . import typemap as tm
from .catalog import Archived, TableCatalog
from .chunks import TableInfo
from .decisions import HOLD, MOVE, WARN, Decision
from .export import Piece, read_back, remove_pieces
from .fingerprint_arrow import ArrowFingerprint
from .identity import Identity
from .manifest import describe_objects, objects_of, supersedes_json, switch_version
from .objects import downloaded
from .rangefacts import blocked
from .steps import record

TIME_SCALE = {tm.TIMESTAMP: 86_400_000_000, tm.DATE: 1}  # a day in the accumulator's time numbers


@dataclass(frozen=True)
class Move:
    info: TableInfo
    archived: Archived

    @property
    def identity(self) -> Identity:
        return self.archived.identity

    @property
    def version(self) -> int:
        return self.archived.version + 1


def moves(info: TableInfo, catalog: TableCatalog, decisions: list[Decision], *, skip: set[str]) -> list[Move]:
    """The archives of ``info``'s table not in today's layout (under its partition key), except the
    ranges in ``skip`` (a new version of them is written by this run anyway) and those with
    duplicates (the archive run merges them into today's layout)."""
    found = []
    for stem, archived in sorted(catalog.archived.items()):
        if stem in skip or archived.duplicates or layout.in_layout(archived.document, info.config.partition_key):
            continue
        reason = blocked(catalog, archived.identity)
        if reason:
            record(decisions, Decision("archive", info.display, archived.identity.describe(), HOLD,
                                       f"not moved to the current layout: {reason}"), "archive.migrate.held_back")
            continue
        found.append(Move(info, archived))
    for loaded in catalog.unplaced:  # readable by restore-archive; invisible to readers that skip '_' names
        record(decisions, Decision("archive", info.display, loaded.key, WARN,
                                   "not moved to the current layout: a legacy archive that does not say which space "
                                   "partition it holds, and its chunk is gone"), "archive.migrate.unplaced")
    return found


def describe_move(database: str, move: Move) -> str:
    """What a dry run says: the objects and where their rows go."""
    info = move.info
    days = layout.range_days(move.identity.start, move.identity.end, info.time_type, info.config.time_unit)
    target = layout.data_key(database, info, move.identity, move.version, days[0])
    where = target if len(days) == 1 else (f"{target} and the other days' files (one per UTC day with rows, "
                                           f"{days[0]} to {days[-1]})")
    return f"archive v{move.archived.version} ({describe_objects(move.archived.document)}) -> v{move.version}: {where}"


def migrate(store: Store, database: str, moves_: list[Move], decisions: list[Decision], *, dry_run: bool,
            settings: parquet.WriterSettings, work_dir: str | None = None) -> int:
    """Move each archive; one decision line each. Returns how many moved."""
    moved = 0
    for move in moves_:
        subject = move.identity.describe()
        what = describe_move(database, move)
        if dry_run:
            record(decisions, Decision("archive", move.info.display, subject, MOVE, what), "archive.migrate")
            continue
        try:
            pieces = _move(store, database, move, settings, work_dir)
        except ObjectMismatch as exc:
            record(decisions, Decision("archive", move.info.display, subject, HOLD,
                                       f"not moved to the current layout: {exc.message}"), "archive.migrate.held_back")
            continue
        except VerificationFailed as exc:
            record(decisions, Decision("archive", move.info.display, subject, "mismatch",
                                       f"not moved to the current layout: {exc.message}"), "archive.migrate.mismatch")
            continue
        moved += 1
        record(decisions, Decision("archive", move.info.display, subject, "moved",
                                   f"v{move.archived.version} -> v{move.version}, {len(pieces)} file(s) under "
                                   f"{move.info.config.partition_key}=, verified: {pieces[0].key}"), "archive.migrate")
    return moved


def _move(store: Store, database: str, move: Move, settings: parquet.WriterSettings,
          work_dir: str | None) -> list[Piece]:
    info, document = move.info, move.archived.document
    with downloaded(store, [document], work_dir) as copies:
        paths = [str(path) for path in copies[0].paths]
        schema = pq.ParquetFile(paths[0]).schema_arrow
        plans = tm.plans_of_schema(schema)
        time_column = info.time_column
        time_kind = next(plan.kind for plan in plans if plan.name == time_column)
        old = _fingerprint(paths, plans, time_column)
        pieces = _write_days(store, database, move, paths, schema, time_column, time_kind, old, settings)
    if not pieces:
        raise VerificationFailed(f"{info.display} {move.identity.describe()}: no rows were written")
    read_back(store, pieces, plans, info, old.result(), f"{info.display} {move.identity.describe()} (moved)")
    manifest = _manifest(database, move, pieces, document)
    replaces = [move.archived.current, *move.archived.stale]
    switch_version(store, chunks.manifest_key(database, info, move.identity), manifest, replaces,
                   [piece.key for piece in pieces])
    return pieces


def _fingerprint(paths: list[str], plans: list[tm.ColumnPlan], time_column: str) -> ArrowFingerprint:
    accumulator = ArrowFingerprint(plans, time_column)
    for path in paths:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=parquet.READ_BATCH_ROWS):
            accumulator.add(batch)
    return accumulator


def _write_days(store: Store, database: str, move: Move, paths: list[str], schema: pa.Schema, time_column: str,
                time_kind: str, old: ArrowFingerprint, settings: parquet.WriterSettings) -> list[Piece]:
    """The rows of each UTC day into that day's file; no file for a day without rows."""
    info = move.info
    scale = TIME_SCALE.get(time_kind) or layout.units_per_day(info.config.time_unit)
    if old.time_min is None:
        days = layout.range_days(move.identity.start, move.identity.end, info.time_type, info.config.time_unit)[:1]
    else:
        days = layout.days_between(layout.EPOCH_DAY + timedelta(days=int(old.time_min) // scale),
                                   layout.EPOCH_DAY + timedelta(days=int(old.time_max) // scale))
    pieces: list[Piece] = []
    try:
        for day in days:
            low = (day - layout.EPOCH_DAY).days * scale
            key = layout.data_key(database, info, move.identity, move.version, day)
            day_schema = schema.with_metadata(_metadata(schema, move, day))
            writer = store.writer(key, content_type="application/vnd.apache.parquet")
            try:
                summary = parquet.write_batches(_rows_of_day(paths, time_column, time_kind, low, low + scale),
                                                writer, day_schema, settings)
                if summary.rows or (day == days[-1] and not pieces):
                    pieces.append(Piece(key, day, writer.commit(), summary))
                else:
                    writer.abort()
            except BaseException:
                writer.abort()
                raise
    except BaseException:
        remove_pieces(store, pieces)
        raise
    return pieces


def _rows_of_day(paths: list[str], time_column: str, time_kind: str, low: int, high: int) -> Iterator[pa.RecordBatch]:
    for path in paths:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=parquet.READ_BATCH_ROWS):
            numbers = _time_numbers(batch.column(batch.schema.get_field_index(time_column)), time_kind)
            mask = pc.and_(pc.greater_equal(numbers, low), pc.less(numbers, high))
            chosen = batch.filter(mask)
            if chosen.num_rows:
                yield chosen


def _time_numbers(values: pa.Array, kind: str) -> pa.Array:
    """A time column as the integers the fingerprint's bounds are in (microseconds, days, the integer)."""
    if kind == tm.TIMESTAMP:
        return values.cast(pa.timestamp("us", tz=values.type.tz)).cast(pa.int64())
    if kind == tm.DATE:
        return values.cast(pa.int32()).cast(pa.int64())
    return values.cast(pa.int64())


def _metadata(schema: pa.Schema, move: Move, day: date) -> dict[str, str]:
    """The old file's own metadata, saying now which range, version and day it is."""
    found = {key.decode(): value.decode() for key, value in (schema.metadata or {}).items()}
    found.update(parquet.file_metadata({"identity": move.identity.to_json(), "version": str(move.version),
                                        "day": day.isoformat(), "partition_key": move.info.config.partition_key}))
    return found


def _manifest(database: str, move: Move, pieces: list[Piece], old: dict[str, Any]) -> dict[str, Any]:
    """The old manifest as the new version's: the same rows and fingerprints, today's layout."""
    info = move.info
    kept = {key: value for key, value in old.items() if key not in ("object", "objects", "supersedes", "change")}
    moved_at = utcnow()
    return {**kept, "format_version": FORMAT_VERSION, "version": move.version, "database": database,
            "identity": move.identity.to_json(), "layout": layout.layout_json(info.config.partition_key),
            "objects": [piece.to_json() for piece in pieces],
            "parquet": {**(old.get("parquet") or {}), "files": len(pieces),
                        "profile": (old.get("parquet") or {}).get("profile", tm.EXACT)},
            "change": {"kind": "migrate", "reason": f"moved from layout {(old.get('layout') or {}).get('version', 1)} "
                                                    f"({len(objects_of(old))} object(s)) to layout "
                                                    f"{layout.LAYOUT_VERSION}, rows unchanged"},
            "supersedes": supersedes_json([move.archived.current, *move.archived.stale]),
            "migrated_at": isoformat(moved_at), "verified_at": isoformat(moved_at)}
