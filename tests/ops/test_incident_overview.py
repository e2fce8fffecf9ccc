"""The overviews an operator reads during an incident: ``status`` and ``backups list`` carry on
past a broken policy file (its own failing row), a failed listing never reads as "no backups",
and ``verify`` without any backup exits 1 as documented."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from archiver.common.timeutil import utcnow
from archiver.pg.scratch import free_port
from archiver.storage.local import LocalStore
from tests.backup_helpers import fake_backup, write_policy
from tests.helpers import run_cli

BROKEN = """database:
  dsn: dbname=billing
storage:
  url: file:///var/lib/archiver/billing
backup:
  schedule: "0 25 * * *"
"""


def policies_with_a_broken_file(tmp_path: Path) -> tuple[Path, LocalStore, str, Path]:
    store = LocalStore(tmp_path / "store")
    policies = tmp_path / "policies"
    write_policy(policies, "app", "${APP_DSN}", store.url)
    broken = policies / "billing.yaml"
    broken.write_text(BROKEN)
    return policies, store, fake_backup(store, utcnow() - timedelta(hours=2)), broken


def test_status_reports_a_broken_policy_file_as_its_own_failing_row(tmp_path: Path) -> None:
    policies, _, backup_id, broken = policies_with_a_broken_file(tmp_path)
    result = run_cli("--policies", str(policies), "status", "--json")
    assert result.code == 1, result.output
    app, billing = json.loads(result.stdout)["policies"]
    assert app["policy"] == "app" and app["healthy"] is True and app["newest_backup"]["id"] == backup_id
    assert billing["policy"] == "billing" and billing["healthy"] is False and billing["source"] == str(broken)
    assert billing["error"].startswith(f"{broken}:6:13  backup.schedule: bad cron expression")
    assert billing["problems"] == [f"the policy file does not load: {billing['error']}"]

    text = run_cli("--policies", str(policies), "status")
    assert text.code == 1
    rows = [line.split()[:2] for line in text.stdout.splitlines()[1:3]]
    assert rows == [["app", "ok"], ["billing", "PROBLEM"]]
    assert f"billing: the policy file does not load: {broken}:6:13  backup.schedule" in text.stdout


def test_backups_list_lists_the_good_policies_and_reports_the_broken_file(tmp_path: Path) -> None:
    policies, _, backup_id, broken = policies_with_a_broken_file(tmp_path)
    result = run_cli("--policies", str(policies), "backups", "list")
    assert result.code == 1
    assert [line.split()[:2] for line in result.stdout.splitlines()[1:]] == [["app", backup_id]]
    assert f"error: billing: the policy file does not load: {broken}:6:13  backup.schedule" in result.stderr
    assert "no backups" not in result.output
    (tmp_path / "store").rename(tmp_path / "elsewhere")  # app's store empty now: its listing works, finds none
    empty = run_cli("--policies", str(policies), "backups", "list")
    assert empty.code == 1 and empty.stdout == ""
    assert "no backups for app\n" in empty.stderr and "no backups for billing" not in empty.stderr
    (tmp_path / "elsewhere").rename(tmp_path / "store")
    listed = run_cli("--policies", str(policies), "backups", "list", "--json")
    assert listed.code == 1 and [b["id"] for b in json.loads(listed.stdout)["backups"]] == [backup_id]
    named = run_cli("--policies", str(policies), "backups", "list", "app")
    assert named.code == 0 and backup_id in named.stdout  # naming a good policy ignores the broken file


def test_a_failed_listing_never_says_no_backups(tmp_path: Path, s3_endpoint: str) -> None:
    policies = tmp_path / "policies"
    unreachable = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    path = write_policy(policies, "app", "dbname=app", "s3://backups/app", endpoint_url=unreachable)
    path.write_text(path.read_text().replace("  region: us-east-1\n", "  region: us-east-1\n  timeout: 3s\n"))
    for args in (("backups", "list", "app"), ("backups", "list"), ("backups", "list", "app", "--json")):
        result = run_cli("--policies", str(policies), *args)
        assert result.code == 1, result.output
        if "--json" in args:  # the error travels with the (empty) list: it cannot pass for "no backups"
            document = json.loads(result.stdout)
            assert document["backups"] == [] and "cannot reach the S3 endpoint" in document["errors"]["app"]
            assert "no backups" not in result.stderr
            continue
        assert "no backups" not in result.output and result.stdout == ""
        assert "error: app: cannot list s3://backups/app/backups/: cannot reach the S3 endpoint" in result.stderr
        assert unreachable in result.stderr


def test_verify_without_any_backup_exits_1(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    path = write_policy(tmp_path / "policies", "app", "${APP_DSN}", store.url)
    path.write_text(path.read_text() + "verify:\n  schedule: '0 5 * * 1'\n")
    result = run_cli("--policies", str(path.parent), "verify", "app")
    assert result.code == 1, result.output
    assert f"error: the drill could not run: no backups in {store.url}/backups/" in result.stderr
    named = run_cli("--policies", str(path.parent), "verify", "app", "--backup", "20260101T000000Z-0000")
    assert named.code == 2 and "no backup '20260101T000000Z-0000'" in named.stderr
