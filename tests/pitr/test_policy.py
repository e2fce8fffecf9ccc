"""The pitr section of a policy: validated like the rest (every error with file:line, unknown keys refused)."""

from __future__ import annotations

import textwrap
from datetime import timedelta
from pathlib import Path

from archiver.policy.files import load
from archiver.tasks import task_schedules
from tests.helpers import run_cli

HEAD = """\
database:
  dsn: ${APP_DSN}
storage:
  url: s3://backups-bucket/app
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "app.yaml"
    path.write_text(HEAD + textwrap.dedent(text))
    return path


def issues(path: Path) -> list[str]:
    return [str(issue) for issue in load([path], environ={}, strict_env=False).issues]


def test_a_complete_pitr_section_loads_and_schedules_base_backups_and_prune(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        pitr:
          wal: {method: stream, slot: archiver_app}
          base_backup:
            schedule: "0 1 * * *"
            retention: {keep_last: 2, keep_daily: 7, keep_weekly: 4}
          rpo: 5min
        """)
    (policy,) = load([path], environ={}, strict_env=False).policies
    assert policy.pitr is not None and policy.pitr.rpo == timedelta(minutes=5)
    assert policy.pitr.wal.slot == "archiver_app" and policy.pitr.base_backup.compression.codec == "zstd"
    assert task_schedules(policy) == {"basebackup": "0 1 * * *", "prune": "0 1 * * *"}


def test_every_pitr_mistake_is_reported_with_its_line_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        pitr:
          wal:
            method: archive_command
            slot: archiver_app
            compresion: {codec: zstd}
          base_backup:
            schedule: "every night"
            retention: {}
          rpo: 10s
        """)
    found = issues(path)
    assert f"{path}:8:11  pitr.wal.slot: applies to method stream only" in "\n".join(found)
    assert any(f"{path}:9:5  pitr.wal.compresion: unknown key" in issue and "did you mean 'compression'" in issue
               for issue in found)
    assert any(f"{path}:11:15  pitr.base_backup.schedule: bad cron expression" in issue for issue in found)
    assert any(f"{path}:12:16  pitr.base_backup.retention: has no keep_* rule" in issue for issue in found)
    assert any(f"{path}:13:8  pitr.rpo: out of range (got 10s; allowed 1min..7d)" in issue for issue in found)
    result = run_cli("policy", "validate", str(path))
    assert result.code == 2 and "pitr.rpo" in result.output


def test_stream_needs_a_slot_and_an_unknown_method_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        pitr:
          wal: {method: stream, spool_dir: relative/dir}
          base_backup: {schedule: "0 1 * * *"}
        """)
    found = "\n".join(issues(path))
    assert "pitr.wal: method stream needs a replication slot" in found
    assert "pitr.wal.spool_dir: needs an absolute path (got 'relative/dir')" in found
    other = write(tmp_path, """\
        pitr:
          wal: {method: rsync, slot: "Bad-Slot"}
          base_backup: {schedule: "0 1 * * *"}
        """)
    found = "\n".join(issues(other))
    assert "pitr.wal.method: invalid value (got 'rsync'; allowed stream, archive_command)" in found
    assert "pitr.wal.slot: invalid value (got 'Bad-Slot'; allowed a replication slot name" in found
