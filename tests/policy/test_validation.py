"""Policy files: every error at once, with file:line:col and the dotted key."""

from __future__ import annotations

import os
import re
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from archiver.common.cron import cron_trigger
from archiver.errors import UsageError
from archiver.policy.build import interpolate
from archiver.policy.fields import Secret
from archiver.policy.files import get_policy, load, load_policies
from archiver.policy.issues import PolicyError
from archiver.storage.url import bucket_name_problem
from tests.helpers import PROJECT, run_cli

GOOD = """\
database:
  dsn: ${DSN}
storage:
  url: s3://backups-bucket/app
backup:
  schedule: "0 2 * * *"
  retention: {keep_last: 3, keep_daily: 7}
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def issues_of(*paths: Path, env: dict[str, str] | None = None, strict: bool = False) -> list[str]:
    return [str(issue) for issue in load(paths, environ=env or {}, strict_env=strict).issues]


def test_shipped_policies_are_valid_and_exit_0() -> None:
    result = run_cli("policy", "validate", "policies")
    assert result.code == 0, result.output
    assert "3 policies valid: app, identity, telemetry" in result.stderr + result.stdout
    loaded = load([PROJECT / "policies"], environ={}, strict_env=False)
    by_name = {p.name: p for p in loaded.policies}
    assert by_name["identity"].backup.schedule == "0 2 * * *"
    assert by_name["telemetry"].backup.schedule == "0 3 * * 0"
    table = by_name["telemetry"].archive.tables[0]
    assert (table.archive_after, table.drop_after) == (timedelta(days=7), timedelta(days=90))
    assert by_name["telemetry"].archive.cold_retention == timedelta(days=730)


def test_five_mistakes_give_five_errors_with_lines_and_exit_2(tmp_path: Path) -> None:
    path = write(tmp_path, "broken.yaml", """\
        database:
          dsn: postgresql://app:hunter2@db.internal/app
        storage:
          url: s3://Bad_Bucket/app
        backup:
          schedule: "0 25 * * *"
          retension: {keep_last: 3}
        archive:
          schedule: "30 1 * * *"
          tables:
            - {table: public.metrics, archive_after: 7d, drop_after: 3d}
        """)
    result = run_cli("policy", "validate", str(path))
    assert result.code == 2, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith(str(path))]
    assert len(lines) == 5, result.stdout
    expected = [
        (2, "database.dsn: contains a literal password"),
        (4, "storage.url: bucket name may hold only lowercase"),
        (6, "backup.schedule: bad cron expression"),
        (7, "backup.retension: unknown key (got 'retension'; allowed schedule, retention"),
        (11, "archive.tables[0].drop_after: is shorter than archive_after"),
    ]
    for line, (number, text) in zip(lines, expected):
        assert re.match(rf"{re.escape(str(path))}:{number}:\d+  ", line), line
        assert text in line, line
    assert "did you mean 'retention'?" in lines[3]
    assert "hunter2" not in result.output


@pytest.mark.parametrize("text, expected", [
    ("database: {dsn: 'dbname=x'}\nstorage: {url: 's3://ok-bucket/p'}\nbackup: {schedule: '0 2 * * *', retention: {keep_last: -1}}\n",
     "3:56  backup.retention.keep_last: out of range (got -1; allowed 0..1000000)"),
    ("database: {dsn: 'dbname=x'}\nstorage: {url: 's3://ok-bucket/p', sse: AES512}\n",
     "storage.sse: invalid value (got 'AES512'; allowed AES256, aws:kms)"),
    ("database: {dsn: 'dbname=x'}\nstorage: {url: 's3://ok-bucket/p'}\narchive: {schedule: '0 1 * * *', tables: [{table: t, archive_after: 7m}]}\n",
     "archive.tables[0].archive_after: unit 'm' is ambiguous"),
    ("database: {dsn: 'dbname=x'}\nstorage: {url: 's3://ok-bucket/p'}\nbackup: {schedule: '0 2 * * *', globals: maybe}\n",
     "backup.globals: wrong type (got 'maybe'; allowed true or false)"),
    ("database: {dsn: 'dbname=x'}\nstorage: {url: 's3://ok-bucket'}\nbackup: {schedule: '0 2 * * *', retention: {keep_last: 2}}\n",
     "storage.url: has no prefix while pruning is on"),
    ("database: {dsn: 'dbname=x'}\nstorage: {url: 'ftp://host/x'}\n", "storage.url: unsupported scheme"),
    ("database: {dsn: 'dbname=x', dsn_file: /etc/x}\nstorage: {url: 'file:///srv/b'}\n", "database: set exactly one of dsn or dsn_file (got both)"),
    ("storage: {url: 'file:///srv/b'}\n", "database: missing required section"),
    ("database: {dsn: 'dbname=x'}\ndatabase: {dsn: 'dbname=y'}\nstorage: {url: 'file:///srv/b'}\n", "2:1  database: duplicate key"),
    ("database: {dsn: 'dbname=x'}\nstorage: {url: 'file:///srv/b'}\nverify: {schedule: '0 5 * * 1', checks: [{sql: 'select 1', expect: 'about 3'}]}\n",
     "verify.checks[0].expect: not an expectation"),
    ("database: {dsn: 'dbname=x'}\nstorage: {url: 'file:///srv/b'}\nverify: {schedule: '0 5 * * 1', scratch: {kind: container}}\n",
     "verify.scratch: kind container needs an image"),
    ("database: {dsn: 'dbname=x'}\nstorage: {url: 'file:///srv/b'}\nbackup: {schedule: '0 2 1 * 1'}\n",
     "backup.schedule: bad cron expression: restricting both day-of-month and day-of-week is ambiguous"),
    ("database: {dsn: 'dbname=x'}\nstorage: {url: 'file:///srv/b'}\nbackup: {schedule: '0 2 * * *', pg_dump: {extra_args: ['--file=/tmp/x']}}\n",
     "backup.pg_dump.extra_args: argument '--file=/tmp/x' is managed by archiver"),
    ("database: {dsn: 'dbname=x'}\nstorage: {url: 'file:///srv/b'}\nnotify: {webhook_url: 'https://hooks.slack.com/services/T/B/secret'}\n",
     "notify.webhook_url: must come from the environment"),
    ("database: {dsn: 'dbname=x'}\nstorage: {url: 'file:///srv/b'}\nbackup: {schedule: '0 2 * * *', retention: {min_keep: 2}}\n",
     "backup.retention: has no keep_* rule"),
    ("database: [x]\nstorage: {url: 'file:///srv/b'}\n", "database: expected a mapping (got a list)"),
    ("database: {dsn: x\nstorage: {url: 'file:///srv/b'}\n", "YAML syntax error"),
])
def test_each_kind_of_mistake_is_reported(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, "p.yaml", text)
    found = issues_of(path)
    assert any(expected in issue for issue in found), found


def test_bucket_names_s3_would_reject() -> None:
    for bad in ("ab", "UPPER", "under_score", "-dash", "192.168.1.1", "a..b", "xn--punycode", "x" * 64, "ends-s3alias"):
        assert bucket_name_problem(bad), bad
    for good in ("acme-db-backups", "a.b.c", "abc", "1bucket"):
        assert bucket_name_problem(good) is None, good


def test_duplicate_names_and_overlapping_storage_across_files(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "name: shared\n" + GOOD)
    write(tmp_path, "b.yaml", "name: shared\n" + GOOD.replace("backups-bucket/app", "backups-bucket/app/nested"))
    found = issues_of(tmp_path)
    assert sum("duplicate policy name 'shared'" in issue for issue in found) == 2, found
    assert sum("storage.url: overlaps policy 'shared'" in issue for issue in found) == 2, found
    assert any(re.match(rf"{re.escape(str(tmp_path / 'b.yaml'))}:1:\d+  name:", issue) for issue in found), found


def test_env_interpolation_defaults_and_escapes() -> None:
    assert interpolate("${A}/${B:-fallback}/$${C}", {"A": "x"}) == ("x/fallback/${C}", [])
    assert interpolate("${MISSING}", {}) == ("${MISSING}", ["MISSING"])
    assert interpolate("${EMPTY:-d}", {"EMPTY": ""}) == ("d", [])


def test_unset_env_is_a_note_for_validate_but_an_error_for_running(tmp_path: Path) -> None:
    path = write(tmp_path, "app.yaml", GOOD)
    assert issues_of(path) == []
    strict = issues_of(path, strict=True)
    assert len(strict) == 1 and "database.dsn: environment variable DSN is not set" in strict[0]
    with pytest.raises(PolicyError) as caught:
        get_policy([tmp_path], "app", environ={})
    assert caught.value.exit_code == 2
    policy = get_policy([tmp_path], "app", environ={"DSN": "host=db dbname=app"})
    assert policy.database.resolved_dsn() == "host=db dbname=app"


def test_running_one_policy_needs_only_its_own_environment(tmp_path: Path) -> None:
    write(tmp_path, "app.yaml", GOOD)
    write(tmp_path, "other.yaml", GOOD.replace("${DSN}", "${OTHER_DSN}").replace("/app", "/other"))
    policy = get_policy([tmp_path], "app", environ={"DSN": "dbname=app"})
    assert policy.name == "app"
    with pytest.raises(PolicyError):
        load_policies([tmp_path], environ={"DSN": "dbname=app"})


def test_optional_key_with_empty_env_default_is_unset(tmp_path: Path) -> None:
    path = write(tmp_path, "app.yaml", GOOD + "  \nnotify: {webhook_url: '${HOOK:-}'}\n")
    policy = load([path], environ={"DSN": "dbname=app"}, strict_env=True).policies
    assert policy and policy[0].notify is not None and policy[0].notify.webhook_url is None


def test_dsn_from_env_with_password_is_fine_but_never_shown(tmp_path: Path) -> None:
    write(tmp_path, "app.yaml", GOOD)
    env = {**os.environ, "DSN": "host=db.internal user=app password='p@ss:w0rd' dbname=app"}
    result = run_cli("--policies", str(tmp_path), "policy", "show", "app", env=env)
    assert result.code == 0, result.output
    assert "p@ss:w0rd" not in result.output
    assert "password=********" in result.stdout
    policy = get_policy([tmp_path], "app", environ=env)
    assert isinstance(policy.database.dsn, Secret)
    assert "p@ss" not in repr(policy) and "p@ss" not in str(policy.database)


def test_dsn_file_must_not_be_group_readable(tmp_path: Path) -> None:
    secret = tmp_path / "dsn"
    secret.write_text("host=db dbname=app password=pw\n")
    write(tmp_path, "app.yaml", GOOD.replace("dsn: ${DSN}", f"dsn_file: {secret}"))
    policy = get_policy([tmp_path], "app", environ={})
    secret.chmod(0o644)
    with pytest.raises(UsageError, match="readable by group or others.*chmod 600"):
        policy.database.resolved_dsn()
    secret.chmod(0o600)
    assert policy.database.resolved_dsn() == "host=db dbname=app password=pw"


def test_name_defaults_to_file_stem_and_merge_keys_work(tmp_path: Path) -> None:
    path = write(tmp_path, "billing.yaml", """\
        x-defaults: &storage {url: 'file:///srv/backups/billing'}
        database: {dsn: 'dbname=billing'}
        storage:
          <<: *storage
        """)
    found = issues_of(path)
    assert len(found) == 1 and "x-defaults: unknown key" in found[0]
    path.write_text("database: {dsn: 'dbname=billing'}\nstorage: {url: 'file:///srv/backups/billing'}\n")
    result = load([path], environ={})
    assert [p.name for p in result.policies] == ["billing"]


def test_crontab_weekdays_count_from_sunday() -> None:
    monday = datetime(2026, 11, 23, tzinfo=UTC)
    sunday_run = cron_trigger("0 3 * * 0").get_next_fire_time(None, monday)
    assert sunday_run.strftime("%A %H:%M") == "Sunday 03:00"
    assert cron_trigger("0 3 * * 7").get_next_fire_time(None, monday).strftime("%A") == "Sunday"
    workdays = cron_trigger("0 3 * * 1-5")
    fired, moment = [], monday
    for _ in range(7):
        moment = workdays.get_next_fire_time(None, moment + timedelta(seconds=1))
        fired.append(moment.strftime("%a"))
    assert fired == ["Mon", "Tue", "Wed", "Thu", "Fri", "Mon", "Tue"]
