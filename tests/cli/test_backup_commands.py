"""The backup commands as cron runs them: the real console entry point in a subprocess."""

from __future__ import annotations

import json
import stat
from datetime import timedelta
from pathlib import Path

import yaml

from archiver.backup.manifest import dump_key, id_time, new_id
from archiver.common.timeutil import isoformat, utcnow
from archiver.pg.connect import execute
from archiver.pg.dsn import dsn_with
from archiver.storage.local import LocalStore
from archiver.storage.s3 import S3Store
from tests.backup_helpers import fake_backup, fetch_object, read_manifest, write_policy
from tests.helpers import run_cli


def small_database(dsn: str) -> str:
    execute(dsn, "CREATE TABLE users (id int PRIMARY KEY, email text);"
                    "INSERT INTO users SELECT i, 'u' || i || '@example.com' FROM generate_series(1, 100) AS i")
    return dsn


def test_backup_prints_its_id_and_keeps_secrets_out(tmp_path: Path, database: str) -> None:
    small_database(database)
    store = LocalStore(tmp_path / "store")
    policies = tmp_path / "policies"
    write_policy(policies, "identity", "${IDENTITY_DSN}", store.url)
    secret_dsn = dsn_with(database, password="pa:ss@w0rd-XYZ")  # the server trusts; libpq never sends it
    result = run_cli("--policies", str(policies), "--log-format", "json", "backup", "identity",
                     env={"IDENTITY_DSN": secret_dsn})
    assert result.code == 0, result.stderr
    backup_id = result.stdout.strip()
    assert id_time(backup_id) is not None and result.stdout == backup_id + "\n"
    document = read_manifest(store, backup_id)
    assert document["content"]["tables"][0]["rows"] == 100
    assert f"backup {backup_id} of " in result.stderr and "100 rows" in result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    (done,) = [e for e in events if e["event"] == "backup.done"]
    assert done["metrics"]["peak_rss_bytes"] > 0 and done["metrics"]["rows"] == 100
    stored = b"".join(path.read_bytes() for path in store.root.rglob("*") if path.is_file())
    for text in (result.stdout + result.stderr, json.dumps(document)):
        assert "pa:ss@w0rd-XYZ" not in text
    assert b"pa:ss@w0rd-XYZ" not in stored
    assert document["database"]["connection"].count("********") == 1


def test_backup_failure_exits_1_with_pg_dump_stderr(tmp_path: Path, database: str) -> None:
    small_database(database)
    store = LocalStore(tmp_path / "store")
    path = write_policy(tmp_path / "policies", "app", database, store.url,
                        backup={"pg_dump": {"extra_args": ["--strict-names", "--table=no_such_table"]}})
    result = run_cli("--policies", str(path.parent), "backup", "app")
    assert result.code == 1 and result.stdout == ""
    assert "error: pg_dump exited 1: backup " in result.stderr
    assert "pg_dump: error: no matching tables were found for pattern \"no_such_table\"" in result.stderr
    assert "hint: nothing of this backup was kept" in result.stderr
    assert list(store.list("backups/")) == []


def test_an_older_pg_dump_is_refused_before_anything_runs(tmp_path: Path, database: str) -> None:
    fake_bin = tmp_path / "pg14" / "bin"
    fake_bin.mkdir(parents=True)
    for program in ("pg_dump", "pg_dumpall"):
        # PostgreSQL 14's client is not installed here; its --version answer is all archiver reads.
        script = fake_bin / program
        script.write_text(f"#!/bin/sh\necho '{program} (PostgreSQL) 14.11'\n")
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    store = LocalStore(tmp_path / "store")
    path = write_policy(tmp_path / "policies", "app", database, store.url, database={"pg_bin_dir": str(fake_bin)})
    result = run_cli("--policies", str(path.parent), "backup", "app")
    assert result.code == 2
    assert f"pg_dump 14 ({fake_bin}/pg_dump) is older than the server (PostgreSQL 15)" in result.stderr
    assert "install postgresql-client-15" in result.stderr and "database.pg_bin_dir" in result.stderr
    assert list(store.list("backups/")) == []


