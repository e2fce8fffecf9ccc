"""``archiver restore-archive NAME --table T --from TS --to TS [--target DSN]``: cold rows back into a table.

For an audit or an incident: the archive manifests of ``T`` whose ranges overlap ``[from, to)``
are read from the store; each range (one chunk, or the chunks that share a time range when a
hypertable has space partitions) is handled on its own:

- a range that already holds exactly the archived rows is skipped without a download, one that
  holds some other number of rows is left alone and reported (exit 5): loading would duplicate;
- otherwise each Parquet object is downloaded to ``--work-dir``, its size and SHA-256 checked
  against its manifest (a mismatch: the range is not loaded, exit 4) and its footer's row count
  too; a native partition dropped by retention is recreated from the bounds in the manifest
  (TimescaleDB recreates chunks on insert);
- the rows are staged in bulk (ADBC ingest, COPY binary) and moved with one INSERT ... SELECT, in
  the transaction that checks the range is still empty: running it twice never adds a row twice.

It takes the cold-tier lock of the database it writes into, so archive and retention never look
at a range while rows are coming back into it.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import chunks, db, log, manifest, sysinfo, typemap
from ..errors import UsageError
from ..integrity import CheckedObject, ObjectMismatch
from ..locking import database_lock
from ..policy import Policy
from ..progress import NULL_PROGRESS, Progress
from ..storage import Store, open_store
from ..timeutil import isoformat, parse_timestamp
from . import TaskResult

logger = log.get_logger("restore-archive")
READ_BATCH_ROWS = 64 * 1024
INTERVAL_PARTS = ("months", "days", "nanoseconds")

Bound = datetime | int | None  # None: unbounded


@dataclass
class ArchivedRange:
    """The archives of one time range (several when space partitions share it)."""

    start: Bound
    end: Bound
    documents: list[dict[str, Any]]

    @property
    def rows(self) -> int:
        return sum(int(document["rows"]) for document in self.documents)

    @property
    def names(self) -> str:
        return ", ".join(str(document["chunk"]["name"]) for document in self.documents)


@dataclass
class Decision:
    action: str  # load, skip, hold, mismatch (and would-load in a dry run)
    range: str
    chunks: str
    reason: str
    rows: int = 0

    def line(self) -> str:
        return f"{self.action:8} {self.range}  {self.chunks}: {self.reason}"

    def to_json(self) -> dict[str, Any]:
        return {"action": self.action, "range": self.range, "chunks": self.chunks, "reason": self.reason,
                "rows": self.rows}


@dataclass
class _Target:
    dsn: str
    schema: str
    name: str
    kind: str
    columns: dict[str, str]  # name -> PostgreSQL type
    time_column: str
    notes: list[str] = field(default_factory=list)

    @property
    def display(self) -> str:
        return f"{self.schema}.{self.name}"


# -- bounds -------------------------------------------------------------------------------------

def parse_bound(text: str, time_type: str, flag: str) -> datetime | int:
    """A ``--from``/``--to`` value in the table's time domain."""
    if time_type == chunks.INTEGER:
        try:
            return int(text)
        except ValueError:
            raise UsageError(f"{flag} {text!r}: the table's time column is an integer; give an integer") from None
    try:
        return parse_timestamp(text)
    except ValueError:
        raise UsageError(f"{flag} {text!r} is not a timestamp (allowed: ISO 8601, e.g. 2026-01-01 or "
                         "2026-01-01T06:00:00Z; UTC unless it says otherwise)") from None


def _manifest_bound(value: Any) -> Bound:
    if value is None or isinstance(value, int):
        return value
    return parse_timestamp(str(value))


def _show(value: Bound) -> str:
    if value is None:
        return "unbounded"
    return str(value) if isinstance(value, int) else isoformat(value)


def _overlaps(archived: ArchivedRange, low: Bound, high: Bound) -> bool:
    starts_before_high = archived.start is None or high is None or archived.start < high  # type: ignore[operator]
    ends_after_low = archived.end is None or low is None or archived.end > low  # type: ignore[operator]
    return starts_before_high and ends_after_low


def _clip(archived: ArchivedRange, low: Bound, high: Bound) -> tuple[Bound, Bound]:
    start = low if archived.start is None or (low is not None and low > archived.start) else archived.start  # type: ignore[operator]
    end = high if archived.end is None or (high is not None and high < archived.end) else archived.end  # type: ignore[operator]
    return start, end


def _sql_bound(value: Bound, pg_type: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, int):
        return str(value)
    return f"CAST({db.quote_literal(isoformat(value))} AS {pg_type})"


# -- choosing the archives ------------------------------------------------------------------------

