"""Running a program: argv lists, never a shell; stdout streamed, stderr captured on a thread.

stderr is read into a bounded buffer that keeps the last lines and every warning; a failure is
raised as :class:`~archiver.errors.ExternalCommandFailed` with that tail. As context managers the
commands never leave a child running.
"""

from __future__ import annotations

import collections
import fcntl
import os
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Self

from ..errors import ExternalCommandFailed

READ_SIZE = 1024 * 1024
PIPE_SIZE = 1024 * 1024
TAIL_LINES = 40
MAX_WARNINGS = 500
MAX_LINE = 2000


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
