"""Throw-away PostgreSQL instances for restore drills (and, the same code, for the test suite).

``LocalPostgres`` runs ``initdb`` + ``pg_ctl`` in a temporary directory on a free loopback
port. As root, the server programs run as the ``postgres`` user (initdb refuses root). When the
TimescaleDB extension is installed for that PostgreSQL, it is preloaded.

Its directory is ``<base_dir or $TMPDIR>/archiver-scratch-*``, with an ``owner.lock`` the
process holds while it lives; each start first removes the instances there whose owner died
(:mod:`archiver.pg.scratch_sweep`). Containers carry their owner in a label and are swept the same way.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from ..common import log
from ..common.owner import ProcessIdentity
from ..errors import ExternalCommandFailed, TaskFailed
from . import binaries, scratch_sweep
from .connect import execute, extension_available, probe_server

SERVER_USER = "postgres"
_log = log.get_logger("scratch")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_as() -> dict[str, Any]:
    """subprocess arguments that drop root for server programs."""
    if os.geteuid() != 0:
        return {}
    try:
        entry = pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise TaskFailed(f"running as root needs a {SERVER_USER!r} user to run PostgreSQL server programs "
                         "(initdb refuses root)") from None
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": [],
            "env": {**os.environ, "HOME": entry.pw_dir, "USER": SERVER_USER}}


def sweep_dead_scratch(parent: Path) -> list[str]:
    """Stop and remove the local scratch instances in ``parent`` whose owner died; what was removed."""
    return scratch_sweep.sweep(parent, run_as=_run_as())


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


class LocalPostgres:
    """A PostgreSQL cluster in a temp directory; ``with LocalPostgres() as pg: pg.dsn("db")``."""

    def __init__(self, *, major: int | None = None, bin_dir: str | None = None, base_dir: str | None = None,
                 timescaledb: bool | None = None, settings: dict[str, str] | None = None,
                 startup_timeout: float = 120.0, listen_tcp: bool = True,
                 populate: Callable[[Path], None] | None = None, start_server: bool = True) -> None:
        # populate: fills the data directory instead of initdb (a restored base backup keeps its settings);
        # start_server False: the caller starts it (recovery is watched from outside); stop() still cleans up
        initdb = binaries.find("initdb", server_major=major, configured=bin_dir)
        self.bindir = initdb.parent
        self.major = binaries.program_version(str(initdb))[0]
        if major is not None and self.major != major:
            raise TaskFailed(f"PostgreSQL {major} server programs are not installed (found {self.major} in {self.bindir})",
                             hint=f"install postgresql-{major}, or use a container scratch instance")
        available = binaries.extension_available(self.bindir, "timescaledb")
        if timescaledb and not available:
            raise TaskFailed(f"TimescaleDB is not installed for PostgreSQL {self.major} in {self.bindir}",
                             hint="install the timescaledb package for this major, or use a container scratch instance "
                                  "with a timescale/timescaledb image")
        self.timescaledb = available if timescaledb is None else timescaledb
        self.base_dir = base_dir
        self.settings = dict(settings or {})
        self.startup_timeout = startup_timeout
        self.listen_tcp = listen_tcp
        self.populate = populate
        self.start_server = start_server
        self.workdir: Path | None = None
        self.port: int | None = None
        self.started = False
        self.swept: list[str] = []  # what the start removed of scratch instances whose owner died
        self._claim: scratch_sweep.OwnerClaim | None = None

    # -- paths ------------------------------------------------------------------------------
    @property
    def datadir(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "data"

    @property
    def socket_dir(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "socket"

    @property
    def logfile(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "server.log"

    def dsn(self, dbname: str = "postgres") -> str:
        host = "127.0.0.1" if self.listen_tcp else str(self.socket_dir)
        return f"host={host} port={self.port} user={SERVER_USER} dbname={dbname}"

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> LocalPostgres:
        self.swept = sweep_dead_scratch(Path(self.base_dir or tempfile.gettempdir()))
        self.workdir = Path(tempfile.mkdtemp(prefix=scratch_sweep.SCRATCH_PREFIX, dir=self.base_dir))
        self._claim = scratch_sweep.claim(self.workdir, bindir=self.bindir)
        self.workdir.chmod(0o755 if self.listen_tcp else 0o711)
        self.socket_dir.mkdir(mode=0o700)
        if os.geteuid() == 0:
            entry = pwd.getpwnam(SERVER_USER)
            for path in (self.workdir, self.socket_dir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        try:
            self._check_workdir_access()
            self.populate(self.datadir) if self.populate is not None else self._initdb()
            self._configure()
            if self.start_server:
                self._pg_ctl_start()
        except BaseException:
            self.stop()
            raise
        self.started = True
        return self

    def _program(self, name: str) -> str:
        return str(self.bindir / name)

    def _run(self, argv: list[str], what: str, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=self.workdir,
                                    **_run_as())
        except subprocess.TimeoutExpired as exc:
            raise ExternalCommandFailed(Path(argv[0]).name, None, str(exc.stderr or ""), what=f"{what} timed out") from None
        if result.returncode != 0:
            raise ExternalCommandFailed(Path(argv[0]).name, result.returncode, _tail(result.stderr + result.stdout), what=what)
        return result

    def _check_workdir_access(self) -> None:
        if os.geteuid() != 0:
            return
        probe = subprocess.run(["test", "-w", str(self.workdir)], **_run_as())
        if probe.returncode != 0:
            raise TaskFailed(f"scratch directory {self.workdir} is not reachable by the {SERVER_USER!r} user "
                             "(a parent directory is private)",
                             hint="choose a scratch work_dir every user can traverse, e.g. /var/tmp")

    def _initdb(self) -> None:
        self._run([self._program("initdb"), "-D", str(self.datadir), "-U", SERVER_USER, "-A", "trust",
                   "-E", "UTF8", "--no-locale", "--no-sync"], "initdb of a scratch cluster", timeout=300)

    def _configure(self) -> None:
        settings = {
            # Without TCP the cluster is reachable only through a socket in a private directory:
            # a drill restores production data, which other local users must not read.
            "listen_addresses": "'127.0.0.1'" if self.listen_tcp else "''",
            "unix_socket_directories": f"'{self.socket_dir}'",
            # A restored base backup keeps its own: recovery refuses fewer connections than its source had.
            **({} if self.populate is not None else {"max_connections": "60"}),
            # A scratch cluster is thrown away: durability only costs time here.
            "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
            "max_wal_size": "2GB", "logging_collector": "off",
        }
        if self.timescaledb:
            settings["shared_preload_libraries"] = "'timescaledb'"
            settings["timescaledb.telemetry_level"] = "off"
            settings["max_locks_per_transaction"] = "256"
        settings.update(self.settings)
        with open(self.datadir / "postgresql.auto.conf", "a") as conf:
            for key, value in settings.items():
                conf.write(f"{key} = {value}\n")

    def _pg_ctl_start(self) -> None:
        last_error: Exception | None = None
        for _ in range(3):  # a free port can be taken between choosing it and binding it
            self.port = free_port()
            try:
                self._run([self._program("pg_ctl"), "-D", str(self.datadir), "-l", str(self.logfile), "-w",
                           "-t", str(int(self.startup_timeout)), "-o", f"-p {self.port}", "start"],
                          "start of a scratch cluster", timeout=self.startup_timeout + 30)
                return
            except ExternalCommandFailed as exc:
                last_error = exc
                log = self.logfile.read_text(errors="replace") if self.logfile.exists() else ""
                if "could not bind" not in log and "Address already in use" not in log:
                    raise ExternalCommandFailed("pg_ctl", exc.returncode, _tail(log), what="start of a scratch cluster") from None
        assert last_error is not None
        raise last_error

    def stop(self) -> None:
        """Stop the server (fast, then immediate) and delete its directory."""
        if self.workdir is None:
            return
        if (self.datadir / "postmaster.pid").exists():
            for mode in ("fast", "immediate"):
                try:
                    self._run([self._program("pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "-t", "60", "stop"],
                              "stop of a scratch cluster", timeout=90)
                    break
                except ExternalCommandFailed:
                    time.sleep(0.5)
        shutil.rmtree(self.workdir, ignore_errors=True)
        if self._claim is not None:
            self._claim.release()
            self._claim = None
        self.workdir = None
        self.started = False

    def __enter__(self) -> LocalPostgres:
        return self.start() if not self.started else self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # -- conveniences -----------------------------------------------------------------------
    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run SQL with psql (ON_ERROR_STOP) and return its unaligned output."""
        result = self._run([self._program("psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                            "-d", self.dsn(dbname), "-c", sql], "psql")
        return result.stdout.strip()

    def create_database(self, name: str, template: str = "template0") -> str:
        self.psql(f'CREATE DATABASE "{name}" TEMPLATE {template}')
        return self.dsn(name)


@contextlib.contextmanager
def local_postgres(**kwargs: Any) -> Iterator[LocalPostgres]:
    with LocalPostgres(**kwargs) as instance:
        yield instance


# -- containers ----------------------------------------------------------------------------------

CONTAINER_LABEL = "archiver.scratch"
OWNER_LABEL = "archiver.scratch.owner"  # the process that started the container (archiver.owner)


def detect_engine(preferred: str | None = None) -> str:
    """The container engine CLI to use: the policy's choice, else docker, else podman."""
    for candidate in ([preferred] if preferred else ["docker", "podman"]):
        if candidate and shutil.which(candidate):
            return candidate
    wanted = preferred or "docker or podman"
    raise TaskFailed(f"no container engine: {wanted} not found on PATH",
                     hint="install one, or use verify.scratch.kind: local")


def _uses_host_network(run_args: list[str]) -> bool:
    joined = " ".join(run_args)
    return any(flag in joined for flag in ("--network=host", "--net=host", "--network host", "--net host"))


class ContainerPostgres:
    """PostgreSQL in a throw-away container (``docker``/``podman run --rm``), for restore drills.

    The image is expected to behave like the official ``postgres`` / ``timescale/timescaledb``
    images: an entrypoint that runs initdb on first start, reading POSTGRES_PASSWORD. The
    password is random, passed to the engine through its environment (never argv), and the
    port is published on 127.0.0.1 only. The container is always removed: on success, on
    failure, on Ctrl-C; leftovers of a killed run are swept by label at the next start.
    """

    def __init__(self, image: str, *, engine: str | None = None, engine_args: list[str] | None = None,
                 run_args: list[str] | None = None, startup_timeout: float = 120.0, owner: str = "archiver") -> None:
        self.image = image
        self.engine = detect_engine(engine)
        self.engine_args = list(engine_args or [])
        self.run_args = list(run_args or [])
        self.startup_timeout = startup_timeout
        self.owner = owner
        self.name = f"archiver-scratch-{owner}-{secrets_token()}"
        self.owner_process = ProcessIdentity.current()
        self.swept: list[str] = []
        self.port: int | None = None
        self.password = secrets_token(16)
        self.started = False
        self.major: int | None = None
        self.timescaledb = False

    # -- argv (unit-tested) -------------------------------------------------------------------
    def run_argv(self, port: int) -> list[str]:
        host_network = _uses_host_network(self.run_args)
        listen = "127.0.0.1" if host_network else "*"
        publish = [] if host_network else ["-p", f"127.0.0.1:{port}:{port}"]
        return [self.engine, *self.engine_args, "run", "-d", "--rm", "--name", self.name,
                "--label", f"{CONTAINER_LABEL}={self.owner}", "--label", f"{OWNER_LABEL}={self.owner_process.label()}",
                "-e", "POSTGRES_PASSWORD",
                "-e", "POSTGRES_HOST_AUTH_METHOD=scram-sha-256", *publish, *self.run_args, self.image,
                "postgres", "-p", str(port), "-c", f"listen_addresses={listen}", "-c", "fsync=off",
                "-c", "synchronous_commit=off", "-c", "full_page_writes=off", "-c", "max_wal_size=2GB"]

    def remove_argv(self, name: str) -> list[str]:
        if Path(self.engine).name == "podman":
            return [self.engine, *self.engine_args, "rm", "-f", "-t", "0", "--ignore", name]
        return [self.engine, *self.engine_args, "rm", "-f", name]

    def leftovers_argv(self) -> list[str]:
        return [self.engine, *self.engine_args, "ps", "-aq", "--filter", f"label={CONTAINER_LABEL}={self.owner}"]

    def owner_argv(self, container: str) -> list[str]:
        return [self.engine, *self.engine_args, "inspect", "-f", f'{{{{index .Config.Labels "{OWNER_LABEL}"}}}}',
                container]

    def running_argv(self) -> list[str]:
        return [self.engine, *self.engine_args, "inspect", "-f", "{{.State.Running}}", self.name]

    def logs_argv(self) -> list[str]:
        return [self.engine, *self.engine_args, "logs", "--tail", "30", self.name]

    # -- lifecycle ----------------------------------------------------------------------------
    def dsn(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres password={self.password} dbname={dbname}"

    def _engine(self, argv: list[str], what: str, *, check: bool = True, timeout: float = 120) -> str:
        env = {**os.environ, "POSTGRES_PASSWORD": self.password}
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            raise ExternalCommandFailed(Path(argv[0]).name, None, "", what=f"{what} timed out") from None
        if check and result.returncode != 0:
            raise ExternalCommandFailed(Path(argv[0]).name, result.returncode, _tail(result.stderr + result.stdout), what=what)
        return result.stdout

    def _sweep_leftovers(self) -> None:
        """Remove this policy's scratch containers whose starting process died (or that carry no owner:
        an older archiver's, swept by policy label as before); a live owner's container stays."""
        for container in self._engine(self.leftovers_argv(), "listing leftover scratch containers", check=False).split():
            label = self._engine(self.owner_argv(container), "inspecting a scratch container", check=False).strip()
            owner = ProcessIdentity.from_label(label) if label and label != "<no value>" else None
            if label and label != "<no value>" and not (owner and owner.known_dead()):
                continue
            self._engine(self.remove_argv(container), "removing a leftover scratch container", check=False)
            whose = owner.describe() if owner else "an older archiver"
            self.swept.append(f"removed scratch container {container} of {whose}, which died")
            _log.warning("scratch.dead_owner_removed", extra=log.fields(container=container, owner=whose))

    def start(self) -> ContainerPostgres:
        self._sweep_leftovers()
        self.port = free_port()
        self._engine(self.run_argv(self.port), f"start of scratch container from {self.image}", timeout=600)
        self.started = True
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            try:
                version = probe_server(self.dsn(), timeout=2)
                break
            except Exception as exc:  # not up yet
                last = str(exc)
            if self._engine(self.running_argv(), "inspect", check=False).strip() != "true":
                logs = self._engine(self.logs_argv(), "logs", check=False)
                raise TaskFailed(f"scratch container {self.name} ({self.image}) stopped before it was ready:\n{_tail(logs)}")
            if time.monotonic() > deadline:
                raise TaskFailed(f"scratch container {self.name} not ready after {self.startup_timeout:.0f}s: {last}")
            time.sleep(0.3)
        self.major = version // 10000
        self.timescaledb = extension_available(self.dsn(), "timescaledb")

    def stop(self) -> None:
        if self.started:
            self._engine(self.remove_argv(self.name), "removal of the scratch container", check=False)
            self.started = False

    def __enter__(self) -> ContainerPostgres:
        return self.start() if not self.started else self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def create_database(self, name: str, template: str = "template0") -> str:
        execute(self.dsn(), f'CREATE DATABASE "{name}" TEMPLATE {template}')
        return self.dsn(name)


def secrets_token(nbytes: int = 4) -> str:
    return secrets.token_hex(nbytes)
