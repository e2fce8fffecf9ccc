"""One exception root for the whole tool.

Every error the core raises derives from :class:`ArchiverError` and carries the exit code the
command ends with. Only the CLI edge turns an error into a message and an exit code.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    TASK_FAILED = 1
    USAGE = 2
    LOCK_BUSY = 3
    VERIFICATION_FAILED = 4
    HELD_BACK = 5
    INTERRUPTED = 130  # SIGINT or SIGTERM: stopped on request, recorded as interrupted, not failed


class ArchiverError(Exception):
    """Root of every error the tool raises on purpose."""

    exit_code: ExitCode = ExitCode.TASK_FAILED

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class TaskFailed(ArchiverError):
    exit_code = ExitCode.TASK_FAILED


class UsageError(ArchiverError):
    exit_code = ExitCode.USAGE


class LockBusy(ArchiverError):
    exit_code = ExitCode.LOCK_BUSY


class VerificationFailed(ArchiverError):
    exit_code = ExitCode.VERIFICATION_FAILED


class StoreError(TaskFailed):
    """A storage operation failed (after retries, where retrying made sense)."""


class ObjectNotFound(StoreError):
    def __init__(self, url: str) -> None:
        super().__init__(f"object not found: {url}")
        self.url = url


class ObjectExists(StoreError):
    """A create-only write found the object already there."""

    def __init__(self, url: str) -> None:
        super().__init__(f"object already exists: {url}")
        self.url = url


class DatabaseError(TaskFailed):
    """A database operation failed; the message never contains a password."""


class ExternalCommandFailed(TaskFailed):
    """An external program (pg_dump, pg_restore, initdb ...) failed."""

    def __init__(self, program: str, returncode: int | None, stderr_tail: str, *, what: str = "") -> None:
        status = "was killed" if returncode is not None and returncode < 0 else f"exited {returncode}"
        if returncode is None:
            status = "did not finish"
        detail = f": {what}" if what else ""
        tail = f"\n--- {program} stderr (last lines) ---\n{stderr_tail.rstrip()}" if stderr_tail.strip() else ""
        super().__init__(f"{program} {status}{detail}{tail}")
        self.program = program
        self.returncode = returncode
        self.stderr_tail = stderr_tail


class Interrupted(KeyboardInterrupt):
    """The run was asked to stop (SIGTERM or SIGINT); whatever was in flight was aborted.

    A KeyboardInterrupt, not an ArchiverError: ``except Exception`` clauses must not swallow a
    stop request (and click treats it as the Ctrl-C it may be). :func:`set_outcome` records on
    it what state the run left behind ("nothing was changed", or what was undone), set by
    whoever knows best on the way up; the CLI prints it, the run record keeps it.
    """

    exit_code = ExitCode.INTERRUPTED

    def __init__(self, signal_name: str = "SIGINT") -> None:
        super().__init__(f"stopped by {signal_name}")
        self.signal_name = signal_name


def set_outcome(exc: BaseException, outcome: str) -> None:
    """Record what an interrupted run left behind (kept on the exception, shown at the CLI edge)."""
    exc.archiver_outcome = outcome  # type: ignore[attr-defined]


def outcome_of(exc: BaseException, default: str) -> str:
    return str(getattr(exc, "archiver_outcome", None) or default)


def signal_of(exc: BaseException) -> str:
    return exc.signal_name if isinstance(exc, Interrupted) else "SIGINT"
