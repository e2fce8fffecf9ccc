"""Nothing lost: what may never be dropped, and runs killed at the worst moments.

Kills are simulated with an exception that, like a SIGKILL, nothing in archiver catches (it
derives from BaseException): a real SIGKILL cannot be aimed at "after the upload, before the
manifest" deterministically. Everything else is real: PostgreSQL, the file store, moto's S3.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from archiver.coldtier import retention
from archiver.coldtier.archive import ArchiveOptions, run_archive
from archiver.coldtier.retention import RetentionOptions, run_retention
from archiver.coldtier.steps import ColdTierFailed
from archiver.errors import LockBusy, StoreError
from archiver.ops.locking import database_lock
from archiver.ops.runner import run_task
from archiver.pg.catalog import detach_and_drop_partition
from archiver.pg.connect import Session
from archiver.pg.quote import qualified
from archiver.policy.schema import StorageConfig
from archiver.storage.backends import open_store
from archiver.storage.base import ObjectWriter
from archiver.storage.local import LocalStore
from archiver.tasks import ARCHIVE, RETENTION
from tests.coldtier_helpers import READING_AGES as AGES
from tests.coldtier_helpers import (
    create_readings,
    first_key,
    manifests,
    parquet_keys,
    policy_for,
    read_archive,
    relations,
    sql,
)


class Killed(BaseException):
    """The process died here."""






@pytest.fixture
def local(tmp_path: Path) -> StorageConfig:
    return StorageConfig(url=f"file://{tmp_path}/store")


def held(lines: list[str]) -> dict[str, str]:
    """Held-back chunks by name (lines read "hold  <table> <chunk>: <reason>")."""
    return {line.split()[2].split(":")[0]: line for line in lines
            if line.startswith("hold") and len(line.split()) > 2 and line.split()[1].startswith("public.")
            and line.split()[2].startswith("public.")}


def test_a_deleted_or_altered_archive_object_is_never_dropped_and_the_next_archive_replaces_it(
        database: str, storage: StorageConfig) -> None:
    create_readings(database)
    policy = policy_for(database, storage)
    store = open_store(storage)
    run_archive(policy)
    found = manifests(store)
    store.delete(first_key(found["readings_d90"]))
    original = store.get_bytes(first_key(found["readings_d80"]))
    altered = bytearray(original)
    altered[len(altered) // 2] ^= 0x01
    store.put_bytes(first_key(found["readings_d80"]), bytes(altered))

    result = run_retention(policy)
    assert result.status == "held_back" and result.exit_code == 5
    holds = held(result.lines)
    assert sorted(holds) == ["public.readings_d80", "public.readings_d90"]
    assert "is missing" in holds["public.readings_d90"]
    assert ("was altered" in holds["public.readings_d80"]) or ("was replaced" in holds["public.readings_d80"])
    assert relations(database, "readings_d%") == ["public.readings_d80", "public.readings_d90"]

    again = run_archive(policy)
    assert again.metrics["chunks_archived"] == 2
    assert manifests(store)["readings_d90"]["version"] == 2
    assert run_retention(policy).metrics["chunks_dropped"] == 2
    assert relations(database, "readings_d%") == []


def test_late_rows_become_a_new_version_and_changed_rows_wait_for_the_operator(
        database: str, storage: StorageConfig) -> None:
    create_readings(database)
    policy = policy_for(database, storage)
    store = open_store(storage)
    run_archive(policy)
    keys = parquet_keys(store)
    sql(database, "UPDATE readings SET value = value + 1 WHERE time = (SELECT min(time) FROM readings_d90)")
    sql(database, "INSERT INTO readings VALUES ((current_date - 70)::timestamptz + interval '23 hours', 9, 1, 2)")

    result = run_retention(policy)
    holds = held(result.lines)
    assert sorted(holds) == ["public.readings_d70", "public.readings_d90"]
    assert all("1 row(s) in the database are not in archive v1 yet" in line for line in holds.values())
    assert result.metrics["chunks_dropped"] == 2

    again = run_archive(policy)
    assert again.metrics["chunks_archived"] == 1, again.lines
    assert any("readings_d70: 1 row(s) added since archive v1 (late data): exporting v2 with all 51" in line
               for line in again.lines)
    changed = held(again.lines)["public.readings_d90"]
    assert "the database lacks 1 archived row(s) and holds 1 that are not archived" in changed
    found = manifests(store)
    assert (found["readings_d70"]["version"], found["readings_d70"]["rows"]) == (2, 51)
    assert found["readings_d90"]["version"] == 1, "an archive is never replaced by other rows unasked"
    assert len(parquet_keys(store)) == len(keys) and first_key(found["readings_d70"]) not in keys
    assert found["readings_d70"]["supersedes"][0]["version"] == 1, "the new version says what it replaced"

    assert "`archiver archive telemetry --table public.readings --accept-deletes 20" in changed
    accepted = changed.split("--accept-deletes ")[1].split("`")[0]
    decided = run_archive(policy, accept_deletes=[accepted])
    assert decided.metrics["chunks_archived"] == 1
    found = manifests(store)
    assert found["readings_d90"]["version"] == 2 and "deletion accepted" in found["readings_d90"]["change"]["reason"]
    assert 1.5 in read_archive(store, found["readings_d90"]).column("value").to_pylist()
    assert len(parquet_keys(store)) == len(keys), "readers never see two versions of a range"
    assert run_retention(policy).metrics["chunks_dropped"] == 2


class KillOnManifest(LocalStore):
    """A file store whose process dies right before the first archive manifest is written."""

    def writer(self, key: str, **kwargs: Any) -> ObjectWriter:
        if key.startswith("catalog/"):
            raise Killed(key)
        return super().writer(key, **kwargs)


def test_a_run_killed_between_upload_and_manifest_is_completed_by_the_next_run(database: str, local: StorageConfig) -> None:
    create_readings(database)
    policy = policy_for(database, local)
    store = open_store(local)
    with pytest.raises(Killed):
        run_archive(policy, store=KillOnManifest(store.root))  # type: ignore[attr-defined]
    assert len(parquet_keys(store)) >= 1 and manifests(store) == {}  # uploaded, never marked archived
    nothing = run_retention(policy)
    assert nothing.metrics["chunks_dropped"] == 0 and len(held(nothing.lines)) == 4
    assert any("no archive manifest at all" in line for line in nothing.lines), "uploads without manifests stay"

    result = run_archive(policy)
    assert result.metrics["chunks_archived"] == 4
    found = manifests(store)
    assert len(found) == 4 and len(parquet_keys(store)) == 4
    assert sum(read_archive(store, document).num_rows for document in found.values()) == 4 * 50
    assert run_retention(policy).metrics["chunks_dropped"] == 4


def test_a_run_killed_between_verification_and_drop_keeps_the_partition_and_the_next_run_drops_it(
        database: str, local: StorageConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    create_readings(database)
    policy = policy_for(database, local)
    run_archive(policy)
    real = detach_and_drop_partition

    def die_after_detach(current: Session, parent_schema: str, parent: str, schema: str, name: str) -> None:
        current.execute(f"ALTER TABLE {qualified(parent_schema, parent)} DETACH PARTITION {qualified(schema, name)}")
        raise Killed(name)

    monkeypatch.setattr(retention, "detach_and_drop_partition", die_after_detach)
    with pytest.raises(Killed):
        run_retention(policy)
    assert relations(database, "readings_d%") == [f"public.readings_d{age}" for age in sorted(AGES)]
    assert sql(database, "SELECT count(*) FROM readings")[0][0] == 4 * 50, "the detach was rolled back"
    monkeypatch.setattr(retention, "detach_and_drop_partition", real)
    assert run_retention(policy).metrics["chunks_dropped"] == 4


class CorruptingWriter(ObjectWriter):
    def __init__(self, inner: ObjectWriter) -> None:
        super().__init__(inner.key)
        self.inner = inner

    def _write(self, data: memoryview) -> None:
        chunk = bytearray(data)
        if self.size - len(chunk) <= 200 < self.size:
            chunk[200 - (self.size - len(chunk))] ^= 0xFF
        self.inner.write(chunk)

    def _commit(self) -> str | None:
        result = self.inner.commit()
        return result.etag

    def _abort(self) -> None:
        self.inner.abort()


class CorruptingStore(LocalStore):
    """Flips one bit of every Parquet object on its way to the disk (a faulty network or disk)."""

    def writer(self, key: str, **kwargs: Any) -> ObjectWriter:
        inner = super().writer(key, **kwargs)
        return CorruptingWriter(inner) if key.endswith(".parquet") else inner


def test_an_archive_that_does_not_read_back_identically_is_never_marked_archived(
        database: str, local: StorageConfig) -> None:
    create_readings(database)
    policy = policy_for(database, local)
    store = open_store(local)
    result = run_archive(policy, store=CorruptingStore(store.root))  # type: ignore[attr-defined]
    assert result.status == "verification_failed" and result.exit_code == 4
    assert result.metrics["chunks_archived"] == 0 and result.metrics["chunks_mismatched"] == 4
    assert manifests(store) == {} and parquet_keys(store) == []
    assert run_retention(policy).metrics["chunks_dropped"] == 0


def test_values_parquet_cannot_hold_are_held_back_with_a_hint_and_text_columns_archives_them(
        database: str, local: StorageConfig) -> None:
    create_readings(database)
    sql(database, "INSERT INTO readings VALUES ((current_date - 80)::timestamptz + interval '20 hours', 1, 1, 'NaN')")
    store = open_store(local)
    result = run_archive(policy_for(database, local))
    assert result.status == "held_back" and result.metrics["chunks_archived"] == 3
    holds = held(result.lines)
    assert list(holds) == ["public.readings_d80"]
    assert "column 'price' holds NaN or Infinity" in holds["public.readings_d80"]
    assert "text_columns" in holds["public.readings_d80"]
    assert len(parquet_keys(store)) == 3, "the aborted upload left nothing behind"

    result = run_archive(policy_for(database, local, text_columns=["price"]))
    assert result.status == "ok"
    document = manifests(store)["readings_d80"]
    prices = read_archive(store, document).column("price").to_pylist()
    assert "NaN" in prices and "1.25" in prices


def test_another_run_holding_the_lock_is_reported_at_once(database: str, local: StorageConfig) -> None:
    create_readings(database)
    policy = policy_for(database, local)
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        with database_lock(policy, "archive"):  # a running archive...
            entered.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert entered.wait(30)
        with pytest.raises(LockBusy, match="retention of policy 'telemetry' cannot start: the cold tier .* is busy: "
                                           "the database lock is held by archiver archive telemetry"):
            run_task(RETENTION, policy, RetentionOptions())  # ...keeps retention out
        assert run_task(ARCHIVE, policy, ArchiveOptions(dry_run=True)).status == "ok"  # a dry run reads only and takes no lock
    finally:
        release.set()
        holder.join()
    assert run_archive(policy).metrics["chunks_archived"] == 4


def test_parallel_exports_give_the_same_archives(database: str, local: StorageConfig) -> None:
    create_readings(database, rows=140)
    policy = policy_for(database, local, parallel=3)
    result = run_archive(policy)
    assert result.metrics["chunks_archived"] == 4 and result.metrics["rows"] == 560
    assert sorted(manifests(open_store(local))) == [f"readings_d{age}" for age in sorted(AGES)]


class FailingParquetStore(LocalStore):
    """A store whose Parquet uploads of one range fail (a full disk, a revoked bucket policy)."""

    failing = ""  # the start of the range whose uploads fail, as archive keys spell it

    def writer(self, key: str, **kwargs: Any) -> ObjectWriter:
        if key.endswith(".parquet") and f"/{self.failing}_" in key:
            raise StoreError(f"cannot write {self.describe(key)}: No space left on device")
        return super().writer(key, **kwargs)


def test_a_failing_chunk_fails_the_run_but_every_other_chunk_is_archived_and_reported(
        database: str, local: StorageConfig) -> None:
    create_readings(database)
    store = open_store(local)
    FailingParquetStore.failing = sql(database, "SELECT to_char((current_date - 80)::timestamptz AT TIME ZONE 'UTC', "
                                                "'YYYYMMDD\"T\"HH24MISS\"Z\"')")[0][0]
    with pytest.raises(ColdTierFailed) as failure:
        run_archive(policy_for(database, local), store=FailingParquetStore(store.root))  # type: ignore[attr-defined]
    assert failure.value.exit_code == 1 and "No space left on device" in str(failure.value)
    result = failure.value.result
    assert result.metrics["chunks_archived"] == 3 and result.metrics["chunks_failed"] == 1
    assert sum(line.startswith("exported") for line in result.lines) == 3
    assert sorted(manifests(store)) == ["readings_d60", "readings_d70", "readings_d90"]
