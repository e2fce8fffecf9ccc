"""pg_dump / pg_dumpall wrappers: the exact argv, name patterns, stderr capture, version refusal."""

from __future__ import annotations

import stat
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from archiver.backup.dump import (
    child_env,
    is_expected_warning,
    parse_name_pattern,
    pg_dump_argv,
    pg_dumpall_globals_argv,
)
from archiver.common.process import TAIL_LINES, StderrCapture, StreamingCommand
from archiver.errors import ExternalCommandFailed, UsageError
from archiver.pg import binaries
from archiver.pg.binaries import find_tool
from archiver.policy.schema import PgDumpConfig


def test_pg_dump_argv_is_custom_format_uncompressed_with_the_snapshot() -> None:
    argv = pg_dump_argv(Path("/usr/lib/postgresql/15/bin/pg_dump"), PgDumpConfig(), "00000003-0000001B-1")
    assert argv == ["/usr/lib/postgresql/15/bin/pg_dump", "--format=custom", "--compress=0", "--no-password",
                    "--snapshot=00000003-0000001B-1"]


def test_pg_dump_argv_carries_the_policy_options_and_no_connection() -> None:
    options = PgDumpConfig(exclude_schemas=["scratch*"], exclude_tables=["public.tmp_*", '"Odd.Name"'],
                           exclude_table_data=["public.processed_messages"], lock_wait_timeout=timedelta(seconds=90),
                           extra_args=["--no-comments"])
    argv = pg_dump_argv(Path("/bin/pg_dump"), options, "snap")
    assert argv == ["/bin/pg_dump", "--format=custom", "--compress=0", "--no-password", "--snapshot=snap",
                    "--lock-wait-timeout=90000", "--exclude-schema=scratch*", "--exclude-table=public.tmp_*",
                    '--exclude-table="Odd.Name"', "--exclude-table-data=public.processed_messages", "--no-comments"]


@pytest.mark.parametrize("passwords, expected", [
    (False, ["/bin/pg_dumpall", "--globals-only", "--no-password", "--no-role-passwords", "--database=app"]),
    (True, ["/bin/pg_dumpall", "--globals-only", "--no-password", "--database=app"]),
])
def test_pg_dumpall_argv(passwords: bool, expected: list[str]) -> None:
    assert pg_dumpall_globals_argv(Path("/bin/pg_dumpall"), database="app",
                                        include_role_passwords=passwords) == expected


def test_child_env_names_the_program_and_keeps_the_dsn_application_name() -> None:
    env = child_env({"PGHOST": "db", "PGPASSWORD": "s3cret"}, "archiver pg_dump x")
    assert env["PGAPPNAME"] == "archiver pg_dump x" and env["PGPASSWORD"] == "s3cret"
    assert child_env({"PGAPPNAME": "mine"}, "archiver")["PGAPPNAME"] == "mine"


@pytest.mark.parametrize("pattern, schema, name", [
    ("public.tmp_*", "^(public)$", "^(tmp_.*)$"),
    ("Metrics", None, "^(metrics)$"),
    ('"MixedCase"."Table.With.Dots"', "^(MixedCase)$", "^(Table\\.With\\.Dots)$"),
    ('"say ""hi"""', None, '^(say "hi")$'),
    ("app.price$?", "^(app)$", "^(price\\$.)$"),
    ("public.part_[0-9]*", "^(public)$", "^(part_[0-9].*)$"),
    ("db.app.t", "^(app)$", "^(t)$"),
])
def test_name_patterns_follow_psql_rules(pattern: str, schema: str | None, name: str) -> None:
    parsed = parse_name_pattern(pattern)
    assert (parsed.schema, parsed.name) == (schema, name)


def test_stderr_capture_keeps_a_bounded_tail_and_every_warning_with_its_detail() -> None:
    capture = StderrCapture("pg_dump")
    for line in (b"pg_dump: warning: there are circular foreign-key constraints on this table:\n",
                 b"pg_dump: detail: hypertable\n", b"pg_dump: hint: You might not be able to restore...\n",
                 b"pg_dump: last built-in OID is 16383\n"):
        capture.add(line)
    for number in range(100):
        capture.add(f"pg_dump: reading table {number}\n".encode())
    assert capture.warnings == ["pg_dump: warning: there are circular foreign-key constraints on this table:\n"
                                "pg_dump: detail: hypertable\npg_dump: hint: You might not be able to restore..."]
    tail = capture.text().splitlines()
    assert len(tail) == TAIL_LINES and tail[-1] == "pg_dump: reading table 99"


def test_circular_fk_warnings_are_expected_only_with_timescaledb() -> None:
    warning = "pg_dump: warning: there are circular foreign-key constraints on this table:\npg_dump: detail: chunk"
    assert is_expected_warning(warning, {"timescaledb": "2.28.3"})
    assert not is_expected_warning(warning, {"plpgsql": "1.0"})
    assert not is_expected_warning("pg_dump: warning: could not find x", {"timescaledb": "2.28.3"})


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_streaming_command_yields_stdout_and_raises_with_the_stderr_tail() -> None:
    code = "import sys; sys.stdout.buffer.write(b'x' * 3_000_000); sys.stderr.write('boom: disk on fire\\n'); sys.exit(3)"
    with StreamingCommand(_python(code), {}, "fake", what="test") as child:
        received = sum(len(chunk) for chunk in child.chunks())
        with pytest.raises(ExternalCommandFailed) as failure:
            child.finish()
    assert received == 3_000_000
    assert failure.value.returncode == 3
    assert "fake exited 3: test" in str(failure.value) and "boom: disk on fire" in str(failure.value)


def test_streaming_command_kills_its_child_when_the_reader_fails() -> None:
    code = "import sys\nwhile True: sys.stdout.buffer.write(b'y' * 65536)"
    with pytest.raises(RuntimeError):
        with StreamingCommand(_python(code), {}, "endless") as child:
            next(child.chunks())
            raise RuntimeError("the store failed")
    assert child.process is not None and child.process.returncode is not None and child.process.returncode < 0


def _fake_program(directory: Path, name: str, version: str) -> None:
    # Only PostgreSQL 15 is installed here; an older client is imitated by its --version answer,
    # which is all archiver reads before refusing it.
    path = directory / name
    path.write_text(f"#!/bin/sh\necho '{name} (PostgreSQL) {version}'\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_a_pg_dump_older_than_the_server_is_refused(tmp_path: Path) -> None:
    _fake_program(tmp_path, "pg_dump", "14.11")
    with pytest.raises(UsageError) as refused:
        find_tool("pg_dump", 150020, str(tmp_path))
    message = str(refused.value)
    assert f"pg_dump 14 ({tmp_path}/pg_dump) is older than the server (PostgreSQL 15)" in message
    assert "install postgresql-client-15" in message


def test_the_installed_pg_dump_is_used_with_its_version() -> None:
    tool = find_tool("pg_dump", 150000, None)
    assert tool.major >= 15 and tool.version.startswith("pg_dump (PostgreSQL)")
    assert binaries.program_version(str(tool.path))[0] == tool.major
