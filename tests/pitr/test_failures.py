"""Killed receivers and killed wal-push runs, damaged objects: the archive stays consistent, nothing unproven
is replayed or written.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from archiver.ops.metrics import Metrics
from archiver.ops.receivers import ReceiverSupervisor
from archiver.pg.connect import execute, query
from archiver.pg.scratch import free_port
from archiver.pitr.catalog import scan_base_backups
from archiver.pitr.state import load_state
from archiver.pitr.walstore import scan_wal, stored_versions
from archiver.storage.local import TEMP_MARKER
from tests.ops_helpers import sample, wait_for
from tests.pitr_helpers import Rig, markers, pitr_rig, wait_receiving, wait_stored

FILL = "INSERT INTO filler SELECT g, md5(g::text) || md5((g * 7)::text) FROM generate_series(1, {n}) g"


def _one_version_each(rig: Rig) -> dict[str, int]:
    """Every complete WAL file is stored exactly once (a .partial may have versions)."""
    counts: dict[str, int] = {}
    for item in scan_wal(rig.store):
        if item.file.kind != "partial":
            counts[item.name] = counts.get(item.name, 0) + 1
    assert counts and set(counts.values()) == {1}, counts
    return counts


def _spool_partial_size(spool: Path) -> int:
    return sum(path.stat().st_size for path in spool.glob("*.partial")) if spool.is_dir() else 0


@pytest.fixture
def streaming_rig(tmp_path: Path) -> Iterator[Rig]:
    with pitr_rig("stream", {"url": "file://"}) as rig:
        yield rig


def test_a_receiver_killed_mid_segment_is_restarted_and_the_window_stays_gap_free(streaming_rig: Rig) -> None:
    rig = streaming_rig
    metrics = Metrics()
    base_argv = [sys.executable, "-m", "archiver", "--policies", str(rig.policy_path), "--log-format", "json"]
    os.environ["ARCHIVER_BIN"] = rig.archiver
    supervisor = ReceiverSupervisor(base_argv, metrics, stop_timeout=60)
    from archiver.policy.files import get_policy

    supervisor.sync({"app": get_policy([rig.policy_path], "app")})
    try:
        wait_receiving(rig.dsn)
        assert sample(metrics, "archiver_wal_receiver_up", policy="app") == 1
        assert rig.cli("basebackup", "app").code == 0
        execute(rig.dsn, "CREATE TABLE markers (name text PRIMARY KEY); CREATE TABLE filler (id int, payload text)")
        execute(rig.dsn, "INSERT INTO markers VALUES ('before-kill')")
        execute(rig.dsn, FILL.format(n=20000))
        spool = Path(rig.directory / "spool" / "app")
        wait_for(lambda: _spool_partial_size(spool) > 0, what="a segment in progress in the spool")
        (supervised,) = supervisor.running.values()
        assert supervised.child is not None
        os.kill(supervised.child.pid, signal.SIGKILL)  # mid-segment: the .partial is being written
        wait_for(lambda: supervised.restarts == 1 and sample(metrics, "archiver_wal_receiver_up", policy="app") == 1,
                 what="the supervisor to restart the receiver")
        wait_receiving(rig.dsn)
        execute(rig.dsn, "INSERT INTO markers VALUES ('after-kill')")
        execute(rig.dsn, FILL.format(n=20000))
        rig.switch_and_wait()
        execute(rig.dsn, "INSERT INTO markers VALUES ('last')")
        rig.switch_and_wait()
        assert sample(metrics, "archiver_wal_receiver_restarts_total", policy="app") == 1
        assert (sample(metrics, "archiver_wal_last_archived_timestamp_seconds", policy="app") or 0) > time.time() - 300
    finally:
        supervisor.stop_all()
        os.environ.pop("ARCHIVER_BIN", None)
    assert sample(metrics, "archiver_wal_receiver_up", policy="app") == 0
    _one_version_each(rig)
    state = load_state(rig.store)
    assert len(state.window.ranges()) == 1 and state.window.gaps() == []
    latest, port = rig.restore_dir("latest"), free_port()
    result = rig.cli("restore", "app", "--pitr", "--to-latest", "--data-dir", str(latest), "--start", "--port",
                     str(port), "--yes")
    assert result.code == 0, result.output
    rig.restored_server(latest)
    assert markers(f"host=127.0.0.1 port={port} user=postgres dbname=app") == ["after-kill", "before-kill", "last"]


def _holder_of(path_fragment: str) -> int | None:
    """The pid of a process with a file open whose path contains ``path_fragment``."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if path_fragment in os.readlink(f"/proc/{pid}/fd/{fd}"):
                    return int(pid)
        except OSError:
            continue
    return None