def archived_ranges(store: Store, table: str) -> tuple[list[ArchivedRange], list[str]]:
    """Every archived range of ``table`` (oldest first), and the problems of unreadable manifests."""
    found = manifest.list_archive_manifests(store, manifest.ARCHIVE_CATALOG_PREFIX)
    segment = f"/{chunks.key_part(table)}/"
    by_range: dict[tuple[str, str], ArchivedRange] = {}
    problems = []
    for key, loaded in sorted(found.items()):
        document = loaded.document
        if document is None:
            if segment in key:
                problems.append(f"{store.describe(key)}: {loaded.error}")
            continue
        if document.get("table") != table:
            continue
        span = document["range"]
        group = by_range.setdefault((str(span.get("start")), str(span.get("end"))), ArchivedRange(
            _manifest_bound(span.get("start")), _manifest_bound(span.get("end")), []))
        group.documents.append(document)
    ranges = sorted(by_range.values(), key=lambda r: (r.start is not None, r.start or 0, r.names))  # type: ignore[operator]
    return ranges, problems


def _archived_tables(store: Store) -> list[str]:
    found = manifest.list_archive_manifests(store, manifest.ARCHIVE_CATALOG_PREFIX)
    return sorted({str(loaded.document["table"]) for loaded in found.values() if loaded.document})


# -- the target table -----------------------------------------------------------------------------

def _prepare_target(current: db.Session, dsn: str, table: str, example: dict[str, Any], *, other_database: bool,
                    dry_run: bool) -> _Target:
    schema, name = table.split(".", 1)
    archived = [(column["name"], column["pg_type"]) for column in example["parquet"]["columns"]]
    kind, columns = db.target_table(current, schema, name)
    target = _Target(dsn, schema, name, kind or "table", columns, str(example["time_column"]))
    if kind is None:
        if not other_database:
            raise UsageError(f"table {table} does not exist in the policy's database: restore-archive loads rows "
                             "into an existing hypertable or partitioned table",
                             hint="recreate the table (e.g. from a backup), or load into another database with "
                                  "--target DSN, where archiver creates a plain table")
        unknown = db.unknown_types(current, [pg_type for _, pg_type in archived])
        stand_in = {column["name"]: _stand_in_type(str(column.get("arrow_type", "")))
                    for column in example["parquet"]["columns"]}
        archived = [(column, stand_in[column] if pg_type in unknown else pg_type) for column, pg_type in archived]
        target.notes.append(f"{table} does not exist in the target: {'would create' if dry_run else 'created'} "
                            "it as a plain table with the archive's columns"
                            + (f" (types {', '.join(sorted(unknown))} do not exist there: their columns are numeric "
                               "or text)" if unknown else ""))
        if not dry_run:
            db.create_plain_table(current, schema, name, archived)
        target.columns = dict(archived)
    missing = [column for column, _ in archived if column not in target.columns]
    if missing:
        raise UsageError(f"{table} in the target lacks column(s) the archive holds: {', '.join(missing)}",
                         hint="add them, or load into another database with --target DSN")
    return target


def _stand_in_type(arrow_type: str) -> str:
    """A built-in type for a column whose own type (a domain, an enum) the target database lacks."""
    decimal = re.fullmatch(r"decimal128\((\d+), (\d+)\)", arrow_type)
    return f"numeric({decimal.group(1)},{decimal.group(2)})" if decimal else "text"


def _partition_covers(current: db.Session, target: _Target, archived: ArchivedRange, time_type: str) -> bool:
    for partition in db.range_partitions(current, target.schema, target.name):
        match = chunks._BOUND.match(str(partition["bound"] or ""))
        if not match:
            continue
        start = chunks.parse_bound(match.group("start"), time_type)
        end = chunks.parse_bound(match.group("end"), time_type)
        if (start is None or (archived.start is not None and start <= archived.start)) and \
                (end is None or (archived.end is not None and end >= archived.end)):  # type: ignore[operator]
            return True
    return False


def _recreate_partition(current: db.Session, target: _Target, archived: ArchivedRange, time_type: str) -> str | None:
    """The dropped partition of a native partitioned table, from the manifest's bounds; its name, or None."""
    if target.kind != "partitioned" or _partition_covers(current, target, archived, time_type):
        return None
    chunk = archived.documents[0]["chunk"]
    schema, name = str(chunk["schema"]), str(chunk["name"])
    if db.relation_exists(current, schema, name):
        name = f"{name}_restored"
    pg_type = target.columns[target.time_column]
    db.create_range_partition(current, target.schema, target.name, schema, name,
                              _sql_bound(archived.start, pg_type), _sql_bound(archived.end, pg_type))
    return f"{schema}.{name}"


# -- loading ----------------------------------------------------------------------------------------

