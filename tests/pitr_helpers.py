"""The rig of the point-in-time recovery tests: a dedicated PostgreSQL that archives its WAL with archiver.

The shared ``pg`` fixture is left alone: these servers run with ``wal_level = replica``, WAL senders
and, for ``archive_command``, ``archive_mode = on`` with ``archiver wal-push`` as the server's own
archive_command, run by the server as the ``postgres`` user. That user must be able to run this
checkout's archiver: here the virtualenv's interpreter lives in root's private home, so the server
runs the same code with the system's Python 3.11 and this virtualenv's packages (``archiver_for_server``);
where neither works the tests skip and say why.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from archiver.pg.connect import query
from archiver.pg.recovery import RecoveryServer
from archiver.pg.replication import switch_wal
from archiver.pg.scratch import LocalPostgres
from archiver.pitr.walstore import stored_versions
from archiver.storage.backends import open_store
from archiver.storage.base import Store
from tests.cli.test_json_documents import SCHEMAS, conventions
from tests.helpers import CliResult, run_cli

SERVER_USER = "postgres"


def _as_server_user(argv: list[str]) -> subprocess.CompletedProcess[str]:
    kwargs: dict[str, Any] = {}
    if os.geteuid() == 0:
        entry = pwd.getpwnam(SERVER_USER)
        kwargs = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": [],
                  "env": {**os.environ, "HOME": entry.pw_dir}}
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, **kwargs)
    except OSError as exc:
        return subprocess.CompletedProcess(argv, 126, "", str(exc))


def public_dir(prefix: str) -> Path:
    """A directory the server user can traverse (pytest's tmp_path is private to root)."""
    directory = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    directory.chmod(0o755)
    return directory


def archiver_for_server(directory: Path) -> tuple[str | None, str]:
    """A command the server user can run that is this checkout's archiver; (None, why) when there is none."""
    own = Path(sys.executable).with_name("archiver")
    if _as_server_user([str(own), "--version"]).returncode == 0:
        return str(own), ""
    system = shutil.which("python3", path="/usr/bin:/usr/local/bin")
    site = sysconfig.get_paths()["purelib"]
    if system is None:
        return None, f"the {SERVER_USER} user cannot run {own}, and there is no system python3"
    wrapper = directory / "archiver-for-server"
    wrapper.write_text("#!/bin/sh\n# this checkout's archiver, run with the system's Python and the test virtualenv\n"
                       f"exec {system} -c 'import site, sys; site.addsitedir({json.dumps(site)}); sys.argv[0] = \"archiver\"; "
                       "from archiver.cli import main; main()' \"$@\"\n")
    wrapper.chmod(0o755)
    probe = _as_server_user([str(wrapper), "--version"])
    if probe.returncode != 0:
        return None, (f"the {SERVER_USER} user can run neither {own} nor the system python3 with this virtualenv's "
                      f"packages: {probe.stderr.strip()[-300:]}")
    return str(wrapper), ""


@dataclass
class Rig:
    """A server whose WAL goes to a store through archiver, and the policy that says so."""

    directory: Path
    server: LocalPostgres
    policy_path: Path
    storage: dict[str, Any]
    archiver: str  # how the server runs archiver (ARCHIVER_BIN for restores)
    method: str
    restored: list[RecoveryServer] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def dsn(self) -> str:
        return self.server.dsn("app")

    @property
    def store(self) -> Store:
        return open_store(self._storage_config())

    def _storage_config(self) -> Any:
        from archiver.policy.files import get_policy

        return get_policy([self.policy_path], "app").storage  # as the policy says (object_lock and all)

    def cli(self, *args: str, timeout: float = 600) -> CliResult:
        return run_cli("--policies", str(self.policy_path), *args, env={"ARCHIVER_BIN": self.archiver, **self.env},
                       timeout=timeout)

    def sql(self, statement: str) -> list[tuple[Any, ...]]:
        return query(self.dsn, statement)

    def switch_and_wait(self, timeout: float = 120) -> str:
        """Close the current segment and wait until the store holds it; its name."""
        (name,) = query(self.dsn, "SELECT pg_catalog.pg_walfile_name(pg_catalog.pg_switch_wal())")[0]
        wait_stored(self.store, name, timeout)
        return str(name)

    def restore_dir(self, name: str) -> Path:
        path = self.directory / name
        return path

    def restored_server(self, data_dir: Path) -> RecoveryServer:
        server = RecoveryServer(self.server.bindir, data_dir, data_dir.with_name(f"{data_dir.name}.recovery.log"))
        self.restored.append(server)
        return server


def wait_stored(store: Store, name: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not [v for v in stored_versions(store, name) if v.file.kind != "partial"]:
        if time.monotonic() > deadline:
            raise AssertionError(f"WAL file {name} did not reach the store within {timeout:.0f}s")
        time.sleep(0.3)


def server_settings(method: str, archive_command: str | None) -> dict[str, str]:
    settings = {"wal_level": "replica", "max_wal_senders": "10", "max_replication_slots": "10",
                "checkpoint_timeout": "30s"}
    if method == "archive_command":
        assert archive_command is not None
        settings.update(archive_mode="on", archive_command="'" + archive_command.replace("'", "''") + "'")
    return settings


@contextmanager
def pitr_rig(method: str, storage: dict[str, Any], *, rpo: str = "5min", retention: dict[str, int] | None = None,
             wal: dict[str, Any] | None = None, verify: dict[str, Any] | None = None) -> Iterator[Rig]:
    """A dedicated server archiving WAL by ``method`` into ``storage`` (file:// URLs are made writable by the
    server user), with a policy ``app`` that describes it. Restored servers started by the test are stopped."""
    directory = public_dir("archiver-pitr-")
    archiver, reason = archiver_for_server(directory)
    if archiver is None:
        shutil.rmtree(directory, ignore_errors=True)
        pytest.skip(reason)
    policies = directory / "policies"
    policies.mkdir(mode=0o755)
    policy_path = policies / "app.yaml"
    storage = dict(storage)
    if storage["url"] == "file://":
        store_dir = directory / "store"
        (store_dir / "pitr" / "wal").mkdir(parents=True)
        for path in (store_dir, store_dir / "pitr"):
            path.chmod(0o755)
        entry = pwd.getpwnam(SERVER_USER)
        os.chown(store_dir / "pitr" / "wal", entry.pw_uid, entry.pw_gid)
        storage["url"] = f"file://{store_dir}"
    command = f"{archiver} --policies {policies} --log-format json wal-push app %p"
    server = LocalPostgres(timescaledb=False, settings=server_settings(method, command))
    server.start()
    rig = Rig(directory, server, policy_path, storage, archiver, method)
    try:
        server.psql("CREATE DATABASE app")
        wal_section: dict[str, Any] = {"method": method, **(wal or {})}
        if method == "stream":
            wal_section.setdefault("slot", "archiver_app")
            wal_section.setdefault("spool_dir", str(directory / "spool"))
        document: dict[str, Any] = {
            "database": {"dsn": rig.dsn},
            "storage": storage,
            "pitr": {"wal": wal_section, "rpo": rpo,
                     "base_backup": {"schedule": "0 1 * * *", "retention": retention or {"keep_last": 2}}},
        }
        if verify is not None:
            document["verify"] = {"schedule": "0 5 * * *", **verify}
        policy_path.write_text(yaml.safe_dump(document, sort_keys=False))
        policy_path.chmod(0o644)
        yield rig
    finally:
        for restored in rig.restored:
            try:
                restored.stop("immediate")
            except Exception:
                pass
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def markers(dsn: str) -> list[str]:
    return [row[0] for row in query(dsn, "SELECT name FROM markers ORDER BY name")]


def server_clock(dsn: str) -> str:
    return str(query(dsn, "SELECT pg_catalog.clock_timestamp()")[0][0].isoformat())


@contextmanager
def receiver(rig: Rig) -> Iterator[subprocess.Popen[str]]:
    """``archiver wal-receive app`` in the background; stopped with SIGTERM (it stores its partial)."""
    env = {**os.environ, "ARCHIVER_BIN": rig.archiver, **rig.env}
    process = subprocess.Popen([sys.executable, "-m", "archiver", "--policies", str(rig.policy_path), "--log-format",
                                "json", "wal-receive", "app"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_receiving(dsn: str, slot: str = "archiver_app", timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not query(dsn, "SELECT active FROM pg_catalog.pg_replication_slots WHERE slot_name = %s AND active", (slot,)):
        if time.monotonic() > deadline:
            raise AssertionError(f"no receiver is streaming from slot {slot} after {timeout:.0f}s")
        time.sleep(0.3)


__all__ = ["Rig", "markers", "pitr_rig", "public_dir", "receiver", "server_clock", "switch_wal", "wait_receiving",
           "wait_stored"]


def json_document(command: str, text: str) -> dict[str, Any]:
    """A --json document of ``command``, validated against its schema under docs/schemas/ and the shared
    conventions (tests/cli/test_json_documents.py)."""
    document: dict[str, Any] = json.loads(text)
    assert document["schema"] == f"archiver.{command}/1"
    schema = json.loads((SCHEMAS / f"archiver.{command}.v1.json").read_text())
    jsonschema.validate(document, schema, cls=jsonschema.Draft202012Validator)
    conventions(document)
    return document
