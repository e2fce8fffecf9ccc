"""What the metrics say: counters per result, held back is not a success, no ``_created``, build info,
OpenMetrics, and counters that keep counting through a real Pushgateway across separate runs."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from archiver import __version__
from archiver.common.result import TaskResult
from archiver.ops.metrics import RESULTS, Metrics
from archiver.ops.push import push_run
from archiver.pg.scratch import free_port
from archiver.policy.fields import Secret
from archiver.policy.schema import DatabaseConfig, Policy, StorageConfig
from tests.ops_helpers import sample


def runs(metrics: Metrics, result: str) -> float | None:
    return sample(metrics, "archiver_task_runs_total", policy="app", task="retention", result=result)


def test_every_result_is_counted_and_held_back_is_not_a_success() -> None:
    metrics = Metrics()
    metrics.record_success("app", "retention", TaskResult("app", "retention", metrics={"chunks_dropped": 3,
                                                                                        "chunks_held_back": 0}), 1.0)
    assert {result: runs(metrics, result) for result in RESULTS} == {
        "ok": 1, "held_back": 0, "failed": 0, "verification_failed": 0, "lock_busy": 0, "interrupted": 0}
    ok_at = sample(metrics, "archiver_task_last_success_timestamp_seconds", policy="app", task="retention")
    metrics.record_success("app", "retention", TaskResult("app", "retention", status="held_back",
                                                          metrics={"chunks_dropped": 2, "chunks_held_back": 1}), 1.0,
                           finished=(ok_at or 0) + 100)
    assert sample(metrics, "archiver_task_last_success_timestamp_seconds", policy="app", task="retention") == ok_at
    assert sample(metrics, "archiver_task_last_held_back_timestamp_seconds", policy="app", task="retention") == (ok_at or 0) + 100
    assert runs(metrics, "held_back") == 1 and runs(metrics, "ok") == 1
    # counters add every run up; gauges hold the last run's value
    assert sample(metrics, "archiver_task_chunks_dropped_total", policy="app", task="retention") == 5
    assert sample(metrics, "archiver_task_chunks_held_back", policy="app", task="retention") == 1

    def last(result: str) -> float | None:
        return sample(metrics, "archiver_task_last_result", policy="app", task="retention", result=result)

    assert (last("held_back"), last("ok"), last("failed"), last("verification_failed")) == (1, 0, 0, 0)
    metrics.record_failure("app", "retention", 0.1, result="lock_busy")  # did no work: the last result stays
    assert last("held_back") == 1 and runs(metrics, "lock_busy") == 1
    metrics.record_failure("app", "retention", 0.1)
    assert (last("held_back"), last("failed")) == (0, 1)
    metrics.record_interrupted("app", "retention", 0.1)
    assert last("failed") == 1 and runs(metrics, "interrupted") == 1


def test_exposition_has_build_info_no_created_series_and_openmetrics_on_request() -> None:
    metrics = Metrics()
    metrics.record_success("app", "backup", TaskResult("app", "backup", metrics={"bytes": 10}), 1.0)
    body, kind = metrics.exposition()
    text = body.decode()
    assert kind.startswith("text/plain; version=0.0.4")
    assert "_created" not in text
    assert 'archiver_build_info{python_version="' in text and f'version="{__version__}"}} 1.0' in text
    assert 'archiver_task_runs_total{policy="app",result="ok",task="backup"} 1.0' in text
    body, kind = metrics.exposition("application/openmetrics-text; version=1.0.0,text/plain;q=0.5")
    assert kind.startswith("application/openmetrics-text") and body.decode().endswith("# EOF\n")
    assert "_created" not in body.decode()
    assert "process_resident_memory_bytes" not in text, "a pushed run's process metrics would be stale"
    worker = Metrics(process=True).exposition()[0].decode()
    assert "process_resident_memory_bytes" in worker and "python_gc_collections_total" in worker


def gateway_samples(url: str, name: str) -> dict[str, float]:
    """``name``'s samples in the Pushgateway, by their labels as text."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        lines = response.read().decode().splitlines()
    return {line.split("{", 1)[1].rsplit("}", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in lines if line.startswith(name + "{")}


def policy() -> Policy:
    return Policy(database=DatabaseConfig(dsn=Secret("dbname=app")), storage=StorageConfig(url="file:///nonexistent"),
                  name="app", source="app.yaml")


def test_pushed_counters_keep_counting_across_runs_and_a_failure_keeps_the_last_success(pushgateway: str) -> None:
    for _ in range(2):  # two runs: two processes, each with fresh metrics
        metrics = Metrics()
        metrics.record_success("app", "backup", TaskResult("app", "backup", metrics={"bytes": 100}), 1.0)
        assert push_run(metrics, pushgateway, policy(), "backup")
    ok = 'instance="",job="archiver",policy="app",result="ok",task="backup"'
    assert gateway_samples(pushgateway, "archiver_task_runs_total")[ok] == 2
    success = gateway_samples(pushgateway, "archiver_task_last_success_timestamp_seconds")
    failed = Metrics()
    failed.record_failure("app", "backup", 2.0)
    assert push_run(failed, pushgateway, policy(), "backup")
    counts = gateway_samples(pushgateway, "archiver_task_runs_total")
    assert counts[ok] == 2 and counts[ok.replace('"ok"', '"failed"')] == 1
    assert gateway_samples(pushgateway, "archiver_task_last_success_timestamp_seconds") == success, \
        "the failed run's push must not wipe the last success"
    assert gateway_samples(pushgateway, "archiver_task_schedule_interval_seconds") == {}, "the policy has no schedule"
    assert gateway_samples(pushgateway, "archiver_newest_backup_age_seconds") == {}, "ages freeze in a Pushgateway"
    with urllib.request.urlopen(f"{pushgateway}/api/v1/metrics", timeout=10) as response:
        groups = json.loads(response.read())["data"]
    assert [group["labels"] for group in groups] == [{"job": "archiver", "policy": "app", "task": "backup"}]


def test_a_push_to_a_gateway_that_is_down_is_retried_counted_and_not_raised(tmp_path: Path) -> None:
    metrics = Metrics()
    metrics.record_success("app", "backup", TaskResult("app", "backup"), 1.0)
    assert push_run(metrics, f"http://127.0.0.1:{free_port()}", policy(), "backup") is False
    assert metrics.registry.get_sample_value("archiver_push_failures_total") == 3, "three attempts, each counted"


def test_each_shard_pushes_into_its_own_group_so_a_failed_shard_stays_visible(pushgateway: str) -> None:
    done, failed = Metrics(), Metrics()
    done.record_success("app", "archive", TaskResult("app", "archive"), 1.0)
    failed.record_failure("app", "archive", 2.0)
    assert push_run(failed, pushgateway, policy(), "archive", shard=(1, 2))
    assert push_run(done, pushgateway, policy(), "archive", shard=(0, 2))  # pushed last: would win one shared group
    results = gateway_samples(pushgateway, "archiver_task_last_result")
    failing = [labels for labels, value in results.items() if value == 1 and 'result="failed"' in labels]
    assert failing == ['instance="",job="archiver",policy="app",result="failed",shard="1/2",task="archive"']
    with urllib.request.urlopen(f"{pushgateway}/api/v1/metrics", timeout=10) as response:
        groups = json.loads(response.read())["data"]
    assert sorted(group["labels"]["shard"] for group in groups) == ["0/2", "1/2"]
