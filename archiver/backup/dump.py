"""pg_dump / pg_dumpall wrappers: argv builders, streaming a child's stdout, stderr capture.

Programs run as argv lists, never through a shell. Their connection comes from ``PG*``
environment variables (:func:`archiver.db.dsn_env`), so no password appears in an argv that
``ps`` can show. stderr is read on a thread into a bounded buffer that keeps the last lines
and every warning; a failure is raised as :class:`ExternalCommandFailed` with that tail.
"""

from __future__ import annotations

import collections
import fcntl
import os
import re
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Self

from ..errors import ExternalCommandFailed, UsageError
from ..pg import binaries
from ..pg.dsn import dsn_with
from ..policy.schema import PgDumpConfig

READ_SIZE = 1024 * 1024
PIPE_SIZE = 1024 * 1024
TAIL_LINES = 40
MAX_WARNINGS = 500
MAX_LINE = 2000


# -- finding the programs ---------------------------------------------------------------------

@dataclass(frozen=True)
class Tool:
    path: Path
    major: int
    version: str  # the program's own --version line, e.g. "pg_dump (PostgreSQL) 15.20"


def find_tool(program: str, server_version_num: int, configured: str | None) -> Tool:
    """The ``program`` to use against a server, refusing one older than the server.

    A client program cannot read a newer server's catalogs (pg_dump itself aborts with a
    "server version mismatch"); saying so before anything starts is clearer.
    """
    server_major = server_version_num // 10000
    copies = binaries.installed(program, configured)
    usable = {major: path for major, path in copies.items() if major >= server_major}
    if copies and not usable:
        newest = max(copies)
        raise UsageError(
            f"{program} {newest} ({copies[newest]}) is older than the server (PostgreSQL {server_major}): "
            f"{program} cannot dump a newer server; refusing to run it",
            hint=f"install postgresql-client-{server_major} (Debian/Ubuntu) or postgresql{server_major} (RHEL)"
                 + (f", or point database.pg_bin_dir at a PostgreSQL {server_major} bin directory" if configured
                    else ", or set database.pg_bin_dir to its bin directory"))
    path = binaries.find(program, server_major=server_major, configured=configured)
    major = binaries.program_version(str(path))[0]
    if major < server_major:  # pgbin.find never returns an older one; keep the promise explicit
        raise UsageError(f"{program} {major} ({path}) is older than the server (PostgreSQL {server_major})")
    return Tool(path, major, version_text(path))


def version_text(path: Path) -> str:
    try:
        result = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        raise UsageError(f"cannot run {path} --version: {exc}") from None
    return result.stdout.strip()


# -- argv ---------------------------------------------------------------------------------------

def lock_wait_timeout_ms(value: timedelta) -> int:
    return max(1, int(value.total_seconds() * 1000))


def pg_dump_argv(pg_dump: Path, options: PgDumpConfig, snapshot: str | None) -> list[str]:
    """pg_dump in custom format, uncompressed (compression happens in archiver), to stdout.

    The database comes from ``PGDATABASE``; ``--no-password`` makes a missing password an
    error instead of a prompt that would hang a cron job.
    """
    argv = [str(pg_dump), "--format=custom", "--compress=0", "--no-password"]
    if snapshot:
        argv.append(f"--snapshot={snapshot}")
    if options.lock_wait_timeout is not None:
        argv.append(f"--lock-wait-timeout={lock_wait_timeout_ms(options.lock_wait_timeout)}")
    argv += [f"--exclude-schema={pattern}" for pattern in options.exclude_schemas]
    argv += [f"--exclude-table={pattern}" for pattern in options.exclude_tables]
    argv += [f"--exclude-table-data={pattern}" for pattern in options.exclude_table_data]
    argv += list(options.extra_args)
    return argv


def pg_dumpall_globals_argv(pg_dumpall: Path, *, database: str | None, include_role_passwords: bool) -> list[str]:
    """Roles, memberships, role settings and tablespaces of the whole cluster (``--globals-only``).

    ``-l`` names the database to read them from (a name, never a connection string), so a
    cluster without a ``postgres`` database works too.
    """
    argv = [str(pg_dumpall), "--globals-only", "--no-password"]
    if not include_role_passwords:
        argv.append("--no-role-passwords")
    if database:
        argv.append(f"--database={database}")
    return argv


def pg_restore_argv(pg_restore: Path, *, dbname: str, single_transaction: bool = True, clean: bool = False,
                    jobs: int = 1, no_tablespaces: bool = False, archive: Path | None = None) -> list[str]:
    """pg_restore into ``dbname`` (a name; host, user and password come from ``PG*`` variables).

    ``--exit-on-error``: the first error ends the restore (with ``--single-transaction`` it also
    rolls everything back). ``--verbose`` names each step on stderr, which the progress display
    counts and the error message shows the last of. Without ``archive`` the dump is read from stdin.
    """
    argv = [str(pg_restore), "--no-password", "--exit-on-error", "--verbose", f"--dbname={dsn_with('', dbname=dbname)}"]
    if single_transaction:
        argv.append("--single-transaction")
    if jobs > 1:
        argv.append(f"--jobs={jobs}")
    if clean:
        argv += ["--clean", "--if-exists"]
    if no_tablespaces:
        argv.append("--no-tablespaces")
    if archive is not None:
        argv.append(str(archive))
    return argv


