"""A target on an older minor release than the backup's source: warned in the plan with the exact
reason (a warning, not a refusal), and named as the likely cause when pg_restore then stops on
"unrecognized configuration parameter".

The backup is real; only its manifest's recorded source versions are raised above the test
server's (manifests are JSON; nothing else is recomputed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from archiver.backup.manifest import BackupEntry, backup_manifest_key
from archiver.backup.task import run_backup
from archiver.errors import ExternalCommandFailed, TaskFailed
from archiver.pg.connect import execute, query, server_version_num
from archiver.pg.scratch import LocalPostgres
from archiver.restore.plan import plan_restore
from archiver.restore.versions import likely_cause, older_minor_release
from archiver.storage.documents import read_json
from archiver.storage.local import LocalStore
from tests.backup_helpers import load_policy, new_database, write_policy
from tests.helpers import run_cli
from tests.restore_helpers import rewrite_manifest, user_tables


def newer_minor(document: dict[str, Any]) -> None:
    major = int(document["database"]["server_version_num"]) // 10000
    document["database"].update(server_version_num=major * 10000 + 99, server_version=f"{major}.99")
    document["tools"]["pg_dump"]["version"] = f"pg_dump (PostgreSQL) {major}.99"


def backed_up(tmp_path: Path, database: str) -> tuple[Path, LocalStore, str]:
    execute(database, "CREATE TABLE devices (id int PRIMARY KEY, name text); "
                         "INSERT INTO devices SELECT g, 'device ' || g FROM generate_series(1, 50) g")
    store = LocalStore(tmp_path / "store")
    path = write_policy(tmp_path / "policies", "app", database, store.url)
    return path, store, str(run_backup(load_policy(path), store=store).data["id"])


def test_an_older_minor_target_is_warned_with_the_reason_and_still_restores(
        tmp_path: Path, database: str, pg: LocalPostgres) -> None:
    path, store, backup_id = backed_up(tmp_path, database)
    rewrite_manifest(store, backup_id, newer_minor)
    server = server_version_num(database)
    _, target = new_database(pg)  # an empty database of the same server: same major, older minor than recorded
    current = f"{server // 10000}.{server % 10000}"
    major = server // 10000
    expected = (f"note     the target runs PostgreSQL {current}, an older minor release than the backup's source "
                f"(PostgreSQL {major}.99, dumped by pg_dump (PostgreSQL) {major}.99): a setting only the newer "
                f"release knows makes pg_restore fail with \"unrecognized configuration parameter\"; update the "
                f"target to {major}.99 or later to be sure")

    dry = run_cli("--policies", str(path.parent), "restore", "app", "--target", target, "--dry-run")
    assert dry.code == 0, dry.output
    assert any(line.startswith(expected) for line in dry.stdout.splitlines()), dry.stdout

    restored = run_cli("--policies", str(path.parent), "restore", "app", "--target", target, "--yes")
    assert restored.code == 0, restored.output  # a warning, not a refusal: this dump restores
    assert expected in restored.stderr
    assert user_tables(target) == ["public.devices"]
    assert query(target, "SELECT count(*) FROM public.devices") == [(50,)]


def test_the_same_release_gets_no_warning_and_a_parameter_error_names_the_older_minor(
        tmp_path: Path, database: str, pg: LocalPostgres) -> None:
    _, store, backup_id = backed_up(tmp_path, database)
    _, target = new_database(pg)
    entry = BackupEntry(backup_id, read_json(store, backup_manifest_key(backup_id)), None)
    plan = plan_restore(store, entry, target, policy="app")
    assert older_minor_release(plan) is None and not any("minor release" in note for note in plan.notes)

    document = rewrite_manifest(store, backup_id, newer_minor)
    plan = plan_restore(store, BackupEntry(backup_id, document, None), target, policy="app")
    warning = older_minor_release(plan)
    assert warning is not None and warning in plan.notes
    failure = ExternalCommandFailed("pg_restore", 1, 'pg_restore: error: could not execute query: ERROR:  '
                                    'unrecognized configuration parameter "transaction_timeout"\n'
                                    "Command was: SET transaction_timeout = 0;\n")
    assert likely_cause(plan, failure) == f"likely cause: {warning}"
    other = ExternalCommandFailed("pg_restore", 1, 'pg_restore: error: relation "devices" already exists\n')
    assert likely_cause(plan, other) is None
    assert likely_cause(plan, TaskFailed("unrecognized configuration parameter")) is None
