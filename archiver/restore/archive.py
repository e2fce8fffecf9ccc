"""``archiver restore-archive NAME --table T --from TS --to TS [--target DSN]``: cold rows back into a table.

For an audit or an incident: the current archives of ``T`` whose ranges overlap ``[from, to)``
are read from the store; each time range (one archive, or one per space partition of a
hypertable) is handled on its own:

- every object is downloaded to ``--work-dir`` and checked against its manifest (size, SHA-256)
  and its own embedded metadata (rows, table, range, version); a mismatch: the range is not
  loaded, exit 4;
- the files are staged in bulk (ADBC ingest, COPY binary), and only the archived rows within the
  window that the table does not hold yet are inserted, in one transaction (a native partition
  dropped by retention is recreated inside it; TimescaleDB recreates chunks on insert): running it
  twice, or over overlapping windows, never adds a row twice;
- into the policy's own database, a *rehydration record* is written before the load and
  completed after it: archive and retention then know the rows came from the archive (no
  re-export of what came back; the next retention drops the range again), also when this run was
  killed half way.

It takes the cold-tier lock of the database it writes into, so archive and retention never look
at a range while rows are coming back into it.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..coldtier import chunks
from ..coldtier import identity as ident
from ..coldtier.catalog import record_rehydration, rehydration_key
from ..coldtier.manifest import ARCHIVE_CATALOG_PREFIX
from ..coldtier.objects import downloaded, staging_reader
from ..coldtier.steps import COLD_TIER_LOCK
from ..common import log, sysinfo
from ..common.progress import NULL_PROGRESS, Progress
from ..common.result import Status, TaskResult
from ..errors import ObjectNotFound, UsageError
from ..pg import staging as pg_staging
from ..pg.catalog import (
    create_plain_table,
    create_range_partition_sql,
    current_database,
    range_partitions,
    relation_exists,
    target_table,
    unknown_types,
)
from ..pg.connect import DatabaseMissing, Session, session
from ..pg.dsn import parse_dsn
from ..pg.locks import database_lock
from ..pg.quote import qualified
from ..pg.staging import range_condition
from ..policy.schema import Policy
from ..storage.backends import open_store
from ..storage.base import Store
from ..storage.documents import ManifestError, read_json
from ..storage.integrity import ObjectMismatch
from .archive_ranges import (
    ArchivedRange,
    Bound,
    archived_ranges,
    archived_tables,
    clip,
    overlaps,
    parse_bound,
    show_bound,
    sql_bound,
)

logger = log.get_logger("restore-archive")


@dataclass
class LoadDecision:
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
    database: str | None = None  # the policy's own database (rehydration is recorded), None for --target
    exists: bool = True
    notes: list[str] = field(default_factory=list)

    @property
    def display(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def relation(self) -> str:
        return qualified(self.schema, self.name)


# -- the target table -----------------------------------------------------------------------------

def _prepare_target(current: Session, dsn: str, table: str, example: dict[str, Any], *, other_database: bool,
                    dry_run: bool) -> _Target:
    schema, name = table.split(".", 1)
    archived = [(column["name"], column["pg_type"]) for column in example["parquet"]["columns"]]
    kind, columns = target_table(current, schema, name)
    target = _Target(dsn, schema, name, kind or "table", columns, str(example["time_column"]), exists=kind is not None)
    if kind is None:
        if not other_database:
            raise UsageError(f"table {table} does not exist in the policy's database: restore-archive loads rows "
                             "into an existing hypertable or partitioned table",
                             hint="recreate the table (e.g. from a backup), or load into another database with "
                                  "--target DSN, where archiver creates a plain table")
        unknown = unknown_types(current, [pg_type for _, pg_type in archived])
        stand_in = {column["name"]: _stand_in_type(str(column.get("arrow_type", "")))
                    for column in example["parquet"]["columns"]}
        archived = [(column, stand_in[column] if pg_type in unknown else pg_type) for column, pg_type in archived]
        target.notes.append(f"{table} does not exist in the target: {'would create' if dry_run else 'created'} "
                            "it as a plain table with the archive's columns"
                            + (f" (types {', '.join(sorted(unknown))} do not exist there: their columns are numeric "
                               "or text)" if unknown else ""))
        if not dry_run:
            create_plain_table(current, schema, name, archived)
            target.exists = True
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


def _partition_covers(current: Session, target: _Target, archived: ArchivedRange, time_type: str) -> bool:
    for partition in range_partitions(current, target.schema, target.name):
        match = chunks._BOUND.match(str(partition["bound"] or ""))
        if not match:
            continue
        start = chunks.parse_bound(match.group("start"), time_type)
        end = chunks.parse_bound(match.group("end"), time_type)
        # bounds of one time column are all datetimes or all integers
        starts_before = start is None or (archived.start is not None and start <= archived.start)  # type: ignore[operator]
        ends_after = end is None or (archived.end is not None and end >= archived.end)  # type: ignore[operator]
        if starts_before and ends_after:
            return True
    return False


def _partition_for(current: Session, target: _Target, archived: ArchivedRange, time_type: str) -> tuple[str, str] | None:
    """The statement that recreates a native partition dropped by retention (bounds from the
    archive manifest), and its name; None when a partition covers the range."""
    if target.kind != "partitioned" or _partition_covers(current, target, archived, time_type):
        return None
    chunk = archived.documents[0]["chunk"]
    schema, name = str(chunk["schema"]), str(chunk["name"])
    if relation_exists(current, schema, name):
        name = f"{name}_restored"
    pg_type = target.columns[target.time_column]
    statement = create_range_partition_sql(target.schema, target.name, schema, name,
                                              sql_bound(archived.start, pg_type), sql_bound(archived.end, pg_type))
    return statement, f"{schema}.{name}"


def _identities(archived: ArchivedRange) -> list[ident.Identity]:
    return [ident.of_manifest(document) for document in archived.documents]


def _record(store: Store, target: _Target, archived: ArchivedRange, window: tuple[Bound, Bound], state: str,
            rows: int | None = None) -> None:
    """The rehydration record of each archive of the range (only for the policy's own database)."""
    if target.database is None:
        return
    for document, found in zip(archived.documents, _identities(archived), strict=True):
        key = rehydration_key(target.database, found)
        previous = None
        with contextlib.suppress(ObjectNotFound, ManifestError):
            previous = read_json(store, key)
        record_rehydration(store, target.database, found, document, window, state, previous,
                           rows=rows if rows is not None and document is archived.documents[0] else None)


def _load(store: Store, current: Session, target: _Target, archived: ArchivedRange, window: tuple[Bound, Bound],
          time_type: str, work_dir: str | None) -> tuple[int, int, str | None]:
    """(rows inserted, archived rows in the window, the partition recreated) in one transaction."""
    pg_type = target.columns[target.time_column]
    condition = range_condition("t", target.time_column, sql_bound(window[0], pg_type),
                                   sql_bound(window[1], pg_type))
    partition = _partition_for(current, target, archived, time_type)
    columns = list(target.columns.items())
    with downloaded(store, archived.documents, work_dir) as copies, \
            pg_staging.staging(target.dsn, columns, what="restore-archive", isolation="READ COMMITTED") as staging:
        for copy in copies:
            reader, staged = staging_reader(copy.paths)
            staging.stage(reader, staged)
        rows = staging.combined(distinct=_may_overlap(archived))
        in_window = int(staging.scalar(f"SELECT count(*) FROM {rows} AS t WHERE {condition}"))
        if partition is not None and in_window:
            staging.execute(partition[0])
        inserted = staging.insert_missing(target.relation, condition=condition, source=rows) if in_window else 0
    return inserted, in_window, partition[1] if partition and in_window else None


def _may_overlap(archived: ArchivedRange) -> bool:
    """Can two archives of this time range hold the same rows? Not when each names its own range
    (its space slice): only manifests written before ranges had identities may be duplicates."""
    stems = [(document.get("identity") or {}).get("stem") for document in archived.documents]
    return None in stems or len(set(stems)) < len(stems)


def _dry_run(current: Session, target: _Target, archived: ArchivedRange, span: str, window: tuple[Bound, Bound],
             whole: bool) -> LoadDecision:
    """What a run would do, without downloading anything: the rows the table already holds in the
    window tell whether the range looks restored already (a real run compares row by row)."""
    present = 0
    if target.exists:
        pg_type = target.columns[target.time_column]
        condition = range_condition("t", target.time_column, sql_bound(window[0], pg_type),
                                       sql_bound(window[1], pg_type))
        present = int(current.scalar(f"SELECT count(*) FROM {target.relation} AS t WHERE {condition}"))
    if whole and present == archived.rows:
        return LoadDecision("skip", span, archived.names, f"{present:,} rows already present (as many as archived)")
    return LoadDecision("would load", span, archived.names,
                    f"the archived rows the table lacks: the archive holds {archived.rows:,}"
                    + ("" if whole else " (some outside the window)") + f", the table {present:,} in this window")


def _restore_range(store: Store, current: Session, target: _Target, archived: ArchivedRange, low: Bound,
                   high: Bound, time_type: str, *, work_dir: str | None, dry_run: bool) -> LoadDecision:
    start, end = clip(archived, low, high)
    span = f"[{show_bound(start)}, {show_bound(end)})"
    whole = (start, end) == (archived.start, archived.end)
    if dry_run:
        return _dry_run(current, target, archived, span, (start, end), whole)
    _record(store, target, archived, (start, end), "loading")
    try:
        inserted, in_window, created = _load(store, current, target, archived, (start, end), time_type, work_dir)
    except ObjectMismatch as exc:
        return LoadDecision("mismatch", span, archived.names, f"{exc.message}; not loaded")
    _record(store, target, archived, (start, end), "loaded", rows=inserted)
    prefix = f"recreated partition {created}; " if created else ""
    if inserted:
        present = in_window - inserted
        return LoadDecision("load", span, archived.names, f"{prefix}{inserted:,} rows loaded, checksums verified"
                        + (f" ({present:,} already present)" if present else ""), inserted)
    return LoadDecision("skip", span, archived.names, f"{in_window:,} rows already present (as archived)")


@contextlib.contextmanager
def _target_session(dsn: str, target: str | None) -> Iterator[Session]:
    """A session on the database rows go into; a --target database that does not exist is a usage error."""
    try:
        with session(dsn, application_name="archiver restore-archive") as current:
            yield current
    except DatabaseMissing as exc:
        if target is None:
            raise
        raise UsageError(f"--target: {exc.message}", hint="create the database first (restore-archive creates the "
                                                          "table in it, not the database)") from None


def run_restore_archive(policy: Policy, *, table: str, start: str, end: str, target: str | None = None,
                        work_dir: str | None = None, dry_run: bool = False, store: Store | None = None,
                        progress: Progress = NULL_PROGRESS) -> TaskResult:
    """Load the archived rows of ``table`` in ``[start, end)`` back into it (or into ``target``)."""
    qualified_name = table if "." in table else f"public.{table}"
    store = store or open_store(policy.storage)
    ranges, problems = archived_ranges(store, qualified_name)
    if not ranges:
        tables = ", ".join(archived_tables(store)) or "none"
        raise UsageError(f"no archives of {qualified_name} in {store.describe(ARCHIVE_CATALOG_PREFIX)} "
                         f"(archived tables: {tables})")
    time_type = str(ranges[0].documents[0]["time_type"])
    low, high = parse_bound(start, time_type, "--from"), parse_bound(end, time_type, "--to")
    if low >= high:  # type: ignore[operator]
        raise UsageError(f"--from {start} is not before --to {end}")
    chosen = [archived for archived in ranges if overlaps(archived, low, high)]
    dsn = target or policy.database.resolved_dsn()
    log.register_secret(parse_dsn(dsn).get("password"))
    clock = time.monotonic()
    decisions: list[LoadDecision] = []
    lock = contextlib.nullcontext() if dry_run else database_lock(
        dsn, COLD_TIER_LOCK, policy=policy.name, task="restore-archive", target=target if target else None)
    with lock, _target_session(dsn, target) as current:
        destination = _prepare_target(current, dsn, qualified_name, chosen[0].documents[0],
                                      other_database=target is not None, dry_run=dry_run) if chosen else None
        if destination is not None and target is None:
            destination.database = current_database(current)
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


def _result(policy: Policy, table: str, decisions: list[LoadDecision], destination: _Target | None, problems: list[str],
            low: Bound, high: Bound, ranges: list[ArchivedRange], seconds: float, dry_run: bool) -> TaskResult:
    count = {action: sum(1 for d in decisions if d.action == action) for action in ("load", "skip", "hold", "mismatch")}
    rows = sum(d.rows for d in decisions)
    lines = list(destination.notes if destination else [])
    lines += [f"unreadable archive manifest (not used): {problem}" for problem in problems]
    lines += [decision.line() for decision in decisions]
    window = f"[{show_bound(low)}, {show_bound(high)})"
    if not decisions:
        covered = f"{show_bound(ranges[0].start)} to {show_bound(ranges[-1].end)}"
        summary = f"{table}: no archive overlaps {window} (the archives cover {covered}); nothing loaded"
    elif dry_run:
        summary = (f"dry run: {table} {window}: would load {sum(d.action == 'would load' for d in decisions)} "
                   f"range(s), skip {count['skip']}, hold back {count['hold']}")
    else:
        summary = (f"{table} {window}: loaded {count['load']} range(s) ({rows:,} rows), skipped {count['skip']} "
                   f"already present, held back {count['hold']}" + (f", {count['mismatch']} archive(s) FAILED their "
                                                                       "checksum" if count["mismatch"] else ""))
    status: Status = "verification_failed" if count["mismatch"] else "held_back" if count["hold"] or problems else "ok"
    metrics = {"rows": float(rows), "ranges_loaded": float(count["load"]), "ranges_skipped": float(count["skip"]),
               "ranges_held_back": float(count["hold"]), "ranges_mismatched": float(count["mismatch"]),
               "duration_seconds": round(seconds, 3), "peak_rss_bytes": float(sysinfo.peak_rss_bytes())}
    logger.info("restore_archive.done", extra=log.fields(policy=policy.name, table=table, status=status,
                                                         metrics=metrics))
    return TaskResult(policy=policy.name or "", task="restore-archive", status=status, summary=summary, lines=lines,
                      metrics=metrics, data={"table": table, "dry_run": dry_run,
                                             "decisions": [d.to_json() for d in decisions],
                                             "held_back": [d.line() for d in decisions if d.action == "hold"]})
