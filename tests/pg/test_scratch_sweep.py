"""Scratch instances whose owner died: a SIGKILLed drill leaves a running PostgreSQL; the next run removes it.

Real runs: ``archiver verify`` in a subprocess, SIGKILLed once its scratch server is up, then a
second drill; a live instance of this process beside them, which no sweep may touch.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from archiver.backup.task import run_backup
from archiver.common.owner import process_start
from archiver.pg.connect import query
from archiver.pg.scratch import ContainerPostgres, LocalPostgres, sweep_dead_scratch
from archiver.pg.scratch_sweep import OWNER_FILE, SCRATCH_PREFIX
from archiver.storage.local import LocalStore
from tests.backup_helpers import backup_policy, load_policy
from tests.helpers import PROJECT, run_cli
from tests.restore_helpers import add_verify_section


@pytest.fixture
def base() -> Iterator[Path]:
    """A scratch parent every user can traverse (the server runs as postgres when the tests run as root)."""
    path = Path(tempfile.mkdtemp(prefix="sweep-test-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def scratch_dirs(parent: Path) -> list[Path]:
    return sorted(path for path in parent.iterdir() if path.name.startswith(SCRATCH_PREFIX))


def ready_postmaster(parent: Path) -> int | None:
    """The pid of a scratch server in ``parent`` that reports itself ready (postmaster.pid, line 8)."""
    for directory in scratch_dirs(parent):
        try:
            lines = (directory / "data" / "postmaster.pid").read_text().splitlines()
        except OSError:
            continue
        if len(lines) >= 8 and lines[7].strip() == "ready":
            return int(lines[0])
    return None


def test_a_sigkilled_drill_leaves_its_postgres_running_and_the_next_drill_removes_it(
        tmp_path: Path, rich_database: tuple[str, str], base: Path) -> None:
    source, _ = rich_database
    store = LocalStore(tmp_path / "store")
    path = add_verify_section(backup_policy(tmp_path, source, store, None), scratch={"work_dir": str(base)})
    run_backup(load_policy(path), store=store)

    drill = subprocess.Popen([sys.executable, "-m", "archiver", "--policies", str(path.parent), "verify", "app"],
                             cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300  # a bounded wait for the scratch server, not a timing assertion
    while (postmaster := ready_postmaster(base)) is None:
        assert drill.poll() is None and time.monotonic() < deadline, drill.communicate()
        time.sleep(0.05)
    os.kill(drill.pid, signal.SIGKILL)
    drill.wait()
    (left,) = scratch_dirs(base)
    assert process_start(postmaster) is not None  # the killed drill's PostgreSQL still runs
    assert (left / OWNER_FILE).exists()

    again = run_cli("--policies", str(path.parent), "verify", "app", "--json")
    assert again.code == 0, again.output
    assert process_start(postmaster) is None  # stopped
    assert not left.exists() and scratch_dirs(base) == []  # removed; and the new drill removed its own
    record = json.loads(again.stdout)
    assert record["result"] == "passed"
    assert record["scratch"]["swept"] == [f"removed scratch directory {left} of pid {drill.pid} on "
                                          f"{os.uname().nodename}, which died (stopped its PostgreSQL, pid {postmaster})"]
    assert "scratch.dead_owner_removed" in again.stderr and str(left) in again.stderr


def test_a_live_owner_and_a_directory_without_an_owner_record_are_never_touched(base: Path) -> None:
    unknown = base / f"{SCRATCH_PREFIX}older-archiver"
    (unknown / "data").mkdir(parents=True)
    with LocalPostgres(base_dir=str(base), timescaledb=False, listen_tcp=False) as live:
        assert sweep_dead_scratch(base) == []
        assert live.started and query(live.dsn(), "SELECT 1") == [(1,)]
        assert unknown.exists() and live.workdir is not None and live.workdir.exists()
        # another process's sweep: our flock tells it we are alive
        probe = textwrap.dedent(f"""
            from pathlib import Path
            from archiver.pg.scratch import sweep_dead_scratch
            print(sweep_dead_scratch(Path({str(base)!r})))
        """)
        other = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=PROJECT)
        assert other.returncode == 0 and other.stdout.strip() == "[]", other.stderr
        assert query(live.dsn(), "SELECT 1") == [(1,)]
    assert scratch_dirs(base) == [unknown]


@pytest.mark.container
def test_a_sigkilled_owners_scratch_container_is_removed_by_the_next_start(
        container_scratch: dict[str, object]) -> None:
    engine, engine_args = str(container_scratch["engine"]), list(container_scratch["engine_args"])  # type: ignore[call-overload]
    settings = {"engine": engine, "engine_args": engine_args, "run_args": list(container_scratch["run_args"])}  # type: ignore[call-overload]
    script = textwrap.dedent(f"""
        import os, signal
        from archiver.pg.scratch import ContainerPostgres
        scratch = ContainerPostgres({str(container_scratch["image"])!r}, owner="pytest-sweep", **{settings!r})
        scratch.start()
        print(scratch.name, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    killed = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, cwd=PROJECT)
    out, err = killed.communicate(timeout=600)
    assert killed.returncode == -signal.SIGKILL, err
    name = out.strip()

    def names() -> list[str]:
        return subprocess.run([engine, *engine_args, "ps", "-a", "--format", "{{.Names}}"], capture_output=True,
                              text=True).stdout.split()
    assert name in names()  # the owner died; its container runs on
    image = str(container_scratch["image"])
    with ContainerPostgres(image, owner="pytest-sweep", **settings) as live:  # type: ignore[arg-type]
        assert len(live.swept) == 1, live.swept
        assert live.swept[0].startswith("removed scratch container ")
        assert live.swept[0].endswith(f" of pid {killed.pid} on {os.uname().nodename}, which died")
        assert name not in names() and live.name in names()
        with ContainerPostgres(image, owner="pytest-sweep", **settings) as beside:  # type: ignore[arg-type]
            assert beside.swept == [] and live.name in names()  # a live owner's container stays
            assert query(live.dsn(), "SELECT 1") == [(1,)]
    assert live.name not in names() and beside.name not in names()