def test_a_policy_without_backup_section_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "logs.yaml"
    path.write_text(yaml.safe_dump({"database": {"dsn": "dbname=logs"}, "storage": {"url": f"file://{tmp_path}/s"}}))
    result = run_cli("--policies", str(path), "backup", "logs")
    assert result.code == 2 and "policy 'logs' has no backup section" in result.stderr


def test_backups_list_every_policy_newest_first(tmp_path: Path, s3_store: S3Store, s3_endpoint: str) -> None:
    now = utcnow()
    files = LocalStore(tmp_path / "identity-store")
    policies = tmp_path / "policies"
    write_policy(policies, "identity", "${IDENTITY_DSN}", files.url)
    write_policy(policies, "telemetry", "${TELEMETRY_DSN}", s3_store.url, endpoint_url=s3_endpoint)
    oldest = fake_backup(files, now - timedelta(days=3), verified="passed")
    middle = fake_backup(s3_store, now - timedelta(days=2), verified="failed")
    newest = fake_backup(files, now - timedelta(hours=1))
    s3_store.put_bytes(dump_key(new_id(now), ".zst"), b"a killed run: no manifest")

    table = run_cli("--policies", str(policies), "backups", "list")  # DSN variables need not be set to list
    assert table.code == 0, table.stderr
    rows = [line.split() for line in table.stdout.splitlines()]
    assert rows[0] == ["POLICY", "ID", "TIME", "(UTC)", "SIZE", "DURATION", "VERIFIED"]
    assert [(r[0], r[1], r[-1]) for r in rows[1:]] == [("identity", newest, "no"), ("telemetry", middle, "failed"),
                                                       ("identity", oldest, "yes")]
    size = sum(o["size"] for o in read_manifest(files, newest)["objects"].values())
    assert rows[1][2:] == [f"{now - timedelta(hours=1):%Y-%m-%d}", f"{now - timedelta(hours=1):%H:%M:%S}",
                           f"{size / 1024:.1f}", "KiB", "42.0s", "no"]

    listed = json.loads(run_cli("--policies", str(policies), "backups", "list", "telemetry", "--json").stdout)
    assert listed["schema"] == "archiver.backups-list/1" and listed["errors"] == {}
    listed = listed["backups"]
    document = read_manifest(s3_store, middle)
    assert listed == [{"policy": "telemetry", "id": middle, "time": document["snapshot_time"],
                       "size": sum(o["size"] for o in document["objects"].values()), "duration_seconds": 42.0,
                       "verified": False, "verification": "failed", "database": "app"}]
    assert listed[0]["time"] == isoformat(now - timedelta(days=2))


def test_backups_list_reports_a_broken_store_and_lists_the_rest(tmp_path: Path, s3_endpoint: str) -> None:
    files = LocalStore(tmp_path / "store")
    policies = tmp_path / "policies"
    write_policy(policies, "identity", "dbname=identity", files.url)
    write_policy(policies, "telemetry", "dbname=telemetry", "s3://no-such-bucket-here/telemetry", endpoint_url=s3_endpoint)
    only = fake_backup(files, utcnow() - timedelta(hours=2))
    result = run_cli("--policies", str(policies), "backups", "list", "--json")
    assert result.code == 1
    assert [b["id"] for b in json.loads(result.stdout)["backups"]] == [only]
    assert "bucket does not exist" in json.loads(result.stdout)["errors"]["telemetry"]
    assert "error: telemetry: cannot list" in result.stderr and "bucket does not exist" in result.stderr
    empty = run_cli("--policies", str(policies), "backups", "list", "identity-nope")
    assert empty.code == 2 and "no valid policy named 'identity-nope'" in empty.stderr


def test_a_real_backup_is_listed_with_its_size(tmp_path: Path, database: str) -> None:
    small_database(database)
    store = LocalStore(tmp_path / "store")
    path = write_policy(tmp_path / "policies", "app", database, store.url)
    backup_id = run_cli("--policies", str(path.parent), "backup", "app").stdout.strip()
    listed = json.loads(run_cli("--policies", str(path.parent), "backups", "list", "--json").stdout)["backups"]
    document = read_manifest(store, backup_id)
    assert [(b["id"], b["size"], b["verified"], b["verification"]) for b in listed] == [
        (backup_id, document["objects"]["dump"]["size"] + document["objects"]["globals"]["size"], False, None)]
    assert b"CREATE TABLE public.users" in fetch_object(store, document["objects"]["dump"])
