"""The world the stateful model test drives: one real database with a telemetry table, a file
store, a policy, and readers that look at the lake the way users do (pyarrow on the objects).

Nothing here trusts archiver's own bookkeeping for rows: the database is read with SQL and the
lake with pyarrow; the manifests are used only to tell which objects are current.
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import yaml

from archiver.coldtier.manifest import ARCHIVE_CATALOG_PREFIX, list_archive_manifests, objects_of
from archiver.pg.connect import connect, session
from archiver.pg.dsn import parse_dsn
from archiver.pg.quote import quote_ident
from archiver.policy.fields import Secret
from archiver.policy.schema import BackupConfig, DatabaseConfig, Policy, RetentionConfig, StorageConfig
from archiver.storage.local import LocalStore
from tests.coldtier_helpers import make_policy, table
from tests.helpers import PROJECT
from tests.lake_helpers import downgrade

DAY = timedelta(days=1)
ARCHIVE_AFTER, DROP_AFTER, COLD_RETENTION = 4, 8, 16  # days
SPAN = 20  # days of history the model writes into (relative to its clock)
TABLE = "public.readings"

COLUMNS = """id bigint NOT NULL, version int NOT NULL, ts timestamptz NOT NULL, day date NOT NULL,
             device int NOT NULL, value double precision, note varchar(40)"""


def utc_day(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def create_table(dsn: str, kind: str, base: datetime) -> None:
    """``readings`` as native daily range partitions (from SPAN + 4 days back to 60 days ahead) or a TimescaleDB hypertable with 1-day chunks and two space partitions on ``device``.
    The database's time zone is not UTC, as on many production servers."""
    statements = [f"ALTER DATABASE {quote_ident(parse_dsn(dsn)['dbname'])} SET timezone = 'Asia/Kolkata'"]
    if kind == "native":
        statements.append(f"CREATE TABLE {TABLE} ({COLUMNS}) PARTITION BY RANGE (ts)")
        first = utc_day(base) - (SPAN + 4) * DAY
        for index in range(SPAN + 64):
            start = first + index * DAY
            statements.append(f"CREATE TABLE public.readings_p{start:%Y%m%d} PARTITION OF {TABLE} FOR VALUES FROM "
                              f"('{start.isoformat()}') TO ('{(start + DAY).isoformat()}')")
    else:
        statements += ["CREATE EXTENSION IF NOT EXISTS timescaledb SCHEMA public",
                       f"CREATE TABLE {TABLE} ({COLUMNS})",
                       f"SELECT public.create_hypertable('{TABLE}', 'ts', chunk_time_interval => interval '1 day')",
                       f"SELECT public.add_dimension('{TABLE}', 'device', number_partitions => 2)"]
    with connect(dsn, safe_search_path=False) as conn:  # the application's own DDL
        for statement in statements:
            conn.execute(statement)  # type: ignore[arg-type]


@dataclass
class KilledRun:
    task: str
    delay: float
    returncode: int | None


