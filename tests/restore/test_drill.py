"""``archiver verify``: restore drills into real throw-away PostgreSQL instances (local and container)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from archiver.backup.manifest import verification_key
from archiver.backup.task import run_backup
from archiver.pg.connect import connect, execute
from archiver.storage.base import Store
from archiver.storage.documents import read_json
from archiver.storage.local import LocalStore
from tests.backup_helpers import TELEMETRY_SCHEMA, backup_policy, load_policy, read_manifest
from tests.coldtier_helpers import first_key, manifests
from tests.helpers import CliResult, run_cli
from tests.restore_helpers import CORRUPTIONS, add_verify_section, damage, rewrite_manifest

CHECKS = [{"name": "devices present", "sql": "SELECT count(*) FROM app.devices", "expect": "== 300"},
          {"sql": "SELECT count(*) FROM identity.users WHERE email LIKE '%@example.com'", "expect": "between 500 and 510"}]


def drill_policy(tmp_path: Path, source: str, store: Store, s3: str | None, *, checks: list[dict[str, Any]] = CHECKS,
                 backup: dict[str, Any] | None = None, **verify: Any) -> Path:
    path = backup_policy(tmp_path, source, store, s3, **(backup or {}))
    return add_verify_section(path, checks=checks, scratch={"work_dir": "/var/tmp", **verify.pop("scratch", {})},
                              **verify)


def verify(policy_path: Path, *args: str) -> CliResult:
    return run_cli("--policies", str(policy_path.parent), "verify", "app", *args)


def listed(policy_path: Path) -> dict[str, str]:
    result = run_cli("--policies", str(policy_path.parent), "backups", "list", "app", "--json")
    assert result.code == 0, result.output
    verdicts = {"passed": "yes", "failed": "failed", None: "no"}
    return {item["id"]: verdicts[item["verification"]] for item in json.loads(result.stdout)["backups"]}


def test_a_drill_restores_checks_and_records_a_passed_verdict(
        tmp_path: Path, rich_database: tuple[str, str], store: Store, endpoint: str | None) -> None:
    source, _ = rich_database
    path = drill_policy(tmp_path, source, store, endpoint)
    backup_id = str(run_backup(load_policy(path), store=store).data["id"])
    assert listed(path) == {backup_id: "no"}

    result = verify(path, "--json")
    assert result.code == 0, result.output
    record = json.loads(result.stdout)
    assert record.pop("schema") == "archiver.verify/1"
    assert record == read_json(store, verification_key(backup_id))
    assert record["result"] == "passed" and record["backup_id"] == backup_id and record["failed"] == []
    checks = {(check["kind"], check["name"]): check for check in record["checks"]}
    document = read_manifest(store, backup_id)
    for table in document["content"]["tables"]:
        check = checks[("table", f"{table['schema']}.{table['name']}")]
        assert check["status"] == "pass"
        assert check["expected"] == check["actual"] == {"rows": table["rows"], "checksum": table["checksum"]}
    assert checks[("large_objects", "pg_largeobject")]["actual"] == document["content"]["large_objects"]
    assert checks[("object", document["objects"]["dump"]["key"])]["status"] == "pass"
    assert checks[("amcheck", "pg_amcheck")]["status"] == "pass"
    assert checks[("sql", "devices present")] == {"kind": "sql", "name": "devices present", "status": "pass",
                                                    "expected": "== 300", "actual": 300}
    assert checks[("sql", CHECKS[1]["sql"])]["actual"] == 502
    assert record["scratch"]["kind"] == "local" and record["scratch"]["server_version_num"] // 10000 == 15
    assert set(record["durations"]) >= {"scratch_start", "download", "restore", "checks", "total"}
    assert listed(path) == {backup_id: "yes"}


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_a_damaged_backup_fails_its_drill_with_exit_4(
        tmp_path: Path, rich_database: tuple[str, str], file_store: Store, how: str) -> None:
    source, _ = rich_database
    path = drill_policy(tmp_path, source, file_store, None, backup={"compression": {"codec": "none"}})
    earlier = str(run_backup(load_policy(path), store=file_store).data["id"])
    execute(source, "DELETE FROM app.processed_messages")
    backup_id = str(run_backup(load_policy(path), store=file_store).data["id"])
    damage(file_store, backup_id, how, other_backup=earlier, needle=b"user42@example.com")

    result = verify(path, "--backup", backup_id)
    assert result.code == 4, result.output
    record = read_json(file_store, verification_key(backup_id))
    assert record["result"] == "failed"
    (failed,) = [check for check in record["checks"] if check["status"] == "fail"]
    assert failed["kind"] == "object" and "dump.pgdump" in failed["name"]
    assert f"FAIL  object        {failed['name']}" in result.stdout
    assert listed(path) == {backup_id: "failed", earlier: "no"}
    assert read_manifest(file_store, earlier)["id"] == earlier  # the other backup is untouched


def test_a_failing_sql_check_fails_the_drill_showing_its_value(
        tmp_path: Path, rich_database: tuple[str, str], file_store: Store) -> None:
    source, _ = rich_database
    checks = [{"name": "enough devices", "sql": "SELECT count(*) FROM app.devices", "expect": "> 1000"},
              {"name": "broken query", "sql": "SELECT count(*) FROM no_such_table", "expect": "> 0"},
              {"name": "users present", "sql": "SELECT count(*) FROM identity.users", "expect": "> 0"}]
    path = drill_policy(tmp_path, source, file_store, None, checks=checks, amcheck=False)
    backup_id = str(run_backup(load_policy(path), store=file_store).data["id"])
    result = run_cli("--policies", str(path.parent), "run", "app", "verify")
    assert result.code == 4, result.output
    assert "FAIL  sql           enough devices: expected > 1000, got 300" in result.stderr
    assert 'FAIL  sql           broken query: expected > 0, got missing (query failed: ' in result.stderr
    assert 'relation "no_such_table" does not exist' in result.stderr
    assert "PASS  sql           users present: 502" in result.stderr
    record = read_json(file_store, verification_key(backup_id))
    assert record["failed"] == ["sql enough devices", "sql broken query"]
    assert not any(check["kind"] == "amcheck" for check in record["checks"])  # verify.amcheck: false
    run_record = read_json(file_store, "runs/verify.json")
    assert run_record["last_failure"]["status"] == "verification_failed"


def test_a_drill_that_cannot_run_exits_1_and_records_nothing(
        tmp_path: Path, rich_database: tuple[str, str], file_store: Store) -> None:
    source, _ = rich_database
    path = drill_policy(tmp_path, source, file_store, None)
    backup_id = str(run_backup(load_policy(path), store=file_store).data["id"])

    def needs_timescaledb(document: dict[str, Any]) -> None:
        document.update(timescaledb_version="9.9.9")
        document["database"]["extensions"]["timescaledb"] = "9.9.9"
    rewrite_manifest(file_store, backup_id, needs_timescaledb)
    result = verify(path)
    assert result.code == 1, result.output
    assert "9.9.9" in result.stderr
    assert file_store.head(verification_key(backup_id)) is None
    assert listed(path) == {backup_id: "no"}


@pytest.mark.timescaledb
def test_a_timescaledb_drill_checks_hypertables_chunks_and_the_continuous_aggregate(
        tmp_path: Path, database: str, s3_store: Store, s3_endpoint: str) -> None:
    with connect(database, safe_search_path=False) as conn:
        conn.execute(TELEMETRY_SCHEMA)
        conn.execute("CALL refresh_continuous_aggregate('asset_metrics_hourly', NULL, NULL)")
    checks = [{"name": "hourly buckets", "sql": "SELECT count(*) FROM asset_metrics_hourly", "expect": "== 864"},
              {"name": "compressed chunks", "sql": "SELECT count(*) FROM timescaledb_information.chunks "
                                                   "WHERE is_compressed", "expect": "== 3"}]
    path = drill_policy(tmp_path, database, s3_store, s3_endpoint, checks=checks)
    backup_id = str(run_backup(load_policy(path), store=s3_store).data["id"])
    hypertables = read_manifest(s3_store, backup_id)["content"]["hypertables"]
    assert {h["name"]: (h["chunks"], h["compressed_chunks"]) for h in hypertables}["asset_metrics"] == (6, 3)

    result = verify(path, "--json")
    assert result.code == 0, result.output
    record = json.loads(result.stdout)
    restored = {check["name"]: check for check in record["checks"] if check["kind"] == "hypertable"}
    assert restored["public.asset_metrics"]["actual"] == {"chunks": 6, "compressed_chunks": 3}
    assert len(restored) == 2  # the continuous aggregate's materialization hypertable too
    assert all(check["status"] == "pass" for check in record["checks"]), record["failed"]
    assert record["versions"]["timescaledb"] == read_manifest(s3_store, backup_id)["timescaledb_version"]


@pytest.mark.container
def test_a_full_drill_in_a_real_container(tmp_path: Path, rich_database: tuple[str, str], file_store: Store,
                                         container_scratch: dict[str, Any]) -> None:
    source, _ = rich_database
    scratch = {"kind": "container", "image": container_scratch["image"], "engine": container_scratch["engine"],
               "engine_args": container_scratch["engine_args"], "run_args": container_scratch["run_args"]}
    path = drill_policy(tmp_path, source, file_store, None, scratch=scratch)
    backup_id = str(run_backup(load_policy(path), store=file_store).data["id"])
    result = verify(path, "--json")
    assert result.code == 0, result.output
    record = json.loads(result.stdout)
    assert record["result"] == "passed", record["failed"]
    assert record["scratch"]["kind"] == "container" and record["scratch"]["image"] == container_scratch["image"]
    tables = [check for check in record["checks"] if check["kind"] == "table"]
    assert len(tables) == 7 and all(check["status"] == "pass" for check in tables)
    assert listed(path) == {backup_id: "yes"}
    engine = [str(container_scratch["engine"]), *container_scratch["engine_args"]]
    leftover = subprocess.run([*engine, "ps", "-aq", "--filter", "label=archiver.scratch=app"], capture_output=True,
                              text=True)
    assert leftover.stdout.strip() == ""  # the container is gone


def test_a_drill_with_archives_checks_every_cold_object(tmp_path: Path, database: str) -> None:
    from tests.coldtier_helpers import ARCHIVED, create_device_metrics

    create_device_metrics(database)
    path = tmp_path / "policies" / "app.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump({
        "database": {"dsn": database}, "storage": {"url": f"file://{tmp_path}/store"},
        "backup": {"schedule": "0 2 * * *"},
        "archive": {"schedule": "30 1 * * *", "tables": [{"table": "public.device_metrics", "archive_after": "30d"}]},
        "verify": {"schedule": "0 5 * * 1", "archives": True, "amcheck": False, "scratch": {"work_dir": "/var/tmp"}}}))
    for task in ("backup", "archive"):
        assert run_cli("--policies", str(path.parent), task, "app").code == 0
    result = verify(path, "--json")
    assert result.code == 0, result.output
    archives = {check["name"]: check for check in json.loads(result.stdout)["checks"] if check["kind"] == "archive"}
    assert sorted(archives) == sorted(f"public.device_metrics {name}" for name in ARCHIVED)
    assert all(check["status"] == "pass" for check in archives.values())
    assert archives["public.device_metrics device_metrics_d100"]["actual"] == {"rows": 150}

    store = LocalStore(tmp_path / "store")
    key = first_key(manifests(store)["device_metrics_d80"])
    store.put_bytes(key, store.get_bytes(key)[:-50])
    damaged = verify(path)
    assert damaged.code == 4, damaged.output
    assert "FAIL  archives      4 of 5 cold archives match their manifests" in damaged.stdout
    assert "FAIL  archive       public.device_metrics device_metrics_d80 (the object" in damaged.stdout
    assert "bytes, the manifest says" in damaged.stdout
    assert verify(path, "--no-archives").code == 0
