"""Client-side encryption of stored objects in the age format (age-encryption.org/v1), streaming.

The order is dump -> compress -> encrypt -> store: :class:`EncryptingWriter` sits between the
compressor and a store writer, so the SHA-256 the writer computes is that of what is stored.
:func:`iter_decrypted` undoes it in a read stream. Both run pyrage's streaming ``encrypt_io`` /
``decrypt_io`` in a thread fed through a small bounded queue: memory stays constant (a few MiB)
whatever the object's size, and the objects decrypt with Debian's ``age -d -i key.txt``.

Writers need only recipients (public keys). Readers need identities (private keys) from files
that only their owner may read (mode 0600, as libpq wants of .pgpass). A private key's text is
never put in a message, a log record or an exception.
"""

from __future__ import annotations

import contextlib
import io
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from .agekeys import CannotDecrypt, Keyring, fingerprint, parse_recipient
from .compress import Sink

AGE_HEADER = b"age-encryption.org/v1\n"
FORMAT = "age-encryption.org/v1"
SUFFIX = ".age"
QUEUE_DEPTH = 8  # chunks in flight between the caller and the age thread
PROBE_BYTES = 64 * 1024 + 4096  # the header and the first payload chunk
_NO_MATCH = "No matching keys found"


class DamagedCiphertext(ValueError):
    """The age stream fails authentication or ends early: the object is truncated or altered."""


class _Stopped(Exception):
    """The other side of the queue gave up."""


# -- writing ---------------------------------------------------------------------------------------

class _QueueReader(io.RawIOBase):
    def __init__(self, chunks: queue.Queue[bytes | None]) -> None:
        super().__init__()
        self._chunks = chunks
        self._buffer = memoryview(b"")
        self._ended = False

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        while not self._buffer:
            if self._ended:
                return 0
            item = self._chunks.get()
            if item is None:
                self._ended = True
                return 0
            if item is _ABORT:
                raise _Stopped("aborted")
            self._buffer = memoryview(item)
        size = min(len(target), len(self._buffer))
        target[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]
        return size


_ABORT = b"\0abort"  # identity-compared sentinel


class _SinkWriter(io.RawIOBase):
    def __init__(self, sink: Sink) -> None:
        super().__init__()
        self._sink = sink

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._sink.write(data)
        return len(data)


class EncryptingWriter:
    """Encrypts everything written into ``sink`` to ``recipients``; :meth:`finish` ends the age stream.

    Use as a context manager: leaving it on an exception stops the encryption thread.
    """

    def __init__(self, sink: Sink, recipients: Sequence[str]) -> None:
        self.recipients = [fingerprint(r) for r in recipients]
        self._parsed = [parse_recipient(r) for r in recipients]
        self._queue: queue.Queue[bytes | None] = queue.Queue(QUEUE_DEPTH)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(sink,), name="age-encrypt", daemon=True)
        self._thread.start()

    def _run(self, sink: Sink) -> None:
        import pyrage

        try:
            pyrage.encrypt_io(_QueueReader(self._queue), _SinkWriter(sink), self._parsed)  # type: ignore[arg-type]
        except BaseException as exc:  # handed to the caller by write/finish
            self._error = exc
            _drain(self._queue)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        size = len(data)
        if size:
            self._put(bytes(data))  # the compressor reuses its buffer
        return size

    def _put(self, item: bytes | None) -> None:
        while True:
            self._raise_error()
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                if not self._thread.is_alive():
                    self._raise_error()
                    raise RuntimeError("age encryption thread ended early") from None

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def finish(self) -> None:
        self._put(None)
        self._thread.join()
        self._raise_error()

    def abort(self) -> None:
        if self._thread.is_alive():
            _drain(self._queue)
            try:
                self._queue.put(_ABORT, timeout=5)
            except queue.Full:
                pass
            self._thread.join(timeout=30)

    def describe(self) -> dict[str, Any] | None:
        """What a manifest records of the encryption: the format and the recipients' fingerprints."""
        return {"format": FORMAT, "recipients": self.recipients}

    def __enter__(self) -> EncryptingWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is not None:
            self.abort()