@contextlib.contextmanager
def _downloaded(store: Store, archived: ArchivedRange, work_dir: str | None) -> Iterator[list[Path]]:
    """Each Parquet object of the range in a private temp directory, size and SHA-256 proven."""
    directory = Path(tempfile.mkdtemp(prefix="archiver-restore-archive-", dir=work_dir))
    try:
        paths = []
        for index, document in enumerate(archived.documents):
            path = directory / f"{index}.parquet"
            entry = {**document["object"], "codec": "none"}
            with CheckedObject(store, entry, f"the archive of {document['chunk']['name']}") as obj, \
                    open(path, "wb") as out:
                for chunk in obj.chunks():
                    out.write(chunk)
                obj.finish()
            rows = pq.ParquetFile(path).metadata.num_rows
            if rows != int(document["rows"]):
                raise ObjectMismatch(f"the archive of {document['chunk']['name']} {store.describe(entry['key'])} "
                                     f"holds {rows} rows; its manifest says {document['rows']}",
                                     key=str(entry["key"]), reason="rows")
            paths.append(path)
        yield paths
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _staging_reader(paths: list[Path]) -> tuple[pa.RecordBatchReader, list[db.StagedColumn]]:
    """The files' rows as one stream of batches; interval structs split into their three parts,
    which ADBC can ingest (it has no mapping for an Arrow struct)."""
    schema = pq.ParquetFile(paths[0]).schema_arrow
    intervals = {f.name for f in schema if f.type == typemap.INTERVAL_TYPE}
    fields: list[pa.Field] = []
    staged: list[db.StagedColumn] = []
    for f in schema:
        if f.name in intervals:
            parts = tuple(f"{f.name}#{part}" for part in INTERVAL_PARTS)
            fields += [pa.field(part, f.type.field(i).type) for i, part in enumerate(parts)]
            staged.append(db.StagedColumn(f.name, parts, "interval"))
        else:
            fields.append(f.remove_metadata())
            staged.append(db.StagedColumn(f.name, (f.name,)))
    out_schema = pa.schema(fields)

    def batches() -> Iterator[pa.RecordBatch]:
        for path in paths:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=READ_BATCH_ROWS):
                arrays: list[pa.Array] = []
                for f, column in zip(batch.schema, batch.columns):
                    if f.name in intervals:
                        valid = column.is_valid()
                        arrays += [pc.if_else(valid, column.field(part), pa.scalar(None, column.type.field(part).type))
                                   for part in INTERVAL_PARTS]
                    else:
                        arrays.append(column)
                yield pa.RecordBatch.from_arrays(arrays, schema=out_schema)
    return pa.RecordBatchReader.from_batches(out_schema, batches()), staged


def _restore_range(store: Store, current: db.Session, target: _Target, archived: ArchivedRange, low: Bound,
                   high: Bound, time_type: str, *, work_dir: str | None, dry_run: bool) -> Decision:
    start, end = _clip(archived, low, high)
    span = f"[{_show(start)}, {_show(end)})"
    whole = (start, end) == (archived.start, archived.end)
    pg_type = target.columns[target.time_column]
    low_sql, high_sql = _sql_bound(start, pg_type), _sql_bound(end, pg_type)
    present = db.count_in_range(current, target.schema, target.name, target.time_column, low_sql, high_sql)
    if whole and present == archived.rows:
        return Decision("skip", span, archived.names, f"{present:,} rows already present (as archived)")
    if whole and present:
        return Decision("hold", span, archived.names, f"the table holds {present:,} rows in this range, the archive "
                                                      f"{archived.rows:,}: not loaded, it would duplicate rows")
    if dry_run:
        return Decision("would load", span, archived.names, f"up to {archived.rows:,} archived rows"
                                                            + ("" if whole else " (those within the range)"))
    try:
        with _downloaded(store, archived, work_dir) as paths:
            created = _recreate_partition(current, target, archived, time_type) if present == 0 else None
            reader, staged = _staging_reader(paths)
            outcome = db.load_archive_rows(target.dsn, schema=target.schema, name=target.name, batches=reader,
                                           columns=staged, column_types=target.columns, time_column=target.time_column,
                                           low_sql=low_sql, high_sql=high_sql)
    except ObjectMismatch as exc:
        return Decision("mismatch", span, archived.names, f"{exc.message}; not loaded")
    prefix = f"recreated partition {created}; " if created else ""
    if outcome.loaded:
        return Decision("load", span, archived.names, f"{prefix}{outcome.loaded:,} rows loaded, checksums verified",
                        outcome.loaded)
    if outcome.present == outcome.in_range:
        return Decision("skip", span, archived.names, f"{outcome.present:,} rows already present (as archived)")
    return Decision("hold", span, archived.names, f"the table holds {outcome.present:,} rows in this range, the "
                                                  f"archive {outcome.in_range:,}: not loaded, it would duplicate rows")


