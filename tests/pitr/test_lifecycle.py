"""Around the proof: prune, a timeline switch and a second recovery onto it, drills, status, refusals."""

from __future__ import annotations

import os
import pwd
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from archiver.ops.worker import Worker, WorkerConfig
from archiver.pg.connect import execute, query
from archiver.pg.scratch import free_port
from archiver.pitr.catalog import base_verification_key, scan_base_backups
from archiver.pitr.state import load_state
from archiver.pitr.walstore import scan_wal, stored_versions
from archiver.storage.documents import read_json
from tests.pitr_helpers import Rig, json_document, markers, pitr_rig, public_dir, server_clock, wait_stored


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    # True at every point of the window (the drill's default point is random, maybe before the first marker)
    verify = {"checks": [{"name": "markers", "sql": "SELECT count(*) FROM pg_catalog.pg_tables WHERE tablename = "
                          "'markers'", "expect": "== 1"}]}
    with pitr_rig("archive_command", {"url": "file://"}, retention={"keep_last": 1}, verify=verify) as made:
        execute(made.dsn, "CREATE TABLE markers (name text PRIMARY KEY)")
        yield made


def test_refusals_before_anything_is_written(rig: Rig, tmp_path: Path) -> None:
    empty = rig.cli("restore", "app", "--pitr", "--to-latest", "--data-dir", str(tmp_path / "x"), "--yes")
    assert empty.code == 2 and "outside the recoverable window: nothing is recoverable" in empty.stderr
    assert not (tmp_path / "x").exists()
    full = tmp_path / "full"
    full.mkdir()
    (full / "PG_VERSION").write_text("15\n")
    refused = rig.cli("restore", "app", "--pitr", "--to-latest", "--data-dir", str(full), "--yes")
    assert refused.code == 2 and f"--data-dir {full} is not empty" in refused.stderr
    assert sorted(path.name for path in full.iterdir()) == ["PG_VERSION"]
    mixed = rig.cli("restore", "app", "--pitr", "--to-latest", "--data-dir", str(tmp_path / "y"), "--target",
                    "dbname=x", "--yes")
    assert mixed.code == 2 and "--target belongs to a logical restore" in mixed.stderr
    two = rig.cli("restore", "app", "--pitr", "--to-latest", "--to-lsn", "0/1", "--data-dir", str(tmp_path / "y"))
    assert two.code == 2 and "exactly one of --to-time, --to-lsn, --to-latest (got --to-lsn, --to-latest)" in two.stderr
    prune = rig.cli("prune", "app")
    assert prune.code == 1 and "refusing to prune app: no base backups found" in prune.stderr


def test_a_timeline_switch_is_archived_and_a_second_recovery_follows_it(rig: Rig) -> None:
    assert rig.cli("basebackup", "app").code == 0
    execute(rig.dsn, "INSERT INTO markers VALUES ('A')")
    point = server_clock(rig.dsn)
    execute(rig.dsn, "INSERT INTO markers VALUES ('B')")
    rig.switch_and_wait()
    outside = rig.cli("restore", "app", "--pitr", "--to-time", "2001-01-01T00:00:00Z", "--data-dir",
                      str(rig.restore_dir("never")), "--yes")
    assert outside.code == 2 and "time 2001-01-01T00:00:00Z is outside the recoverable window: 20" in outside.stderr

    planned = rig.cli("restore", "app", "--pitr", "--to-time", point, "--data-dir", str(rig.restore_dir("planned")),
                      "--dry-run", "--json")
    plan = json_document("restore", planned.stdout)
    assert planned.code == 0 and plan["dry_run"] is True and plan["data"]["plan"]["base_backup"], planned.output
    assert not rig.restore_dir("planned").exists() or not any(rig.restore_dir("planned").iterdir())

    first, port = rig.restore_dir("branch"), free_port()
    result = rig.cli("restore", "app", "--pitr", "--to-time", point, "--data-dir", str(first), "--start", "--port",
                     str(port), "--keep-archiving", "--yes")
    assert result.code == 0, result.output
    rig.restored_server(first)
    branch = f"host=127.0.0.1 port={port} user=postgres dbname=app"
    assert markers(branch) == ["A"]
    execute(branch, "INSERT INTO markers VALUES ('C-on-timeline-2')")
    (name,) = query(branch, "SELECT pg_catalog.pg_walfile_name(pg_catalog.pg_switch_wal())")[0]
    assert name.startswith("00000002")
    wait_stored(rig.store, name)
    assert [item.name for item in stored_versions(rig.store, "00000002.history")] == ["00000002.history"]
    state = load_state(rig.store)
    assert state.window.latest_timeline == 2 and state.window.gaps() == []

    second, port2 = rig.restore_dir("on-timeline-2"), free_port()
    result = rig.cli("restore", "app", "--pitr", "--to-latest", "--data-dir", str(second), "--start", "--port",
                     str(port2), "--yes")
    assert result.code == 0, result.output
    rig.restored_server(second)
    assert markers(f"host=127.0.0.1 port={port2} user=postgres dbname=app") == ["A", "C-on-timeline-2"]
    assert "timeline 3 from" in result.stdout
    assert "00000003.history" not in [item.name for item in scan_wal(rig.store)], "archive_mode is off by default"


