"""wal-push and wal-fetch as the server calls them: exit codes, idempotence, no overwrite, checked delivery.

Run as the real console program against both stores (a file:// directory and moto's S3 over HTTP).
The WAL files are files of the right names and sizes with made-up content: what these commands do
does not depend on what a segment holds.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import yaml

from archiver.pitr.walnames import parse_wal_key
from archiver.pitr.walstore import scan_wal, stored_versions
from archiver.storage.base import Store
from tests.helpers import CliResult, run_cli

SEGMENT = "000000010000000000000003"


@pytest.fixture
def policies(tmp_path: Path, store: Store, endpoint: str | None) -> Path:
    storage = {"url": store.url}
    if endpoint:
        storage.update(endpoint_url=endpoint, region="us-east-1")
    path = tmp_path / "policies" / "app.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump({
        "database": {"dsn": "${APP_DSN}"}, "storage": storage,
        "pitr": {"wal": {"method": "archive_command"}, "base_backup": {"schedule": "0 1 * * *"}}}))
    return path


def wal(directory: Path, name: str, seed: bytes, size: int = 16 * 1024 * 1024) -> Path:
    path = directory / "pg_wal" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    block = hashlib.sha256(seed).digest() * 2048  # 64 KiB that compress somewhat
    path.write_bytes((block * (size // len(block) + 1))[:size])
    return path


def cli(policies: Path, *args: str, cwd: Path | None = None) -> CliResult:
    return run_cli("--policies", str(policies), *args, cwd=cwd)


def test_push_stores_once_and_a_second_identical_push_writes_nothing(tmp_path: Path, policies: Path,
                                                                     store: Store) -> None:
    path = wal(tmp_path, SEGMENT, b"one")
    first = cli(policies, "wal-push", "app", f"pg_wal/{SEGMENT}", cwd=tmp_path)
    assert first.code == 0, first.output
    (stored,) = stored_versions(store, SEGMENT)
    assert stored.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert stored.codec == "zstd" and stored.key.endswith(".zst") and stored.size < path.stat().st_size
    again = cli(policies, "wal-push", "app", str(path))
    assert again.code == 0, again.output
    assert '"new": false' in again.stderr
    assert [item.key for item in scan_wal(store)] == [stored.key]


def test_a_different_file_under_an_archived_name_fails_loudly_and_overwrites_nothing(tmp_path: Path, policies: Path,
                                                                                    store: Store) -> None:
    cli(policies, "wal-push", "app", str(wal(tmp_path, SEGMENT, b"one")))
    (before,) = stored_versions(store, SEGMENT)
    other = wal(tmp_path / "other", SEGMENT, b"two")
    result = cli(policies, "wal-push", "app", str(other))
    assert result.code == 4, result.output
    assert f"WAL file {SEGMENT} is archived already with other content" in result.stderr
    assert "refusing to overwrite it" in result.stderr
    assert stored_versions(store, SEGMENT) == [before]


def test_fetch_writes_the_checked_file_and_says_1_for_a_file_the_archive_lacks(tmp_path: Path, policies: Path) -> None:
    source = wal(tmp_path, SEGMENT, b"one")
    assert cli(policies, "wal-push", "app", str(source)).code == 0
    dest = tmp_path / "restore" / "RECOVERYXLOG"
    dest.parent.mkdir()
    fetched = cli(policies, "wal-fetch", "app", SEGMENT, str(dest))
    assert fetched.code == 0, fetched.output
    assert dest.read_bytes() == source.read_bytes()
    missing = cli(policies, "wal-fetch", "app", "000000010000000000000009", str(tmp_path / "restore" / "other"))
    assert missing.code == 1 and "000000010000000000000009: not in the archive" in missing.stderr
    history = cli(policies, "wal-fetch", "app", "00000002.history", str(tmp_path / "restore" / "RECOVERYHISTORY"))
    assert history.code == 1
    assert sorted(os.listdir(tmp_path / "restore")) == ["RECOVERYXLOG"]


def test_a_damaged_stored_file_is_refused_with_4_before_dest_is_written(tmp_path: Path, policies: Path,
                                                                        store: Store) -> None:
    assert cli(policies, "wal-push", "app", str(wal(tmp_path, SEGMENT, b"one"))).code == 0
    (stored,) = stored_versions(store, SEGMENT)
    data = bytearray(store.get_bytes(stored.key))
    data[len(data) // 2] ^= 0xFF
    store.put_bytes(stored.key, bytes(data))
    dest = tmp_path / "RECOVERYXLOG"
    result = cli(policies, "wal-fetch", "app", SEGMENT, str(dest))
    assert result.code == 4, result.output
    assert not dest.exists() and not list(tmp_path.glob(".RECOVERYXLOG*"))
    report = tmp_path / "report.json"
    in_recovery = cli(policies, "wal-fetch", "app", SEGMENT, str(dest), "--recovery-report", str(report))
    assert in_recovery.code == 255, in_recovery.output
    assert '"exit_code": 4' in report.read_text() and SEGMENT in report.read_text()
    assert not dest.exists()


def test_partial_versions_replace_each_other_and_the_complete_segment_replaces_them(tmp_path: Path, policies: Path,
                                                                                    store: Store) -> None:
    first = wal(tmp_path / "a", f"{SEGMENT}.partial", b"early")
    second = wal(tmp_path / "b", f"{SEGMENT}.partial", b"later")
    os.utime(first, (1_700_000_000, 1_700_000_000))
    assert cli(policies, "wal-push", "app", str(first)).code == 0
    assert cli(policies, "wal-push", "app", str(second)).code == 0  # a newer version of a partial is no conflict
    (partial,) = stored_versions(store, f"{SEGMENT}.partial")
    assert partial.sha256 == hashlib.sha256(second.read_bytes()).hexdigest()
    dest = tmp_path / "from-partial"
    assert cli(policies, "wal-fetch", "app", SEGMENT, str(dest)).code == 0  # never completed: the newest partial
    assert dest.read_bytes() == second.read_bytes()
    assert cli(policies, "wal-push", "app", str(wal(tmp_path / "c", SEGMENT, b"complete"))).code == 0
    assert stored_versions(store, f"{SEGMENT}.partial") == []
    assert [parse_wal_key(item.key) is not None for item in scan_wal(store)] == [True]


def test_names_that_are_not_wal_files_are_refused_before_they_become_keys(tmp_path: Path, policies: Path) -> None:
    odd = tmp_path / "../../etc"
    result = cli(policies, "wal-push", "app", str(tmp_path / "notwal"))
    assert result.code == 2 and "'notwal' is not a WAL file name" in result.stderr
    fetched = cli(policies, "wal-fetch", "app", "../../x", str(odd))
    assert fetched.code == 2 and "is not a WAL file name" in fetched.stderr