def pg_amcheck_argv(pg_amcheck: Path) -> list[str]:
    """pg_amcheck of the database named by ``PGDATABASE``: every table's heap and every B-tree index.

    ``--install-missing`` creates the amcheck extension where it is missing (a scratch database).
    """
    return [str(pg_amcheck), "--no-password", "--install-missing"]


def run_captured(argv: Sequence[str], env: Mapping[str, str], program: str, *,
                 timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    """Run a program to completion, capturing its output; judging its exit status is the caller's job."""
    try:
        return subprocess.run(list(argv), env=dict(env), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ExternalCommandFailed(program, None, "", what=f"{argv[0]} did not finish within {timeout:.0f}s") from None
    except OSError as exc:
        raise ExternalCommandFailed(program, None, str(exc), what=f"cannot start {argv[0]}") from None


def child_env(connection_env: Mapping[str, str], application_name: str) -> dict[str, str]:
    """The environment of a client program: ours plus the connection, named in pg_stat_activity."""
    env = {**os.environ, **connection_env}
    if "PGAPPNAME" not in connection_env:
        env["PGAPPNAME"] = application_name
    return env


# -- psql-style name patterns (pg_dump -n/-N/-t/-T) ------------------------------------------------

@dataclass(frozen=True)
class NamePattern:
    """A pg_dump pattern as anchored POSIX regexes for the server's ``~`` operator."""

    text: str
    schema: str | None  # None: the pattern had no schema part
    name: str


_REGEX_SPECIALS = set("|*+?()[]{}.^$\\")


def parse_name_pattern(pattern: str) -> NamePattern:
    """Translate a psql/pg_dump name pattern (``public.metric*``, ``"MixedCase"``) to regexes.

    The rules of psql's ``\\d`` (which pg_dump follows): outside double quotes letters fold to
    lower case, ``*`` is any run of characters, ``?`` any one character, ``.`` separates schema
    and name, ``$`` is literal and other regex syntax (``[0-9]``) keeps its meaning; inside
    double quotes everything is literal and ``""`` is one quote.
    """
    parts: list[list[str]] = [[]]
    quoted = False
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == '"':
            if quoted and pattern[index + 1:index + 2] == '"':
                parts[-1].append('"')
                index += 1
            else:
                quoted = not quoted
        elif quoted:
            parts[-1].append("\\" + char if char in _REGEX_SPECIALS else char)
        elif char == ".":
            parts.append([])
        elif char == "*":
            parts[-1].append(".*")
        elif char == "?":
            parts[-1].append(".")
        elif char == "$":
            parts[-1].append("\\$")
        else:
            parts[-1].append(char.lower())
        index += 1
    if len(parts) > 2:
        parts = parts[-2:]  # database.schema.table: the database part must be the current one
    regexes = ["^(" + "".join(part) + ")$" for part in parts]
    if len(regexes) == 1:
        return NamePattern(pattern, None, regexes[0])
    return NamePattern(pattern, regexes[0], regexes[1])


def schema_pattern(pattern: str) -> str:
    """A ``-n``/``-N`` pattern names schemas only: its last part is the schema name."""
    return parse_name_pattern(pattern).name


# -- running a program and streaming its stdout ----------------------------------------------------

class StderrCapture:
    """stderr lines of a child: the last ``TAIL_LINES`` and every warning (with its detail/hint lines)."""

    def __init__(self, program: str) -> None:
        self.program = program
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.warnings: list[str] = []
        self.dropped_warnings = 0
        self._in_warning = False
        self._lock = threading.Lock()
        self._prefix = f"{program}: "

    def add(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")[:MAX_LINE]
        with self._lock:
            self.tail.append(line)
            body = line[len(self._prefix):] if line.startswith(self._prefix) else None
            if body is not None and body.startswith("warning:"):
                self._in_warning = True
                if len(self.warnings) < MAX_WARNINGS:
                    self.warnings.append(line)
                else:
                    self.dropped_warnings += 1
            elif self._in_warning and body is not None and body.startswith(("detail:", "hint:")):
                if self.warnings and not self.dropped_warnings:
                    self.warnings[-1] += "\n" + line
            else:
                self._in_warning = False

    def text(self) -> str:
        with self._lock:
            return "\n".join(self.tail)


class _ChildProcess:
    """A child process with its stderr read on a thread into a :class:`StderrCapture`; as a
    context manager it never leaves the child running. Subclasses pick which pipe carries data."""

    stdin_mode: int = subprocess.DEVNULL
    stdout_mode: int = subprocess.DEVNULL

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], program: str, *, what: str = "",
                 on_line: Callable[[str], None] | None = None) -> None:
        self.argv = list(argv)
        self.env = dict(env)
        self.program = program
        self.what = what
        self.on_line = on_line
        self.stderr = StderrCapture(program)
        self.process: subprocess.Popen[bytes] | None = None
        self._stderr_thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        try:
            self.process = subprocess.Popen(self.argv, stdin=self.stdin_mode, stdout=self.stdout_mode,
                                            stderr=subprocess.PIPE, env=self.env, bufsize=0)
        except OSError as exc:
            raise ExternalCommandFailed(self.program, None, str(exc), what=f"cannot start {self.argv[0]}") from None
        data_pipe = self.process.stdout if self.stdout_mode == subprocess.PIPE else self.process.stdin
        assert data_pipe is not None and self.process.stderr is not None
        _grow_pipe(data_pipe.fileno())
        self._stderr_thread = threading.Thread(target=self._read_stderr, name=f"{self.program}-stderr", daemon=True)
        self._stderr_thread.start()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def _read_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr.add(line)
            if self.on_line is not None:
                self.on_line(line.decode("utf-8", "replace").rstrip("\r\n"))

    def _raise_on_failure(self, returncode: int) -> None:
        self._join_stderr()
        if returncode != 0:
            raise ExternalCommandFailed(self.program, returncode, self.stderr.text(), what=self.what)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._join_stderr()

    def _join_stderr(self) -> None:
        if self._stderr_thread is not None:
            self._stderr_thread.join(timeout=30)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is not None or (self.process is not None and self.process.poll() is None):
            self.kill()  # an error, or the caller did not call finish(): never leave the child behind
        if self.process is not None:
            for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
                try:
                    if stream is not None:
                        stream.close()
                except OSError:
                    pass


class StreamingCommand(_ChildProcess):
    """A child process whose stdout is read in chunks (pg_dump writing a dump).

    ``with StreamingCommand(argv, env, "pg_dump") as child: for chunk in child.chunks(): ...``
    then ``child.finish()`` waits and raises :class:`ExternalCommandFailed` on a non-zero exit
    or a signal. Leaving the block early (an exception) kills the child.
    """

    stdout_mode = subprocess.PIPE

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], program: str, *, what: str = "") -> None:
        super().__init__(argv, env, program, what=what)
        self.bytes_out = 0

    def chunks(self, size: int = READ_SIZE) -> Iterator[bytes]:
        assert self.process is not None and self.process.stdout is not None
        fd = self.process.stdout.fileno()
        while True:
            chunk = os.read(fd, size)
            if not chunk:
                return
            self.bytes_out += len(chunk)
            yield chunk

    def finish(self) -> None:
        """Wait for the exit; a non-zero status or a signal raises with the stderr tail."""
        assert self.process is not None
        self._raise_on_failure(self.process.wait())


