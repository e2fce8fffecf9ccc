"""The pgBackRest-style proof, for both WAL methods: a point in time between two markers, and the latest.

Real servers, real pg_basebackup / pg_receivewal / pg_verifybackup, the server's own archive_command
and restore_command calling archiver; the archive_command rig writes to a file store, the stream rig
to moto's S3 over HTTP.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from archiver.pg.connect import execute
from archiver.pg.scratch import free_port
from archiver.pitr.settings import configured
from tests.pitr_helpers import Rig, markers, pitr_rig, receiver, server_clock, wait_receiving


@pytest.fixture
def archiving_rig() -> Iterator[Rig]:
    with pitr_rig("archive_command", {"url": "file://"}) as rig:
        yield rig


@pytest.fixture
def streaming_rig(bucket: str, s3_endpoint: str) -> Iterator[Rig]:
    storage = {"url": f"s3://{bucket}/app", "endpoint_url": s3_endpoint, "region": "us-east-1"}
    with pitr_rig("stream", storage) as rig:
        yield rig


def _prove(rig: Rig) -> None:
    result = rig.cli("basebackup", "app")
    assert result.code == 0, result.output
    base_id = result.stdout.strip()
    execute(rig.dsn, "CREATE TABLE markers (name text PRIMARY KEY)")
    execute(rig.dsn, "INSERT INTO markers VALUES ('A')")
    point = server_clock(rig.dsn)
    execute(rig.dsn, "INSERT INTO markers VALUES ('B')")
    rig.switch_and_wait()

    to_time, port = rig.restore_dir("to-time"), free_port()
    result = rig.cli("restore", "app", "--pitr", "--to-time", point, "--data-dir", str(to_time), "--start",
                     "--port", str(port), "--yes")
    assert result.code == 0, result.output
    restored = rig.restored_server(to_time)
    assert configured(to_time, "port") == str(port)
    assert markers(f"host=127.0.0.1 port={port} user=postgres dbname=app") == ["A"]
    assert f"restored base backup {base_id}" in result.stdout
    assert "point    recovery stopped before commit of transaction" in result.stdout
    assert "rto " in result.stdout and "wal      replayed" in result.stdout
    restored.stop()

    latest, port = rig.restore_dir("latest"), free_port()
    result = rig.cli("restore", "app", "--pitr", "--to-latest", "--data-dir", str(latest), "--start",
                     "--port", str(port), "--yes")
    assert result.code == 0, result.output
    rig.restored_server(latest)
    assert markers(f"host=127.0.0.1 port={port} user=postgres dbname=app") == ["A", "B"]
    assert "timeline 2 from" in result.stdout


def test_archive_command_restores_to_a_time_between_two_markers_and_to_the_latest(archiving_rig: Rig) -> None:
    _prove(archiving_rig)


def test_stream_restores_to_a_time_between_two_markers_and_to_the_latest(streaming_rig: Rig) -> None:
    with receiver(streaming_rig) as process:
        wait_receiving(streaming_rig.dsn)
        _prove(streaming_rig)
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
