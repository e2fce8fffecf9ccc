"""``archiver status`` and the worker's age metrics: fresh, stale, failing, failed drill."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import psycopg

from archiver.coldtier.manifest import ARCHIVE_CATALOG_PREFIX, list_archive_manifests
from archiver.common.timeutil import isoformat, utcnow
from archiver.ops import gauges
from archiver.ops.metrics import Metrics
from archiver.ops.runner import run_record_key
from archiver.ops.worker import Worker, WorkerConfig
from archiver.storage.documents import write_json
from archiver.storage.local import LocalStore
from tests.backup_helpers import fake_backup, write_policy
from tests.helpers import run_cli
from tests.webhook import WebhookReceiver


def test_status_after_a_real_backup_is_healthy(database: str, tmp_path: Path) -> None:
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("CREATE TABLE users AS SELECT g AS id FROM generate_series(1, 10) g")
    store = LocalStore(tmp_path / "store")
    policy = write_policy(tmp_path / "policies", "identity", "${IDENTITY_DSN}", store.url)
    assert run_cli("--policies", str(policy.parent), "backup", "identity", env={"IDENTITY_DSN": database}).code == 0
    result = run_cli("--policies", str(policy.parent), "status", "--json")  # no DSN needed: the store answers
    assert result.code == 0, result.output
    (entry,) = json.loads(result.stdout)["policies"]
    assert entry["policy"] == "identity" and entry["healthy"] is True and entry["problems"] == []
    assert 0 <= entry["newest_backup"]["age_seconds"] < 600
    assert entry["newest_backup"]["interval_seconds"] == 86400 and entry["newest_backup"]["stale"] is False
    assert entry["tasks"]["backup"]["last_success"] and entry["tasks"]["backup"]["failing"] is False


def test_stale_backup_failed_drill_and_failing_task_make_status_exit_1(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    policy = write_policy(tmp_path / "policies", "app", "${APP_DSN}", store.url)
    now = utcnow()
    proven = fake_backup(store, now - timedelta(days=4), verified="passed")
    newest = fake_backup(store, now - timedelta(days=3), verified="failed")
    write_json(store, run_record_key("backup"), {
        "task": "backup", "policy": "app",
        "last_success": {"finished_at": isoformat(now - timedelta(days=3))},
        "last_failure": {"finished_at": isoformat(now - timedelta(hours=2)), "error": "pg_dump exited 1: disk full"}})
    result = run_cli("--policies", str(policy.parent), "status", "--json")
    assert result.code == 1
    (entry,) = json.loads(result.stdout)["policies"]
    assert entry["healthy"] is False
    assert entry["newest_backup"]["id"] == newest and entry["newest_backup"]["stale"] is True
    assert 3 * 86400 - 60 <= entry["newest_backup"]["age_seconds"] <= 3 * 86400 + 600
    assert entry["newest_verified"]["id"] == proven
    problems = "\n".join(entry["problems"])
    assert "is 3d old" in problems and "stale after 2d" in problems
    assert f"the restore drill of the newest backup {newest} failed" in problems
    assert "backup is failing since" in problems and "disk full" in problems
    text = run_cli("--policies", str(policy.parent), "status")
    assert text.code == 1 and "PROBLEM" in text.stdout and f"app: the restore drill of the newest backup {newest} failed" in text.stdout


def test_worker_exports_backup_ages_and_notifies_a_stale_backup_once(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    store = LocalStore(tmp_path / "store")
    now = utcnow()
    newest = fake_backup(store, now - timedelta(days=3))
    proven = fake_backup(store, now - timedelta(days=5), verified="passed")
    with WebhookReceiver() as hook:
        policies = tmp_path / "policies"
        write_policy(policies, "app", "dbname=app", store.url)
        path = policies / "app.yaml"
        path.write_text(path.read_text() + "notify: {webhook_url: '${HOOK}'}\n")
        monkeypatch.setenv("HOOK", hook.url)
        worker = Worker(WorkerConfig(policies_path=str(policies), port=None))
        worker.load_policies(initial=True)
        worker.refresh_status()
        worker.refresh_status()  # still stale: no second notification
        assert [post["body"]["archiver"]["event"] for post in hook.posts] == ["stale"]
        assert newest in hook.posts[0]["body"]["text"]
    age = worker.metrics.registry.get_sample_value("archiver_newest_backup_age_seconds", {"policy": "app"})
    proven_age = worker.metrics.registry.get_sample_value("archiver_newest_verified_backup_age_seconds", {"policy": "app"})
    assert age is not None and 3 * 86400 - 60 <= age <= 3 * 86400 + 600
    assert proven_age is not None and 5 * 86400 - 60 <= proven_age <= 5 * 86400 + 600
    assert proven
    interval = worker.metrics.registry.get_sample_value("archiver_task_schedule_interval_seconds",
                                                        {"policy": "app", "task": "backup"})
    assert interval == 86400, "write_policy's backup runs daily"
    assert worker.metrics.registry.get_sample_value("archiver_newest_backup_size_bytes", {"policy": "app"}) is not None


def test_status_shows_archive_coverage_hot_dropped_and_gaps(database: str, tmp_path: Path) -> None:
    from archiver.coldtier.archive import run_archive
    from archiver.coldtier.manifest import objects_of
    from archiver.coldtier.retention import run_retention
    from archiver.ops.status import policy_status
    from archiver.policy.schema import StorageConfig
    from tests.coldtier_helpers import READING_AGES as AGES
    from tests.coldtier_helpers import create_readings, policy_for

    create_readings(database)
    policy = policy_for(database, StorageConfig(url=f"file://{tmp_path}/store"))
    before = policy_status(policy).archive
    assert before is not None
    # the oldest partition (90 days old, one day long) has been due since 89 - 30 days (archive_after 30d)
    lag = before["tables"]["public.readings"]["lag_seconds"]
    assert (max(AGES) - 1 - 30) * 86400 <= lag < (max(AGES) - 30) * 86400 + 3600
    archived = run_archive(policy).metrics["chunks_archived"]
    dropped = run_retention(policy).metrics["chunks_dropped"]
    coverage = policy_status(policy).archive
    assert coverage is not None and coverage["database"] == "checked"
    entry = coverage["tables"]["public.readings"]
    assert entry["archived"]["count"] == archived > 0
    assert entry["dropped"]["count"] == dropped > 0
    assert entry["hot"]["count"] == len(AGES) - dropped
    assert entry["hot_not_archived"] == len(AGES) - archived
    assert entry["lag_seconds"] == 0, "every partition past archive_after is archived"
    sizes = [entry["size"] for loaded in list_archive_manifests(LocalStore(tmp_path / "store"),
                                                                ARCHIVE_CATALOG_PREFIX).values()
             if loaded.document for entry in objects_of(loaded.document)]
    assert entry["archived"]["bytes"] == sum(sizes) > 0 and len(sizes) == archived
    metrics = Metrics()
    gauges.set_archive(metrics, policy_status(policy))
    labels = {"policy": policy.name, "table": "public.readings"}
    assert metrics.registry.get_sample_value("archiver_archive_lag_seconds", labels) == 0
    assert metrics.registry.get_sample_value("archiver_cold_tier_bytes", labels) == sum(sizes)
    assert metrics.registry.get_sample_value("archiver_cold_tier_objects", labels) == archived
    # the partitions are one day each at the ages listed: every missing day between them is a gap
    ages = sorted(AGES, reverse=True)
    expected_gaps = sum(1 for older, newer in zip(ages, ages[1:]) if older - newer > 1)
    assert len(entry["gaps"]) == expected_gaps
    store_only = policy_status(policy, check_database=False).archive
    assert store_only is not None and "hot" not in store_only["tables"]["public.readings"]