class FeedingCommand(_ChildProcess):
    """A child process whose stdin is written in chunks (pg_restore reading a dump).

    ``write`` returns False once the child has closed its input (it exited: see ``finish``).
    ``finish`` closes the input, waits and raises :class:`ExternalCommandFailed` on a non-zero
    exit; ``on_line`` sees every stderr line (from the reader thread). Leaving the block early
    kills the child.
    """

    stdin_mode = subprocess.PIPE

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], program: str, *, what: str = "",
                 on_line: Callable[[str], None] | None = None) -> None:
        super().__init__(argv, env, program, what=what, on_line=on_line)
        self.bytes_in = 0

    def write(self, data: bytes | bytearray | memoryview) -> bool:
        assert self.process is not None and self.process.stdin is not None
        view = memoryview(data)
        fd = self.process.stdin.fileno()
        try:
            while view.nbytes:
                written = os.write(fd, view)
                self.bytes_in += written
                view = view[written:]
        except BrokenPipeError:
            return False
        return True

    def close_input(self) -> None:
        if self.process is not None and self.process.stdin is not None and not self.process.stdin.closed:
            try:
                self.process.stdin.close()
            except BrokenPipeError:
                pass

    def poll(self, timeout: float) -> int | None:
        """The exit status, or None if the child is still running after ``timeout`` seconds."""
        assert self.process is not None
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def finish(self, *, while_waiting: Callable[[], None] | None = None) -> None:
        """Close the input, wait (calling ``while_waiting`` every half second), raise on a failure."""
        self.close_input()
        while (returncode := self.poll(0.5)) is None:
            if while_waiting is not None:
                while_waiting()
        self._raise_on_failure(returncode)


def _grow_pipe(fd: int) -> None:
    """Fewer, larger reads: raise the pipe's capacity from 64 KiB (best effort)."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except (OSError, AttributeError):
        pass


# -- pg_dump's warnings -----------------------------------------------------------------------------

_CIRCULAR_FK = re.compile(r"warning: there are circular foreign-key constraints")


def is_expected_warning(warning: str, extensions: Mapping[str, str]) -> bool:
    """TimescaleDB's catalogs have circular foreign keys; pg_dump warns about them on every dump.

    They are harmless for a full dump (the warning is about --data-only restores).
    """
    return "timescaledb" in extensions and bool(_CIRCULAR_FK.search(warning))
