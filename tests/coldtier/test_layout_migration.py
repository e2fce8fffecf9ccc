"""Archives of earlier layouts move to today's (issue 13, item 1): copy, verify, manifest, delete.

Archives are written by today's code, then rewritten as earlier archivers left them
(tests/lake_helpers.py): layout 1 (one file under ``year=/month=/day=`` of the range's start) and
format 1 (named and keyed after the chunk, ``_hyper_...``, which readers skip). Rows are read back
with pyarrow from the objects, and from the lake as a user's reader sees it.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import pytest

from archiver.coldtier.archive import run_archive
from archiver.coldtier.manifest import list_archive_manifests, objects_of
from archiver.coldtier.retention import run_retention
from archiver.policy.schema import StorageConfig
from archiver.restore.archive import run_restore_archive
from archiver.storage.backends import open_store
from archiver.storage.base import Store
from tests.coldtier_helpers import (
    ASSET_METRICS,
    create_device_metrics,
    days_ago,
    make_policy,
    parquet_keys,
    read_archive,
    sql,
    table,
)
from tests.helpers import run_cli
from tests.lake_helpers import downgrade, hive_rows


class Killed(BaseException):
    """The process died here."""


@pytest.fixture
def storage(tmp_path: Path) -> StorageConfig:
    return StorageConfig(url=f"file://{tmp_path}/store")


def root_of(storage: StorageConfig) -> Path:
    return Path(storage.url.removeprefix("file://"))


def current(store: Store) -> dict[str, dict[str, Any]]:
    found = list_archive_manifests(store, "catalog/archive/")
    return {key: loaded.document for key, loaded in found.items() if loaded.document}


def lake(store: Store, column: str = "id") -> collections.Counter[Any]:
    rows: collections.Counter[Any] = collections.Counter()
    for document in current(store).values():
        rows.update(read_archive(store, document).column(column).to_pylist())
    return rows


def test_layout_1_archives_move_to_daily_files_and_stop_shadowing_a_day_column(
        database: str, storage: StorageConfig) -> None:
    create_device_metrics(database)
    policy = make_policy(database, storage, [table("public.device_metrics", archive_after=30, drop_after=50)])
    store = open_store(storage)
    assert run_archive(policy).status == "ok"
    archived = lake(store)
    days = lake(store, "day")
    for key, document in current(store).items():
        downgrade(store, key, document)
    assert all("/year=" in key for key in parquet_keys(store))
    listing = parquet_keys(store)

    dry = run_archive(policy, migrate_only=True, dry_run=True)
    moves = [line for line in dry.lines if line.startswith("would move")]
    assert len(moves) == 5 and all("-> v2: archive/" in line and "/dt=" in line for line in moves), dry.lines
    assert dry.summary.startswith("dry run: would move 5 archive(s)") and parquet_keys(store) == listing

    moved = run_archive(policy, migrate_only=True)
    assert moved.status == "ok" and moved.metrics["archives_moved"] == 5, moved.lines
    documents = list(current(store).values())
    assert {(d["version"], d["layout"]["version"], d["layout"]["partition_key"], d["change"]["kind"])
            for d in documents} == {(2, 2, "dt", "migrate")}
    assert all(d["supersedes"][0]["objects"][0].split("/")[-2].startswith("day=") for d in documents)
    assert not any("/year=" in key for key in parquet_keys(store)), "the old objects are gone"
    assert lake(store) == archived, "the same rows, once each"
    seen = hive_rows(root_of(storage) / "archive", ["id", "day"])
    assert collections.Counter(row_id for row_id, _ in seen.elements()) == archived
    assert collections.Counter(day for _, day in seen.elements()) == days, "the day column keeps its own values"

    again = run_archive(policy)
    assert again.metrics["archives_moved"] == 0 and again.metrics["chunks_archived"] == 0, again.lines
    assert run_retention(policy).metrics["chunks_dropped"] == 4, "the moved archives prove the drop"
    back = run_restore_archive(policy, table="device_metrics", start=days_ago(101), end=days_ago(99))
    assert back.status == "ok" and back.metrics["rows"] == 150


def test_a_migration_killed_at_any_step_loses_nothing_and_the_next_run_finishes_it(
        database: str, storage: StorageConfig) -> None:
    create_device_metrics(database)
    policy = make_policy(database, storage, [table("public.device_metrics", archive_after=30)])
    store = open_store(storage)
    run_archive(policy)
    archived = lake(store)
    for key, document in current(store).items():
        downgrade(store, key, document)

    class KillAt:
        """The store of a run killed right before its first call of ``what`` on a key containing ``part``."""

        def __init__(self, inner: Store, what: str, part: str) -> None:
            self.inner, self.what, self.part = inner, what, part

        def __getattr__(self, name: str) -> Any:
            attribute = getattr(self.inner, name)
            if name != self.what:
                return attribute

            def call(key: str, *args: Any, **kwargs: Any) -> Any:
                if self.part in key:
                    raise Killed(f"{name} {key}")
                return attribute(key, *args, **kwargs)
            return call

    for what, part in (("put_bytes", "catalog/archive/"), ("delete", "/year=")):  # before / after the manifest
        with pytest.raises(Killed):
            run_archive(policy, migrate_only=True, store=KillAt(store, what, part))  # type: ignore[arg-type]
        assert lake(store) == archived, f"killed at {what} {part}: every row still in exactly one current archive"
    leftovers = run_archive(policy, migrate_only=True)
    removed = [line for line in leftovers.lines if line.startswith("removed")]
    assert removed and all("no manifest references it" in line for line in removed), leftovers.lines
    assert all(layout_of(d) == 2 for d in current(store).values()) and lake(store) == archived
    seen = hive_rows(root_of(storage) / "archive", ["id"])
    assert collections.Counter(row_id for (row_id,) in seen.elements()) == archived


def layout_of(document: dict[str, Any]) -> int:
    return int((document.get("layout") or {}).get("version", 1))


@pytest.mark.timescaledb
def test_chunk_named_archives_that_readers_skip_move_and_become_visible(database: str, storage: StorageConfig,
                                                                         tmp_path: Path) -> None:
    sql(database, ASSET_METRICS)
    policy = make_policy(database, storage, [table("public.asset_metrics", archive_after=30, drop_after=45)])
    store = open_store(storage)
    assert run_archive(policy).status == "ok"
    total = sum(lake(store, "time").values())
    for key, document in current(store).items():
        downgrade(store, key, document, legacy_name=document["chunk"]["name"])
    assert all(key.split("/")[-1].startswith("_hyper_") for key in parquet_keys(store))
    assert sum(hive_rows(root_of(storage) / "archive", ["time"]).values()) == 0, "readers skip _ names"
    assert sum(1 for d in current(store).values() if d["format_version"] == 1) == len(current(store))

    policies = _policy_file(tmp_path, database, storage)
    dry = run_cli("--policies", str(policies), "archive", "telemetry", "--migrate-layout", "--dry-run")
    assert dry.code == 0 and sum(line.startswith("would move") for line in dry.stdout.splitlines()) == len(current(store)), dry.output
    assert "_hyper_" in dry.stdout and "/dt=" in dry.stdout

    moved = run_archive(policy)
    assert moved.metrics["archives_moved"] == len(current(store)) and moved.metrics["chunks_archived"] == 0, moved.lines
    keys = parquet_keys(store)
    assert not any(part.startswith(("_", ".")) for key in keys for part in key.split("/")), keys
    assert {d["format_version"] for d in current(store).values()} == {2}
    assert all(d["identity"]["stem"] in objects_of(d)[0]["key"] for d in current(store).values())
    assert sum(hive_rows(root_of(storage) / "archive", ["time"]).values()) == total == sum(lake(store, "time").values())
    assert run_retention(policy).metrics["chunks_dropped"] > 0, "the moved archives prove the drop"


def _policy_file(tmp_path: Path, dsn: str, storage: StorageConfig) -> Path:
    directory = tmp_path / "policies"
    directory.mkdir(exist_ok=True)
    (directory / "telemetry.yaml").write_text(
        f"database: {{dsn: '{dsn}'}}\nstorage: {{url: '{storage.url}'}}\n"
        "archive:\n  schedule: '30 1 * * *'\n  tables:\n    - {table: public.asset_metrics, archive_after: 30d, "
        "drop_after: 45d}\n")
    return directory
