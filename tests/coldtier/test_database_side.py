"""The database side of the cold tier: scrubbed driver errors, busy chunks, the exported snapshot."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from archiver.coldtier import retention
from archiver.coldtier.archive import run_archive
from archiver.coldtier.retention import run_retention
from archiver.errors import DatabaseError
from archiver.pg.arrow import arrow_batches, shared_read_snapshot
from archiver.pg.connect import session
from archiver.pg.scratch import free_port
from archiver.policy.schema import StorageConfig
from tests.coldtier_helpers import create_readings, policy_for, relations


def test_adbc_errors_never_carry_the_password() -> None:
    dsn = f"host=127.0.0.1 port={free_port()} user=archiver password=s3cr3t-P@ss dbname=telemetry connect_timeout=2"
    with pytest.raises(DatabaseError) as failure:
        list(arrow_batches(dsn, "SELECT 1"))
    assert "s3cr3t-P@ss" not in str(failure.value) and "password=********" in str(failure.value)


def test_rows_come_from_the_exported_snapshot_even_while_rows_arrive(database: str) -> None:
    with session(database) as current:
        current.execute("CREATE TABLE public.t (n int)")
        current.execute("INSERT INTO public.t SELECT generate_series(1, 10)")
    with shared_read_snapshot(database) as (snapshot_id, current):
        with session(database) as other:
            other.execute("INSERT INTO public.t VALUES (11)")
        rows = sum(batch.num_rows for batch in arrow_batches(database, "SELECT n FROM public.t",
                                                                snapshot_id=snapshot_id))
        assert rows == current.scalar("SELECT count(*) FROM public.t") == 10
    assert sum(batch.num_rows for batch in arrow_batches(database, "SELECT n FROM public.t")) == 11


def test_a_busy_chunk_is_held_back_and_dropped_by_a_later_run(database: str, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    create_readings(database)
    storage = StorageConfig(url=f"file://{tmp_path}/store")
    policy = policy_for(database, storage)
    run_archive(policy)
    monkeypatch.setattr(retention, "LOCK_TIMEOUT_MS", 200)
    locked, release = threading.Event(), threading.Event()

    def writer_in_a_long_transaction() -> None:
        with session(database) as current, current.transaction():
            current.execute("LOCK TABLE public.readings_d80 IN ROW EXCLUSIVE MODE")
            locked.set()
            release.wait(30)

    holder = threading.Thread(target=writer_in_a_long_transaction)
    holder.start()
    try:
        assert locked.wait(30)
        result = run_retention(policy)
    finally:
        release.set()
        holder.join()
    assert result.status == "held_back" and result.metrics["chunks_dropped"] == 3
    assert any(line.startswith("hold") and "readings_d80" in line and "busy" in line for line in result.lines)
    assert relations(database, "readings_d%") == ["public.readings_d80"]
    assert run_retention(policy).metrics["chunks_dropped"] == 1
