"""The cross-feature invariants, proven by a stateful model test against real parts.

A seeded random walk over what operators and applications do: insert rows (late rows into
archived and dropped ranges too), delete and update rows, archive, retention, restore-archive of
random (partial) windows, time passing (cold expiry with an injected clock), backup + prune, an
archive run split into shards (some shards only, in any order, N changing between runs), an
archive rewritten as an earlier archiver left it (which the next archive run moves to today's
layout), and a real subprocess run SIGKILLed at a random moment. After every step:

(a) every row inserted and not deleted by the user is in the database or in a current archive
    object (rows whose range ended before now - cold_retention are exempt);
(b) no row is in two current archive objects, and no row is twice in the database;
(c) once archive and retention have run with nothing in between, a range past drop_after holds
    no database rows, unless the user deleted or changed archived rows there (archiver must not
    hide that by re-exporting without being told), and a reader of the lake (pyarrow.dataset over
    archive/ with Hive partitioning, default rules) sees exactly the rows of the current objects,
    each with its own ``day`` column;
(d) the lake holds no row that was never inserted.

The database is read with SQL and the lake with pyarrow; archiver's manifests only say which
objects are current. The suite runs a bounded walk (a few seeds); a longer one:

    ARCHIVER_MODEL_SEEDS=100 ARCHIVER_MODEL_STEPS=80 .venv/bin/pytest tests/test_model_invariants.py

A failure prints the seed and the steps; ARCHIVER_MODEL_SEED=N replays exactly that walk.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from archiver.backup.prune import run_prune
from archiver.backup.task import run_backup
from archiver.coldtier.archive import run_archive
from archiver.coldtier.retention import run_retention
from archiver.coldtier.shard import Shard
from archiver.common.timeutil import isoformat
from archiver.errors import ArchiverError, UsageError
from archiver.restore.archive import run_restore_archive
from tests.model_rig import COLD_RETENTION, DAY, DROP_AFTER, SPAN, TABLE, World, utc_day

SEEDS = int(os.environ.get("ARCHIVER_MODEL_SEEDS", "3"))
STEPS = int(os.environ.get("ARCHIVER_MODEL_STEPS", "40"))
ONE_SEED = os.environ.get("ARCHIVER_MODEL_SEED")
BIG_DAY = 20_000  # rows on one day of the history


class ModelFailure(AssertionError):
    pass


class Model:
    """One walk: the world, what the user did (the model), and the rules."""

    def __init__(self, pg: Any, kind: str, seed: int) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.kind = kind
        self.base = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        self.clock = self.base
        self.world = World(pg, kind, self.base)
        self.next_id = 1
        self.live: dict[int, tuple[int, datetime]] = {}  # id -> (version, ts) of rows the user keeps
        self.ever: set[tuple[int, int]] = set()
        self.dirty_days: set[datetime] = set()  # days where the user deleted/changed rows the lake held
        self.steps: list[str] = []
        self.last_lines: list[str] = []  # what the last archive/retention said, but for skips
        self.settled = False
        self.rules: list[tuple[int, Callable[[], str]]] = [
            (6, self.insert), (2, self.delete), (2, self.update), (3, self.time_passes), (4, self.archive),
            (3, self.retention), (4, self.settle), (4, self.restore_archive), (1, self.backup_and_prune),
            (2, self.killed_run), (1, self.accept_deletes), (2, self.earlier_layout), (2, self.sharded_archive),
        ]

    # -- user activity ----------------------------------------------------------------------------

    def history(self) -> str:
        per_day = self.rng.randint(1, 3)
        inserted = sum(self._insert(day, per_day, 3600 * self.rng.randint(0, 20)) for day in range(-SPAN, 1))
        big = self.rng.randint(-SPAN, -DROP_AFTER - 1)
        return f"history: {inserted} rows over {SPAN + 1} days, and {self._bulk(big, BIG_DAY)} rows on day {big}"

    def _bulk(self, day: int, count: int) -> int:
        """A busy day: enough rows that loading or exporting them takes a moment a kill can land in."""
        start = utc_day(self.clock) + day * DAY
        first = self.next_id
        self.world.sql(f"INSERT INTO {TABLE} (id, version, ts, day, device, value, note) "
                       "SELECT %s + g, 1, %s + g * interval '1 second' * 86000 / %s, (%s + g * interval '1 second' "
                       "* 86000 / %s)::date, g %% 5, g * 0.25, 'bulk' || g FROM generate_series(0, %s - 1) AS g",
                       (first, start, count, start, count, count))
        for offset in range(count):
            self.live[first + offset] = (1, start + timedelta(seconds=offset * 86000 / count))
            self.ever.add((first + offset, 1))
        self.next_id += count
        return count

    def _insert(self, day: int, count: int, second: int) -> int:
        start = utc_day(self.clock) + day * DAY + timedelta(seconds=second)
        inserted = 0
        for index in range(count):  # one by one: a row whose native partition was dropped is refused alone
            ts = start + timedelta(minutes=37 * index)
            row = (self.next_id, 1, ts, ts.date(), self.next_id % 5, self.next_id * 0.5, f"n{self.next_id}")
            self.next_id += 1
            try:
                self.world.sql(f"INSERT INTO {TABLE} (id, version, ts, day, device, value, note) "
                               "VALUES (%s, %s, %s, %s, %s, %s, %s)", row)
            except ArchiverError as exc:
                assert "no partition of relation" in str(exc), exc
                continue
            self.live[row[0]] = (1, ts)
            self.ever.add((row[0], 1))
            inserted += 1
        return inserted

    def insert(self) -> str:
        """New rows, or late rows into a range that is archived or already dropped."""
        day, count = self.rng.randint(-SPAN - 4, 0), self.rng.randint(1, 4)
        inserted = self._insert(day, count, self.rng.randint(0, 86399 - 4 * 37 * 60))
        return f"insert {inserted}/{count} rows on day {day}"

    def _present(self) -> list[int]:
        return sorted(row_id for row_id, _ in self.world.database_rows())

    def _touch(self, ids: list[int]) -> None:
        """Rows the lake holds that the user deletes or changes make their day 'dirty'."""
        lake = self.world.lake_rows()
        for row_id, version, ts in self.world.sql(f"SELECT id, version, ts FROM {TABLE} WHERE id = ANY(%s)", (ids,)):
            if (int(row_id), int(version)) in lake:
                self.dirty_days.add(utc_day(ts))

    def delete(self) -> str:
        present = self._present()
        if not present:
            return "delete: nothing to delete"
        chosen = sorted({self.rng.choice(present) for _ in range(self.rng.randint(1, 3))})
        self._touch(chosen)
        deleted = [int(row[0]) for row in self.world.sql(f"DELETE FROM {TABLE} WHERE id = ANY(%s) RETURNING id",
                                                         (chosen,))]
        for row_id in deleted:
            self.live.pop(row_id, None)
        return f"delete {deleted}"

    def update(self) -> str:
        """A row changes (a new version; the old one is deleted). The row may be one restore-archive
        brought back after the user had deleted it: it is the user's again from now on."""
        present = self._present()
        if not present:
            return "update: nothing to update"
        row_id = self.rng.choice(present)
        self._touch([row_id])
        version, ts = self.world.sql(f"UPDATE {TABLE} SET version = version + 1, value = value + 1 WHERE id = %s "
                                     "RETURNING version, ts", (row_id,))[0]
        self.live[row_id] = (int(version), ts)
        self.ever.add((row_id, int(version)))
        return f"update {row_id} -> v{version}"

    def time_passes(self) -> str:
        days = self.rng.randint(1, 4)
        self.clock += days * DAY
        return f"clock +{days}d (day {(self.clock - self.base).days})"

    # -- archiver ---------------------------------------------------------------------------------

    def _remember(self, result: Any) -> str:
        self.last_lines = [line for line in result.lines if not line.startswith(("skip", "wait"))]
        return str(result.summary)

    def archive(self) -> str:
        return f"archive: {self._remember(run_archive(self.world.policy, now=self.clock, store=self.world.store))}"

    def sharded_archive(self) -> str:
        """Some shards of a run split N ways (``--shard K/N``), in any order; the others failed or are
        still to come, or a later run uses another N."""
        count = self.rng.randint(2, 4)
        said, lines = [], []
        for index in self.rng.sample(range(count), self.rng.randint(1, count)):
            result = run_archive(self.world.policy, now=self.clock, store=self.world.store, shard=Shard(index, count))
            said.append(f"{index}/{count} {self._remember(result)}")
            lines += self.last_lines
        self.last_lines = lines
        return "archive --shard " + " | ".join(said)

    def retention(self) -> str:
        return (f"retention: "
                f"{self._remember(run_retention(self.world.policy, now=self.clock, store=self.world.store))}")

    def accept_deletes(self) -> str:
        """The operator records that a range's deleted or changed rows are meant (--accept-deletes)."""
        if not self.dirty_days:
            return "accept-deletes: nothing to accept"
        day = self.rng.choice(sorted(self.dirty_days))
        text = f"{isoformat(day)}/{isoformat(day + DAY)}"
        result = run_archive(self.world.policy, now=self.clock, store=self.world.store, accept_deletes=[text])
        summary = self._remember(result)
        if self.world.lake_rows(day, day + DAY) == self.world.database_rows(day, day + DAY):
            self.dirty_days.discard(day)  # the archive now holds the day's rows as they are
        return f"archive --accept-deletes {text}: {summary}"

    def earlier_layout(self) -> str:
        """An archive as an earlier archiver left it (one file under year=/month=/day=, or named after
        its chunk): every later archive run must move it to today's layout without losing a row."""
        where = self.world.downgrade(self.rng.randrange(1000), legacy=self.rng.random() < 0.5)
        return f"archive rewritten in an earlier layout: {where}"

    def settle(self) -> str:
        """archive then retention with nothing in between; then (c) must hold."""
        archived = self.archive()
        lines = self.last_lines
        text = f"settle: {archived} | {self.retention()}"
        self.last_lines = lines + self.last_lines
        self.settled = True
        return text

    def restore_archive(self) -> str:
        low = utc_day(self.clock) + self.rng.randint(-SPAN - 4, 0) * DAY + timedelta(hours=self.rng.randint(0, 23))
        high = low + timedelta(hours=self.rng.choice([1, 6, 24, 24 * 3, 24 * 6]))
        try:
            result = run_restore_archive(self.world.policy, table=TABLE, start=isoformat(low), end=isoformat(high),
                                         store=self.world.store)
        except UsageError as exc:
            assert "no archives of" in str(exc) and not self.world.manifests(), exc
            return "restore-archive: nothing archived yet"
        return f"restore-archive [{isoformat(low)}, {isoformat(high)}): {result.summary}"

    def backup_and_prune(self) -> str:
        backup = run_backup(self.world.policy, store=self.world.store)
        return f"backup: {backup.summary}; prune: {run_prune(self.world.policy, store=self.world.store).summary}"

    def killed_run(self) -> str:
        """A real run (subprocess, with the wall clock as its now) SIGKILLed at a random moment."""
        task = self.rng.choice(["archive", "archive", "retention", "restore-archive", "restore-archive", "backup", "prune"])
        args = [task, "telemetry"]
        if task == "archive" and self.rng.random() < 0.5:
            count = self.rng.randint(2, 4)
            args += ["--shard", f"{self.rng.randrange(count)}/{count}"]
        if task == "restore-archive":
            low = utc_day(self.base) + self.rng.randint(-SPAN - 4, 0) * DAY
            args += ["--table", TABLE, "--from", isoformat(low),
                     "--to", isoformat(low + timedelta(hours=self.rng.choice([6, 24, 72])))]
        trigger = self.rng.choice(["time", "catalog", "store"])
        delay = self.rng.uniform(0.8, 5.0) if trigger == "time" else 20.0
        killed = self.world.kill_run(args, delay, trigger)
        when = f"after {delay:.2f}s" if trigger == "time" else f"at its first {trigger} change"
        return f"killed {' '.join(args)} {when} (exit {killed.returncode})"

    # -- the invariants ---------------------------------------------------------------------------

    def fail(self, what: str) -> None:
        raise ModelFailure(f"{self.kind}, seed {self.seed} (replay: ARCHIVER_MODEL_SEED={self.seed}): {what}\n"
                           "steps:\n  " + "\n  ".join(self.steps) + "\nthe last archive/retention said:\n  "
                           + "\n  ".join(self.last_lines[-30:]))

    def check(self) -> None:
        database = self.world.database_rows()
        lake = self.world.lake_rows()
        doubled = sorted(row for row, count in database.items() if count > 1)
        if doubled:
            self.fail(f"(b) rows twice in the database: {doubled[:10]}")
        doubled = sorted(row for row, count in lake.items() if count > 1)
        if doubled:
            self.fail(f"(b) rows in two current archive objects: {doubled[:10]}")
        unknown = sorted(row for row in lake if row not in self.ever)
        if unknown:
            self.fail(f"(d) the lake holds rows never inserted: {unknown[:10]}")
        cutoff = self.clock - timedelta(days=COLD_RETENTION)
        lost = sorted((row_id, version) for row_id, (version, ts) in self.live.items()
                      if (row_id, version) not in database and (row_id, version) not in lake
                      and utc_day(ts) + DAY > cutoff)
        if lost:
            self.fail(f"(a) rows in neither the database nor the lake: {lost[:10]} (of {len(lost)})")

    def check_settled(self) -> None:
        boundary = utc_day(self.clock - timedelta(days=DROP_AFTER))
        rows = self.world.sql(f"SELECT id, ts FROM {TABLE} WHERE ts < %s", (boundary,))
        stuck = sorted({utc_day(ts).date().isoformat() for _, ts in rows
                        if utc_day(ts) + DAY <= boundary and utc_day(ts) not in self.dirty_days})
        if stuck:
            self.fail(f"(c) days past drop_after still in the database after archive + retention: {stuck}")
        readers, lake = self.world.reader_rows(), self.world.lake_rows()
        if readers != lake:
            self.fail(f"(c) readers of archive/ see {sum(readers.values())} rows, the current objects hold "
                      f"{sum(lake.values())} (extra: {sorted((readers - lake).keys())[:5]}, hidden: "
                      f"{sorted((lake - readers).keys())[:5]})")

    def walk(self, steps: int) -> None:
        self.steps.append(self.history())
        self.check()
        weights = [weight for weight, _ in self.rules]
        for _ in range(steps):
            (rule,) = self.rng.choices([rule for _, rule in self.rules], weights=weights)
            self.step(rule)
        self.step(self.settle)

    def step(self, rule: Callable[[], str]) -> None:
        self.settled = False
        try:
            self.steps.append(rule())
        except ModelFailure:
            raise
        except Exception as exc:
            self.fail(f"{rule.__name__} raised {type(exc).__name__}: {exc}")
        self.check()
        if self.settled:
            self.check_settled()


def _walks(pg: Any, kind: str) -> None:
    seeds = [int(ONE_SEED)] if ONE_SEED else [1000 * (index + 1) + (7 if kind == "native" else 13)
                                              for index in range(SEEDS)]
    for seed in seeds:
        model = Model(pg, kind, seed)
        try:
            model.walk(STEPS)
        finally:
            model.world.close()


def test_model_native_partitions(pg: Any) -> None:
    _walks(pg, "native")


@pytest.mark.timescaledb
def test_model_timescaledb_hypertable(pg: Any) -> None:
    _walks(pg, "timescaledb")