def test_a_wal_push_killed_during_its_upload_is_retried_by_postgresql_and_the_archive_ends_consistent() -> None:
    # zstd level 19 makes each upload take seconds: long enough to find the writer and SIGKILL it mid-write
    slow = {"compression": {"codec": "zstd", "level": 19, "threads": 1}}
    with pitr_rig("archive_command", {"url": "file://"}, wal=slow) as rig:
        execute(rig.dsn, "CREATE TABLE filler (id int, payload text)")
        execute(rig.dsn, FILL.format(n=60000))
        (name,) = query(rig.dsn, "SELECT pg_catalog.pg_walfile_name(pg_catalog.pg_switch_wal())")[0]
        store_dir = Path(rig.storage["url"].removeprefix("file://"))
        victim: int | None = None
        deadline = time.monotonic() + 120
        while victim is None and time.monotonic() < deadline:
            temps = [path for path in store_dir.rglob(f"{TEMP_MARKER}{name}.*")]
            victim = next((pid for temp in temps if (pid := _holder_of(temp.name)) is not None), None)
            time.sleep(0.02)
        assert victim is not None, "never saw the upload of the switched segment in flight"
        os.kill(victim, signal.SIGKILL)
        wait_stored(rig.store, name, timeout=300)  # PostgreSQL runs archive_command again
        log = rig.server.logfile.read_text(errors="replace")
        assert "signal 9" in log or "exit code 137" in log, log[-2000:]  # the killed attempt, then a retry
        counts = _one_version_each(rig)
        assert counts[name] == 1
        dest = rig.directory / "fetched"
        assert rig.cli("wal-fetch", "app", name, str(dest)).code == 0
        assert len(list(store_dir.rglob(f"{TEMP_MARKER}*"))) >= 1, "the killed upload's temp file (invisible) stays"
        assert all(TEMP_MARKER not in item.key for item in scan_wal(rig.store))


def test_damaged_wal_is_caught_before_recovery_replays_it_and_a_damaged_base_before_the_data_dir_is_written() -> None:
    with pitr_rig("archive_command", {"url": "file://"}) as rig:
        assert rig.cli("basebackup", "app").code == 0
        execute(rig.dsn, "CREATE TABLE markers (name text PRIMARY KEY)")
        execute(rig.dsn, "INSERT INTO markers VALUES ('A')")
        name = rig.switch_and_wait()
        (stored,) = stored_versions(rig.store, name)
        original = rig.store.get_bytes(stored.key)
        damaged = bytearray(original)
        damaged[len(damaged) // 3] ^= 0x55
        rig.store.put_bytes(stored.key, bytes(damaged))

        data_dir = rig.restore_dir("damaged-wal")
        result = rig.cli("restore", "app", "--pitr", "--to-latest", "--data-dir", str(data_dir), "--start",
                         "--port", str(free_port()), "--yes")
        rig.restored_server(data_dir)
        assert result.code == 4, result.output
        assert f"recovery stopped before replaying WAL file {name}" in result.stderr
        log = data_dir.with_name("damaged-wal.recovery.log").read_text()
        assert f'restored log file "{name}"' not in log and "exit code 255" in log

        rig.store.put_bytes(stored.key, original)
        (base,) = scan_base_backups(rig.store).backups
        entry = base.manifest["objects"]["base"]
        tar = bytearray(rig.store.get_bytes(entry["key"]))
        tar[len(tar) // 2] ^= 0x55
        rig.store.put_bytes(entry["key"], bytes(tar))
        data_dir = rig.restore_dir("damaged-base")
        result = rig.cli("restore", "app", "--pitr", "--to-latest", "--data-dir", str(data_dir), "--yes")
        assert result.code == 4, result.output
        assert f"base backup {base.id}" in result.stderr
        assert not data_dir.exists()
        assert not [path for path in rig.directory.iterdir() if path.name.startswith(".damaged-base")]