class World:
    """A database + store + policy for one example of the model."""

    def __init__(self, pg: Any, kind: str, base: datetime) -> None:
        self.pg = pg
        self.kind = kind
        self.name = f"m_{uuid.uuid4().hex[:10]}"
        self.dsn = pg.create_database(self.name)
        self.root = Path(tempfile.mkdtemp(prefix="archiver-model-"))
        self.storage = StorageConfig(url=f"file://{self.root}/store")
        self.store = LocalStore(self.root / "store")
        create_table(self.dsn, kind, base)
        self.policy = self._policy()
        self.policy_dir = self.root / "policies"
        self.policy_dir.mkdir()
        (self.policy_dir / "telemetry.yaml").write_text(yaml.safe_dump(self._policy_document()))

    def _policy(self) -> Policy:
        base = make_policy(self.dsn, self.storage, [table(TABLE, ARCHIVE_AFTER, DROP_AFTER)],
                           cold_retention=timedelta(days=COLD_RETENTION))
        return Policy(database=DatabaseConfig(dsn=Secret(self.dsn)), storage=self.storage, name="telemetry",
                      archive=base.archive,
                      backup=BackupConfig(schedule="0 3 * * *", retention=RetentionConfig(keep_last=2)))

    def _policy_document(self) -> dict[str, Any]:
        return {"database": {"dsn": self.dsn}, "storage": {"url": self.storage.url},
                "backup": {"schedule": "0 3 * * *", "retention": {"keep_last": 2}},
                "archive": {"schedule": "30 1 * * *", "cold_retention": f"{COLD_RETENTION}d",
                            "tables": [{"table": TABLE, "archive_after": f"{ARCHIVE_AFTER}d",
                                        "drop_after": f"{DROP_AFTER}d"}]}}

    def close(self) -> None:
        self.pg.psql(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        shutil.rmtree(self.root, ignore_errors=True)

    # -- the database ---------------------------------------------------------------------------

    def sql(self, statement: str, params: tuple[Any, ...] | None = None) -> list[tuple[Any, ...]]:
        with session(self.dsn) as current:
            return current.query(statement, params)

    def database_rows(self, start: datetime | None = None, end: datetime | None = None,
                      ) -> collections.Counter[tuple[int, int]]:
        """(id, version) of the table's rows (with ``start``/``end``: of those in [start, end))."""
        where = "WHERE ts >= %s AND ts < %s" if start else ""
        rows = self.sql(f"SELECT id, version FROM {TABLE} {where}", (start, end) if start else None)
        return collections.Counter((int(i), int(v)) for i, v in rows)

    def wait_for_sessions_to_end(self, timeout: float = 30.0) -> None:
        """A SIGKILLed client's backend may still be finishing a statement: wait until it is gone,
        so that the next step does not run beside it (in-process steps take no locks)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            busy = self.pg.psql("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                                f"'{self.name}' AND application_name LIKE 'archiver%' AND pid <> pg_backend_pid()")
            if busy.strip() == "0":
                return
            time.sleep(0.2)
        raise AssertionError(f"sessions of a killed run still active after {timeout} s")

    # -- the lake -------------------------------------------------------------------------------

    def manifests(self) -> list[dict[str, Any]]:
        found = list_archive_manifests(self.store, ARCHIVE_CATALOG_PREFIX)
        return [loaded.document for loaded in found.values() if loaded.document is not None]

    def current_objects(self) -> list[str]:
        """Objects a manifest references: what archiver calls the current archive."""
        return [entry["key"] for document in self.manifests() for entry in objects_of(document)]

    def object_rows(self, key: str) -> list[tuple[int, int, datetime]]:
        path = self.store.path_of(key)
        if not os.path.exists(path):
            return []
        data = pq.read_table(path, columns=["id", "version", "ts"])
        return list(zip(data.column("id").to_pylist(), data.column("version").to_pylist(),
                        data.column("ts").to_pylist()))

    def lake_rows(self, start: datetime | None = None, end: datetime | None = None,
                  ) -> collections.Counter[tuple[int, int]]:
        """Rows of the current objects, read with pyarrow from the objects themselves (with
        ``start``/``end``: those in [start, end))."""
        rows: collections.Counter[tuple[int, int]] = collections.Counter()
        for key in self.current_objects():
            rows.update((int(i), int(v)) for i, v, ts in self.object_rows(key)
                        if start is None or start <= ts < end)  # type: ignore[operator]
        return rows

    def reader_rows(self) -> collections.Counter[tuple[int, int]]:
        """What a user's reader sees: pyarrow.dataset with Hive partitioning over every Parquet file
        under archive/, with its default rules (files whose names start with '_' or '.' are
        skipped). The table's own ``day`` column must come back with its own values."""
        directory = self.root / "store" / "archive"
        if not directory.exists():
            return collections.Counter()
        dataset = ds.dataset(str(directory), format="parquet", partitioning="hive")
        if not dataset.files:
            return collections.Counter()
        columns = ["id", "version", "day"]
        hive = dataset.to_table(columns=columns)
        plain = ds.dataset(str(directory), format="parquet").to_table(columns=columns)
        seen = collections.Counter(zip(*(hive.column(name).to_pylist() for name in columns)))
        if seen != collections.Counter(zip(*(plain.column(name).to_pylist() for name in columns))):
            raise AssertionError("with Hive partitioning, readers see other values in column day than the files hold")
        return collections.Counter((int(row_id), int(version)) for row_id, version, _ in seen.elements())

    def downgrade(self, index: int, *, legacy: bool) -> str:
        """Rewrite a current archive as an earlier archiver left it (layout 1, or format 1 keyed by
        its chunk's name for native partitions, whose ranges need no space slice)."""
        found = sorted((key, loaded.document) for key, loaded in
                       list_archive_manifests(self.store, ARCHIVE_CATALOG_PREFIX).items()
                       if loaded.document is not None and (loaded.document.get("layout") or {}).get("version") == 2)
        if not found:
            return "nothing in the current layout"
        key, document = found[index % len(found)]
        legacy_name = str(document["chunk"]["name"]) if legacy and self.kind == "native" else None
        return downgrade(self.store, key, document, legacy_name=legacy_name)

    # -- a run killed at a random moment ---------------------------------------------------------

    CATALOG_STATE = ("SELECT count(*) || ':' || coalesce(sum(c.oid::bigint), 0) FROM pg_class c "
                     "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' "
                     "AND (c.relname LIKE 'readings%' OR n.nspname = '_timescaledb_internal')")

    def _store_state(self) -> str:
        top = self.root / "store"
        return "|".join(sorted(f"{path}:{path.stat().st_mtime_ns}" for path in top.rglob("*") if path.is_file()))

    def kill_run(self, args: list[str], delay: float, trigger: str = "time") -> KilledRun:
        """Run ``archiver ARGS`` and SIGKILL it: after ``delay`` seconds (trigger ``time``), or at the
        first change it makes to the catalog (``catalog``: a partition or chunk created) or to the
        store (``store``: an object written or removed), or after ``delay`` if none came."""
        env = {**os.environ, "PYTHONPATH": str(PROJECT)}
        with connect(self.dsn) as conn:
            def catalog() -> str:
                return str(conn.execute(self.CATALOG_STATE).fetchone()[0])  # type: ignore[index]
            watch = {"catalog": catalog, "store": self._store_state}.get(trigger)
            returncode = self._kill(args, delay, env, watch)
        self.wait_for_sessions_to_end()
        return KilledRun(args[0], delay, returncode)

    def _kill(self, args: list[str], delay: float, env: dict[str, str], watch: Any) -> int | None:
        before = watch() if watch else None
        process = subprocess.Popen([sys.executable, "-m", "archiver", "--policies", str(self.policy_dir), *args],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=PROJECT)
        deadline = time.monotonic() + delay
        while process.poll() is None and time.monotonic() < deadline:
            if watch and watch() != before:
                break
            time.sleep(0.005 if watch else 0.02)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        return process.wait()
