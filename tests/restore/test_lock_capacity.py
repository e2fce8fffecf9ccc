"""A restore in one transaction holds a lock per relation: a target whose lock table is too small
is refused before anything is written, naming the setting and the value it needs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from archiver.backup.task import run_backup
from archiver.errors import ExitCode
from archiver.pg.connect import execute
from archiver.pg.scratch import LocalPostgres
from archiver.restore.select import Source, select_backup
from archiver.restore.task import RestoreRequest, run_restore
from archiver.storage.local import LocalStore
from tests.backup_helpers import backup_policy, live_stats, load_policy, manifest_stats, read_manifest
from tests.restore_helpers import database_exists


@pytest.fixture(scope="module")
def small_server() -> Iterator[LocalPostgres]:
    """A target whose shared lock table holds 10 x 60 = 600 locks."""
    with LocalPostgres(settings={"max_locks_per_transaction": "10"}) as instance:
        yield instance


def test_a_target_with_too_few_locks_is_refused_before_anything_is_written(
        tmp_path: Path, database: str, small_server: LocalPostgres) -> None:
    execute(database, "".join(f"CREATE TABLE public.t{index} (id int PRIMARY KEY, v text);" for index in range(400)))
    store = LocalStore(tmp_path / "store")
    policy = load_policy(backup_policy(tmp_path, database, store, None))
    backup_id = str(run_backup(policy, store=store).data["id"])
    relations = read_manifest(store, backup_id)["database"]["relations"]
    assert relations >= 400 * 3, "tables, their primary key indexes and TOAST tables are counted"

    target = small_server.dsn("restored_here")
    with pytest.raises(Exception) as refused:
        run_restore(policy, RestoreRequest(target=target, backup_id=backup_id), confirm=lambda plan: True)
    assert getattr(refused.value, "exit_code", None) == ExitCode.USAGE
    message = str(refused.value)
    assert f"needs about {relations + 100:,} locks" in message and "holds 600" in message, message
    assert "set max_locks_per_transaction = " in message and "or restore with --jobs N" in message
    assert not database_exists(small_server, "restored_here"), "nothing was created"


def test_a_drill_sizes_its_scratch_for_the_backup(tmp_path: Path, database: str) -> None:
    execute(database, "".join(f"CREATE TABLE public.u{index} (id int PRIMARY KEY);" for index in range(50)))
    store = LocalStore(tmp_path / "store")
    policy = load_policy(backup_policy(tmp_path, database, store, None))
    backup_id = str(run_backup(policy, store=store).data["id"])
    from archiver.restore.drill import scratch_settings

    source = Source(select_backup(store, backup_id=backup_id))
    assert scratch_settings(source) == {"max_locks_per_transaction": "1024"}  # small: the floor
    document = read_manifest(store, backup_id)
    document["database"]["relations"] = 100_000
    big = Source(type(source.entry)(backup_id, document))
    assert int(scratch_settings(big)["max_locks_per_transaction"]) * 60 >= 2 * 100_000
    assert manifest_stats(document) == live_stats(database)