def run_restore_archive(policy: Policy, *, table: str, start: str, end: str, target: str | None = None,
                        work_dir: str | None = None, dry_run: bool = False, store: Store | None = None,
                        progress: Progress = NULL_PROGRESS) -> TaskResult:
    """Load the archived rows of ``table`` in ``[start, end)`` back into it (or into ``target``)."""
    qualified_name = table if "." in table else f"public.{table}"
    store = store or open_store(policy.storage)
    ranges, problems = archived_ranges(store, qualified_name)
    if not ranges:
        archived = ", ".join(_archived_tables(store)) or "none"
        raise UsageError(f"no archives of {qualified_name} in {store.describe(manifest.ARCHIVE_CATALOG_PREFIX)} "
                         f"(archived tables: {archived})")
    time_type = str(ranges[0].documents[0]["time_type"])
    low, high = parse_bound(start, time_type, "--from"), parse_bound(end, time_type, "--to")
    if low >= high:  # type: ignore[operator]
        raise UsageError(f"--from {start} is not before --to {end}")
    chosen = [archived for archived in ranges if _overlaps(archived, low, high)]
    dsn = target or policy.database.resolved_dsn()
    log.register_secret(db.parse_dsn(dsn).get("password"))
    clock = time.monotonic()
    decisions: list[Decision] = []
    lock = contextlib.nullcontext() if dry_run else database_lock(policy, "restore-archive",
                                                                    dsn=target if target else None)
    with lock, db.session(dsn, application_name="archiver restore-archive") as current:
        destination = _prepare_target(current, dsn, qualified_name, chosen[0].documents[0],
                                      other_database=target is not None, dry_run=dry_run) if chosen else None
        progress.phase(f"restore-archive {qualified_name}", total=len(chosen), unit="ranges")
        for archived in chosen:
            assert destination is not None
            decision = _restore_range(store, current, destination, archived, low, high, time_type,
                                      work_dir=work_dir, dry_run=dry_run)
            decisions.append(decision)
            logger.info("restore_archive.decision", extra=log.fields(table=qualified_name, **decision.to_json()))
            progress.advance(1)
        progress.done()
    return _result(policy, qualified_name, decisions, destination, problems, low, high, ranges,
                   time.monotonic() - clock, dry_run)


def _result(policy: Policy, table: str, decisions: list[Decision], destination: _Target | None, problems: list[str],
            low: Bound, high: Bound, ranges: list[ArchivedRange], seconds: float, dry_run: bool) -> TaskResult:
    count = {action: sum(1 for d in decisions if d.action == action) for action in ("load", "skip", "hold", "mismatch")}
    rows = sum(d.rows for d in decisions)
    lines = list(destination.notes if destination else [])
    lines += [f"unreadable archive manifest (not used): {problem}" for problem in problems]
    lines += [decision.line() for decision in decisions]
    window = f"[{_show(low)}, {_show(high)})"
    if not decisions:
        covered = f"{_show(ranges[0].start)} to {_show(ranges[-1].end)}"
        summary = f"{table}: no archive overlaps {window} (the archives cover {covered}); nothing loaded"
    elif dry_run:
        summary = (f"dry run: {table} {window}: would load {sum(d.action == 'would load' for d in decisions)} "
                   f"range(s), skip {count['skip']}, hold back {count['hold']}")
    else:
        summary = (f"{table} {window}: loaded {count['load']} range(s) ({rows:,} rows), skipped {count['skip']} "
                   f"already present, held back {count['hold']}" + (f", {count['mismatch']} archive(s) FAILED their "
                                                                       "checksum" if count["mismatch"] else ""))
    status = "verification_failed" if count["mismatch"] else "held_back" if count["hold"] or problems else "ok"
    metrics = {"rows": float(rows), "ranges_loaded": float(count["load"]), "ranges_skipped": float(count["skip"]),
               "ranges_held_back": float(count["hold"]), "ranges_mismatched": float(count["mismatch"]),
               "duration_seconds": round(seconds, 3), "peak_rss_bytes": float(sysinfo.peak_rss_bytes())}
    logger.info("restore_archive.done", extra=log.fields(policy=policy.name, table=table, status=status,
                                                         metrics=metrics))
    return TaskResult(policy=policy.name or "", task="restore-archive", status=status, summary=summary, lines=lines,
                      metrics=metrics, data={"table": table, "dry_run": dry_run,
                                             "decisions": [d.to_json() for d in decisions],
                                             "held_back": [d.line() for d in decisions if d.action == "hold"]})
