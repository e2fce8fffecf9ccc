"""What a person at a terminal sees: progress that reaches 100% (a real backup and restore), the log level
on a terminal, UTC timestamps in text logs, and shell completion of policy names."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path

from archiver.backup.task import BackupOptions
from archiver.cli.progress import TerminalProgress
from archiver.common.log import TextFormatter, level_for
from archiver.ops.runner import run_task
from archiver.restore.task import RestoreRequest, run_restore
from archiver.storage.local import LocalStore
from archiver.tasks import BACKUP
from tests.backup_helpers import load_policy, write_policy
from tests.helpers import PROJECT
from tests.ops_helpers import seeded


def test_a_finished_step_shows_100_percent_whatever_its_estimate_was() -> None:
    stream = io.StringIO()
    progress = TerminalProgress(stream)
    progress.phase("dump app", total=10_000)
    progress.advance(6_000)  # the estimate was too large
    progress.done()
    assert stream.getvalue().rstrip("\n").split("\r\x1b[K")[-1].startswith("dump app: 5.9 KiB / 5.9 KiB (100%)")


def test_a_backup_counts_towards_the_previous_backup_and_a_restore_counts_its_tables(database: str, pg,  # type: ignore[no-untyped-def]
                                                                                     tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    policy = load_policy(write_policy(tmp_path / "policies", "app", seeded(database), store.url))
    first, second = io.StringIO(), io.StringIO()
    run_task(BACKUP, policy, BackupOptions(), progress=TerminalProgress(first))
    assert "(total: the database's size on disk, an estimate)" in first.getvalue()
    result = run_task(BACKUP, policy, BackupOptions(), progress=TerminalProgress(second))
    assert "(total: the previous backup's " in second.getvalue()
    for stream in (first, second):
        dump_line = [line for line in stream.getvalue().split("\n") if line.split("\r\x1b[K")[-1].startswith("dump ")][0]
        assert dump_line.split("\r\x1b[K")[-1].split("  ")[0].endswith("(100%)"), dump_line
    target = f"t_{uuid.uuid4().hex[:12]}"
    restored = io.StringIO()
    run_restore(policy, RestoreRequest(target=pg.dsn(target), backup_id=result.data["id"]), confirm=lambda plan: True,
                progress=TerminalProgress(restored))
    pg.psql(f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)')
    counted = [part for part in restored.getvalue().replace("\n", "\r\x1b[K").split("\r\x1b[K")
               if part.startswith("counting rows")]
    assert counted[-1].startswith("counting rows: 1 tables / 1 tables (100%)"), counted  # seeded(): one table, devices


def test_on_a_terminal_only_warnings_show_unless_asked() -> None:
    assert [logging.getLevelName(level_for(v, terminal=True)) for v in (-1, 0, 1, 2, 3)] == \
        ["ERROR", "WARNING", "INFO", "DEBUG", "DEBUG"]
    assert [logging.getLevelName(level_for(v, terminal=False)) for v in (-1, 0, 1)] == ["WARNING", "INFO", "DEBUG"]


def test_text_log_timestamps_are_utc() -> None:
    record = logging.LogRecord("archiver.test", logging.WARNING, __file__, 1, "backup.slow", None, None)
    record.created = 86400 + 3 * 3600 + 4 * 60 + 5  # 1970-01-02T03:04:05Z, whatever the local time zone
    assert TextFormatter().format(record).startswith("03:04:05Z warning backup.slow")


def test_shell_completion_offers_the_policy_names(tmp_path: Path) -> None:
    for name in ("identity", "app", "telemetry"):
        (tmp_path / f"{name}.yaml").write_text("database: {dsn: x}\n")
    env = {**os.environ, "_ARCHIVER_COMPLETE": "bash_complete", "COMP_WORDS": f"archiver --policies {tmp_path} backup t",
           "COMP_CWORD": "4"}
    result = subprocess.run([sys.executable, "-m", "archiver"], capture_output=True, text=True, env=env, cwd=PROJECT,
                            timeout=60)
    assert result.stdout.split() == ["plain,telemetry"], result.stderr
    env.update(COMP_WORDS=f"archiver --policies {tmp_path} run ", COMP_CWORD="4")
    result = subprocess.run([sys.executable, "-m", "archiver"], capture_output=True, text=True, env=env, cwd=PROJECT,
                            timeout=60)
    assert result.stdout.split() == ["plain,app", "plain,identity", "plain,telemetry"]
    for shell in ("bash", "zsh", "fish"):
        script = subprocess.run([sys.executable, "-m", "archiver"], capture_output=True, text=True, cwd=PROJECT,
                                env={**os.environ, "_ARCHIVER_COMPLETE": f"{shell}_source"}, timeout=60)
        assert "_ARCHIVER_COMPLETE" in script.stdout, shell
