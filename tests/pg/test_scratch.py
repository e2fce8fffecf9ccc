"""The local scratch instance (also the test suite's PostgreSQL fixture)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from archiver.errors import TaskFailed
from archiver.pg.connect import execute, query, server_version_num
from archiver.pg.scratch import LocalPostgres


def test_session_server_is_real_postgres(pg: LocalPostgres, database: str) -> None:
    version = server_version_num(database)
    assert version // 10000 == pg.major
    execute(database, "CREATE TABLE t AS SELECT g AS n FROM generate_series(1, 1000) g")
    assert query(database, "SELECT count(*), sum(n) FROM t") == [(1000, 500500)]


def test_private_base_dir_is_refused_clearly(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root drops privileges for the server programs")
    tmp_path.chmod(0o700)
    with pytest.raises(TaskFailed, match="not reachable by the 'postgres' user"):
        LocalPostgres(base_dir=str(tmp_path), timescaledb=False).start()
    assert list(tmp_path.iterdir()) == []


def test_start_and_stop_leaves_nothing_behind() -> None:
    base = Path(tempfile.mkdtemp(prefix="scratch-test-", dir="/var/tmp"))
    base.chmod(0o755)
    instance = LocalPostgres(base_dir=str(base), timescaledb=False)
    with instance:
        workdir = instance.workdir
        assert workdir is not None and (workdir / "data" / "PG_VERSION").exists()
        if os.geteuid() == 0:
            assert (workdir / "data").stat().st_uid != 0  # server programs ran unprivileged
        assert query(instance.dsn(), "SELECT current_setting('fsync')") == [("off",)]
    assert not workdir.exists()
    base.rmdir()
    with pytest.raises(Exception):
        query(instance.dsn(), "SELECT 1")


@pytest.mark.timescaledb
def test_timescaledb_is_preloaded_when_installed(pg: LocalPostgres, database: str) -> None:
    assert pg.timescaledb
    execute(database, "CREATE EXTENSION timescaledb")
    version = query(database, "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
    assert version and version[0][0].count(".") == 2