class _Plain:
    """:func:`sealed` without recipients: bytes pass through unchanged."""

    def __init__(self, sink: Sink) -> None:
        self.write = sink.write

    def finish(self) -> None:
        return None

    def describe(self) -> dict[str, Any] | None:
        return None


@contextlib.contextmanager
def sealed(sink: Sink, recipients: Sequence[str]) -> Iterator[EncryptingWriter | _Plain]:
    """A sink that encrypts into ``sink`` when there are recipients (``finish`` it), else ``sink`` itself."""
    if not recipients:
        yield _Plain(sink)
        return
    with EncryptingWriter(sink, recipients) as writer:
        yield writer


def _drain(chunks: queue.Queue[Any]) -> None:
    try:
        while True:
            chunks.get_nowait()
    except queue.Empty:
        pass


# -- reading ---------------------------------------------------------------------------------------

class _IterReader(io.RawIOBase):
    def __init__(self, chunks: Iterable[bytes]) -> None:
        super().__init__()
        self._chunks = iter(chunks)
        self._buffer = memoryview(b"")
        self.error: BaseException | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        try:
            while not self._buffer:
                chunk = next(self._chunks, None)
                if chunk is None:
                    return 0
                self._buffer = memoryview(chunk)
        except BaseException as exc:  # the store's own error wins over pyrage's wrapping of it
            self.error = exc
            raise
        size = min(len(target), len(self._buffer))
        target[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]
        return size


class _QueueWriter(io.RawIOBase):
    def __init__(self, out: queue.Queue[Any], stop: threading.Event) -> None:
        super().__init__()
        self._out = out
        self._stop = stop

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        item = bytes(data)
        while not self._stop.is_set():
            try:
                self._out.put(item, timeout=0.5)
                return len(item)
            except queue.Full:
                continue
        raise _Stopped("reader gone")


_END = object()


def iter_decrypted(chunks: Iterable[bytes], keyring: Keyring) -> Iterator[bytes]:
    """The plaintext of an age stream, as it comes; raises :class:`CannotDecrypt` (no identity opens it,
    with an empty message for the caller to fill), or :class:`DamagedCiphertext`."""
    import pyrage

    out: queue.Queue[Any] = queue.Queue(QUEUE_DEPTH)
    stop = threading.Event()
    reader = _IterReader(chunks)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            pyrage.decrypt_io(reader, _QueueWriter(out, stop), list(keyring.identities))  # type: ignore[arg-type]
        except BaseException as exc:
            failure.append(exc)
        finally:
            while not stop.is_set():
                try:
                    out.put(_END, timeout=0.5)
                    break
                except queue.Full:
                    continue

    thread = threading.Thread(target=run, name="age-decrypt", daemon=True)
    thread.start()
    try:
        while (item := out.get()) is not _END:
            yield item
        thread.join()
    finally:
        stop.set()
        _drain(out)
    if failure:
        raise _translate(failure[0], reader.error)


def _translate(exc: BaseException, source_error: BaseException | None) -> BaseException:
    import pyrage

    if source_error is not None:
        return source_error
    if isinstance(exc, pyrage.DecryptError) and _NO_MATCH in str(exc):
        return CannotDecrypt("")
    if isinstance(exc, (pyrage.DecryptError, OSError)):
        return DamagedCiphertext(f"not a complete, authentic age stream ({exc})")
    return exc


def opens(head: bytes, keyring: Keyring) -> bool:
    """Whether an identity opens the age stream that starts with ``head`` (its first bytes suffice)."""
    try:
        for _ in iter_decrypted([head], keyring):
            pass
    except CannotDecrypt:
        return False
    except DamagedCiphertext:
        return True  # the header opened; the stream only ends where ``head`` was cut
    return True
