"""The monitoring kit under deploy/monitoring/: alert rules, their promtool tests, the Prometheus Operator
objects and the Grafana dashboard.

The rules are checked and unit-tested by the real promtool (Debian's `prometheus` package; .ci/run
installs it): series fixtures that fire each alert and series that do not. Every PromQL expression of
the dashboard is parsed by promtool too (as a recording rule), and every metric a rule or a panel
names must be one that archiver's exporter has in its registry (read from the code, not from a list).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import PROJECT

MONITORING = PROJECT / "deploy" / "monitoring"
RULES = MONITORING / "rules" / "archiver.rules.yaml"
RULE_TESTS = MONITORING / "tests" / "archiver.rules.test.yaml"
DASHBOARD = MONITORING / "grafana" / "archiver-dashboard.json"
WORKER = PROJECT / "deploy" / "kubernetes" / "worker"
# Metrics Prometheus makes itself (`up`), and metrics an alert may be written for before the code exports them
# (none now: point-in-time recovery's WAL metric was one until the WAL archiving work exported it). The test
# below fails once the code exports a pending metric, so the entry is removed and the rule checked like any other.
FROM_PROMETHEUS = {"up"}
PENDING: dict[str, str] = {}


def promtool() -> str:
    binary = shutil.which("promtool")
    if not binary:
        pytest.skip("promtool is not installed (Debian: prometheus; .ci/run installs it)")
    return binary


def rule_groups() -> list[dict[str, Any]]:
    return yaml.safe_load(RULES.read_text())["groups"]


def alerts() -> list[dict[str, Any]]:
    return [rule for group in rule_groups() for rule in group["rules"] if "alert" in rule]


def exported_metrics() -> set[str]:
    """Every metric name archiver's exporter can serve: the worker's registry, process collectors included."""
    from archiver.ops.metrics import Metrics

    return Metrics(process=True).exported_names()


_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MODIFIERS = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right",
             "inf", "nan", "atan2"}


def metric_names(expression: str) -> set[str]:
    """The metric names a PromQL expression selects (it parses: promtool checks that separately)."""
    text = _STRINGS.sub('""', expression)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = _MODIFIERS.sub(" ", text)
    names = set()
    for match in re.finditer(r"(?<![\w:.])([A-Za-z_:][\w:]*)(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def test_metric_names_finds_selectors_and_skips_functions_labels_and_keywords() -> None:
    expression = ('sum by (policy, task) (increase(archiver_task_runs_total{result="held_back", x=~"a|b"}[8d])) >= 2 '
                  'and on (policy) group_left () max(up{job="w"}) unless time() - foo_seconds offset 5m')
    assert metric_names(expression) == {"archiver_task_runs_total", "up", "foo_seconds"}


def test_promtool_checks_the_rules() -> None:
    result = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {sum(len(group['rules']) for group in rule_groups())} rules found" in result.stdout


def test_promtool_rule_tests_fire_and_stay_quiet_for_every_alert() -> None:
    result = subprocess.run([promtool(), "test", "rules", RULE_TESTS.name], capture_output=True, text=True,
                            timeout=300, cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    cases = [case for test in yaml.safe_load(RULE_TESTS.read_text())["tests"] for case in test["alert_rule_test"]]
    for alert in alerts():
        mine = [case for case in cases if case["alertname"] == alert["alert"]]
        assert any(case["exp_alerts"] for case in mine), f"no fixture fires {alert['alert']}"
        assert any(not case["exp_alerts"] for case in mine), f"no fixture keeps {alert['alert']} quiet"


def test_the_prometheusrule_holds_the_rules_file_unchanged() -> None:
    (rule,) = [doc for doc in yaml.safe_load_all((MONITORING / "prometheusrule.yaml").read_text()) if doc]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["kind"] == "PrometheusRule"
    assert rule["metadata"]["namespace"] == "archiver"
    assert rule["spec"]["groups"] == rule_groups()


def test_alert_rules_name_only_metrics_the_exporter_serves() -> None:
    exported = exported_metrics()
    for alert in alerts():
        unknown = metric_names(alert["expr"]) - exported - FROM_PROMETHEUS - set(PENDING)
        assert not unknown, f"{alert['alert']} uses metrics archiver does not export: {sorted(unknown)}"
    assert not set(PENDING) & exported, "a pending metric is exported now: remove it from PENDING"
    for alert in alerts():
        assert alert["labels"]["severity"] in ("critical", "warning"), alert["alert"]
        assert alert["annotations"]["summary"] and alert["annotations"]["description"], alert["alert"]


def dashboard_expressions() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of the dashboard."""
    dashboard = json.loads(DASHBOARD.read_text())
    found = [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(found) >= 15
    return found


def concrete(expression: str) -> str:
    """Grafana's variables replaced by what they stand for, so that Prometheus' parser can read it."""
    return (expression.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$__range", "1d")
            .replace('"$policy"', '".*"'))


def test_every_dashboard_query_parses_and_names_only_exported_metrics(tmp_path: Path) -> None:
    expressions = dashboard_expressions()
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:query_{index}", "expr": concrete(expr)}
                                                        for index, (_, expr) in enumerate(expressions)]}]}
    path = tmp_path / "dashboard.rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    exported = exported_metrics()
    for title, expression in expressions:
        names = metric_names(concrete(expression))
        assert names, (title, expression)
        assert names <= exported, f"panel {title!r} uses metrics archiver does not export: {sorted(names - exported)}"
    variables = json.loads(DASHBOARD.read_text())["templating"]["list"]
    for variable in variables:
        if variable["type"] == "query":
            (metric,) = re.findall(r"label_values\((\w+),", variable["definition"])
            assert metric in exported, variable["name"]