def test_a_drill_recovers_to_a_point_checks_it_and_records_the_verdict(rig: Rig) -> None:
    execute(rig.dsn, "INSERT INTO markers VALUES ('D') ON CONFLICT DO NOTHING")
    rig.switch_and_wait()
    result = rig.cli("verify", "app", "--pitr", "--json")
    assert result.code == 0, result.output
    record = json_document("verify", result.stdout)
    assert record["result"] == "passed" and record["target_chosen"] == "random point inside the recoverable window"
    kinds = {check["kind"]: check["status"] for check in record["checks"]}
    assert kinds == {"object": "pass", "recovery": "pass", "amcheck": "pass", "sql": "pass"}
    stored = read_json(rig.store, base_verification_key(record["base_backup_id"]))
    assert stored["target_time"] == record["target_time"]
    listed = json_document("backups-list", rig.cli("backups", "list", "app", "--json").stdout)
    assert any(entry["id"] == record["base_backup_id"] and entry["verified"] is True
               and entry["verification"] == "passed" for entry in listed["base_backups"])
    assert listed["pitr"]["app"]["newest_base_backup"]["verified"] is True and listed["pitr"]["app"]["window"]
    runs = read_json(rig.store, "runs/verify.json")
    assert runs["last_success"]["status"] == "ok"


def test_prune_keeps_a_gap_free_window_for_the_base_backups_it_keeps(rig: Rig) -> None:
    assert rig.cli("basebackup", "app").code == 0
    execute(rig.dsn, "INSERT INTO markers VALUES ('E')")
    rig.switch_and_wait()
    before = scan_base_backups(rig.store).backups
    assert len(before) == 2
    assert before[1].verified == "yes", "the drill above verified the older one: prune would keep it for that"
    rig.store.delete(base_verification_key(before[1].id))  # let keep_last 1 alone decide
    dry = rig.cli("prune", "app", "--dry-run")
    assert dry.code == 0, dry.output
    assert len(scan_base_backups(rig.store).backups) == 2
    result = rig.cli("prune", "app")
    assert result.code == 0, result.output
    (kept,) = scan_base_backups(rig.store).backups
    assert kept.id == before[0].id
    segnos = [item.file.segno() for item in scan_wal(rig.store) if item.file.kind in ("segment", "partial")]
    assert min(segnos) == kept.start_segno, "WAL before the kept base backup's start went; nothing after it"
    state = load_state(rig.store)
    assert state.window.gaps() == [] and len(state.window.ranges()) == 1
    assert [span.restorable for span in state.window.spans] == [True]


def test_status_flags_a_wal_lag_over_rpo_and_the_metrics_gauges(tmp_path: Path) -> None:
    with pitr_rig("archive_command", {"url": "file://"}, rpo="1min") as lagging:
        assert lagging.cli("basebackup", "app").code == 0
        lagging.switch_and_wait()
        healthy = lagging.cli("status", "--json", "--no-database")
        assert healthy.code == 0, healthy.output
        (entry,) = json_document("status", healthy.stdout)["policies"]
        assert entry["pitr"]["lag_seconds"] < 60 and entry["pitr"]["window"]
        for item in scan_wal(lagging.store):  # the same WAL, as if it had been archived in 2020
            if item.file.kind == "segment":
                aged = item.key.replace(item.completed.strftime("%Y%m%dT%H%M%S"), "20200101T000000")
                lagging.store.put_bytes(aged, lagging.store.get_bytes(item.key))
                lagging.store.delete(item.key)
        late = lagging.cli("status", "--no-database")
        assert late.code == 1, late.output
        assert "app: WAL archive lag" in late.stdout and "is over rpo 1min" in late.stdout
        worker = Worker(WorkerConfig(policies_path=str(lagging.policy_path), port=None))
        worker.load_policies()
        worker.refresh_status()
        stamp = worker.metrics.registry.get_sample_value("archiver_wal_last_archived_timestamp_seconds", {"policy": "app"})
        assert stamp is not None and stamp < 1_600_000_000


def test_basebackup_refuses_a_server_with_tablespaces_or_without_the_archiving_its_policy_expects() -> None:
    with pitr_rig("stream", {"url": "file://"}) as streaming:
        policy = yaml.safe_load(streaming.policy_path.read_text())
        policy["pitr"]["wal"] = {"method": "archive_command"}
        streaming.policy_path.write_text(yaml.safe_dump(policy))
        result = streaming.cli("basebackup", "app")
        assert result.code == 2 and "archive_mode = off: no WAL would reach the store" in result.stderr
        location = public_dir("archiver-tablespace-")
        entry = pwd.getpwnam("postgres")
        os.chown(location, entry.pw_uid, entry.pw_gid)
        try:
            streaming.server.psql(f"CREATE TABLESPACE extra LOCATION '{location}'")
            result = streaming.cli("basebackup", "app")
            assert result.code == 2 and f"tablespaces other than the default (extra ({location}))" in result.stderr
            assert scan_base_backups(streaming.store).backups == []
        finally:
            streaming.server.psql("DROP TABLESPACE IF EXISTS extra")
            shutil.rmtree(location, ignore_errors=True)
