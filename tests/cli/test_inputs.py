"""Bad flag values: exit 2 before anything runs, with a message that names the flag (issue 10)."""

from __future__ import annotations

from pathlib import Path

import pytest

from archiver.errors import ExitCode, UsageError
from archiver.restore.select import select_backup
from archiver.storage.local import LocalStore
from tests.helpers import run_cli

POLICY = """\
database: {dsn: 'host=127.0.0.1 port=1 dbname=app connect_timeout=1'}
storage: {url: 'file://STORE'}
backup: {schedule: '0 2 * * *'}
archive:
  schedule: '0 3 * * *'
  tables: [{table: public.metrics, archive_after: 7d}]
"""
ID_MESSAGE = "is not a backup id (format YYYYMMDDTHHMMSSZ-xxxx, e.g. 20261123T020000Z-3f9a)"


@pytest.fixture
def policies(tmp_path: Path) -> tuple[str, str]:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "app.yaml").write_text(POLICY.replace("STORE", str(tmp_path / "store")))
    return "--policies", str(tmp_path / "policies")


@pytest.mark.parametrize("command", [["restore", "app", "--target", "dbname=app", "--yes"], ["verify", "app"]])
@pytest.mark.parametrize("backup_id", ["../../etc", "20261123T020000Z-3f9a/../../x", "20261399T020000Z-3f9a",
                                       "20261123T020000Z-3f9a\n", ""])
def test_a_backup_id_that_is_not_one_is_exit_2(policies: tuple[str, str], tmp_path: Path, command: list[str],
                                               backup_id: str) -> None:
    result = run_cli(*policies, *command, "--backup", backup_id)
    assert result.code == 2, result.output
    assert f"error: --backup: {backup_id!r} {ID_MESSAGE}" in result.stderr
    assert not (tmp_path / "store").exists()  # refused before the store was opened


def test_the_core_refuses_a_bad_backup_id_too(tmp_path: Path) -> None:
    """Whoever calls it, select_backup never turns an unchecked id into a storage key."""
    with pytest.raises(UsageError) as caught:
        select_backup(LocalStore(str(tmp_path)), backup_id="../../etc")
    assert caught.value.exit_code == ExitCode.USAGE and ID_MESSAGE in str(caught.value)


@pytest.mark.parametrize("target, message", [
    ("dbname=app hots=db", 'error: --target: not a valid PostgreSQL connection string: invalid connection option "hots"'),
    ("dbname=app password=Kv9r Tz8q", "error: --target: not a valid PostgreSQL connection string: a word without "
                                      "\"=\" (write key=value pairs; quote a value that holds spaces: key='a b')"),
    ("dbname=app password=Kv9r Tz8q=1", "error: --target: not a valid PostgreSQL connection string: an unknown "
                                        "connection option (or a value holding spaces without quotes: write key='a b')"),
    ("host='unterminated", "error: --target: not a valid PostgreSQL connection string: unterminated quoted string"),
    ("postgresql://u:Hm4@Rt@db/app", "error: --target: not a valid PostgreSQL connection URL: an '@' is not "
                                     "percent-encoded"),
])
def test_a_malformed_target_says_it_is_the_target(policies: tuple[str, str], target: str, message: str) -> None:
    for command in (["restore", "app", "--yes"], ["restore-archive", "app", "--table", "metrics", "--from", "1",
                                                   "--to", "2"]):
        result = run_cli(*policies, *command, "--target", target)
        assert result.code == 2, result.output
        assert message in result.stderr
        assert "Tz8q" not in result.output and "Hm4@Rt" not in result.output and "Rt@db" not in result.output


@pytest.mark.parametrize("flag, value, message", [
    ("--from", "yesterday", "error: --from: 'yesterday' is neither a timestamp (ISO 8601, e.g. 2026-01-01 or "
                            "2026-01-01T06:00:00Z) nor an integer (for integer time columns)"),
    ("--to", "99999999999999999999", "error: --to: '99999999999999999999' is out of range for an integer time "
                                     "column (allowed -9223372036854775808..9223372036854775807)"),
    ("--from", "0001-01-01T00:00:00+01:00", "error: --from: '0001-01-01T00:00:00+01:00' is neither a timestamp"),
])
def test_restore_archive_bounds_name_their_flag(policies: tuple[str, str], flag: str, value: str,
                                                message: str) -> None:
    bounds = {"--from": "2026-01-01", "--to": "2026-02-01", flag: value}
    result = run_cli(*policies, "restore-archive", "app", "--table", "metrics", *[x for pair in bounds.items()
                                                                                 for x in pair])
    assert result.code == 2, result.output
    assert message in result.stderr


@pytest.mark.parametrize("before", ["last tuesday", "0001-01-01T00:00:00+01:00", "2026-13-01"])
def test_restore_before_names_its_flag(policies: tuple[str, str], before: str) -> None:
    result = run_cli(*policies, "restore", "app", "--target", "dbname=app", "--before", before, "--yes")
    assert result.code == 2, result.output
    assert f"error: --before: {before!r} is not a timestamp (allowed: ISO 8601" in result.stderr


def test_archive_table_not_in_the_policy_is_refused_before_connecting(policies: tuple[str, str]) -> None:
    result = run_cli(*policies, "archive", "app", "--table", "public.nosuch")
    assert result.code == 2, result.output
    assert "error: --table: table 'public.nosuch' is not in the policy's archive.tables (listed: public.metrics)" \
        in result.stderr
    assert "db.connect" not in result.stderr and "task.start" not in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--grace-period", "nan"], "error: --grace-period: nan is not a number of seconds from 0 to 86400"),
    (["--grace-period", "inf"], "error: --grace-period: inf is not a number of seconds from 0 to 86400"),
    (["--misfire-grace", "99999999999"], "Invalid value for '--misfire-grace': 99999999999 is not in the range "
                                         "1<=x<=31622400"),
    (["--listen", "999.1.1.1", "--port", "0"], "error: --listen 999.1.1.1 --port 0: cannot serve /metrics and "
                                               "/healthz there"),
])
def test_worker_flags(policies: tuple[str, str], args: list[str], message: str) -> None:
    result = run_cli(*policies, "worker", *args, timeout=120)
    assert result.code == 2, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_restore_jobs_is_bounded(policies: tuple[str, str]) -> None:
    result = run_cli(*policies, "restore", "app", "--target", "dbname=app", "--jobs", "1000", "--yes")
    assert result.code == 2 and "Invalid value for '--jobs': 1000 is not in the range 1<=x<=64" in result.stderr


@pytest.mark.parametrize("command", [["archive", "app"], ["restore-archive", "app", "--from", "1", "--to", "2"]])
@pytest.mark.parametrize("table", ["../../etc", "a.b.c", "x'; drop table y; --", ""])
def test_a_table_flag_that_is_not_a_table_name(policies: tuple[str, str], command: list[str], table: str) -> None:
    result = run_cli(*policies, *command, "--table", table)
    assert result.code == 2, result.output
    assert f"error: --table: {table!r} is not a table name (allowed schema.table (unquoted identifiers), " \
           "e.g. public.metrics or metrics)" in result.stderr