def test_dashboard_covers_what_the_issue_asks_for() -> None:
    used = set().union(*(metric_names(concrete(expr)) for _, expr in dashboard_expressions()))
    for metric in ("archiver_newest_backup_timestamp_seconds", "archiver_newest_verified_backup_timestamp_seconds",
                   "archiver_newest_backup_size_bytes", "archiver_task_duration_seconds",
                   "archiver_task_chunks_archived_total", "archiver_task_chunks_dropped_total",
                   "archiver_task_chunks_held_back", "archiver_cold_tier_bytes", "archiver_task_last_result"):
        assert metric in used, metric
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "archiver-overview" and dashboard["timezone"] == "utc"
    datasources = {json.dumps(panel.get("datasource")) for panel in dashboard["panels"] if panel["type"] != "row"}
    assert datasources == {json.dumps({"type": "prometheus", "uid": "${datasource}"})}, "chosen on import"


def test_service_and_pod_monitors_scrape_the_worker_as_the_alerts_expect() -> None:
    (service,) = yaml.safe_load_all((WORKER / "service.yaml").read_text())
    (deployment,) = yaml.safe_load_all((WORKER / "deployment.yaml").read_text())
    worker_alert = next(alert for alert in alerts() if alert["alert"] == "ArchiverWorkerDown")
    (job,) = re.findall(r'job="([^"]+)"', worker_alert["expr"])
    for name, endpoints_key, labels, ports in (
        ("servicemonitor.yaml", "endpoints", service["metadata"]["labels"], [p["name"] for p in service["spec"]["ports"]]),
        ("podmonitor.yaml", "podMetricsEndpoints", deployment["spec"]["template"]["metadata"]["labels"],
         [p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]]),
    ):
        (monitor,) = [doc for doc in yaml.safe_load_all((MONITORING / name).read_text()) if doc]
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1", name
        assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["archiver"]}, name
        (endpoint,) = monitor["spec"][endpoints_key]
        assert endpoint["port"] in ports and endpoint["path"] == "/metrics", name
        assert {"action": "replace", "targetLabel": "job", "replacement": job} in endpoint["relabelings"], name
