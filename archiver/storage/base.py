"""The storage contract every backend fulfils.

Five operations, as small as litestream's replica client: put from a stream (or push bytes into
a writer), open for reading, list by prefix, head, delete. Keys are relative to the store's root
(the bucket prefix or the directory of the storage URL) and always use ``/``.
"""

from __future__ import annotations

import builtins
import hashlib
import io
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, BinaryIO

from ..errors import ObjectNotFound, StoreError

READ_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: datetime
    etag: str | None = None
    locked_until: datetime | None = None  # S3 Object Lock: the object cannot be deleted before (head only)


@dataclass(frozen=True)
class IncompleteWrite:
    """A write that was started and never committed nor aborted (its writer was killed).

    ``handle`` is the backend's own reference (an S3 upload id, a temp file path).
    """

    key: str
    started: datetime
    description: str
    handle: str


@dataclass(frozen=True)
class PutResult:
    key: str
    size: int
    sha256: str
    etag: str | None = None
    encryption: dict[str, Any] | None = None  # age: the format and the recipients' fingerprints


def check_key(key: str) -> str:
    """Refuse keys that could escape the store's root or mean different things per backend."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise StoreError(f"invalid object key {key!r}: relative, '/'-separated, no empty, '.' or '..' parts")
    return key


class ObjectWriter(ABC):
    """A streaming upload: ``write`` bytes, then ``commit`` (visible) or ``abort`` (nothing left).

    As a context manager it commits on success and aborts on any exception, so an error midway
    never leaves a partial object or a pending multipart upload behind.
    """

    def __init__(self, key: str) -> None:
        self.key = key
        self._sha256 = hashlib.sha256()
        self.size = 0
        self.result: PutResult | None = None
        self._closed = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._closed:
            raise StoreError(f"write to {self.key} after commit/abort")
        view = memoryview(data)
        if view.nbytes:
            self._sha256.update(view)
            self.size += view.nbytes
            self._write(view)
        return view.nbytes

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()

    def commit(self) -> PutResult:
        if self._closed:
            raise StoreError(f"commit of {self.key} after commit/abort")
        self._closed = True
        try:
            etag = self._commit()
        except BaseException:
            self._abort()
            raise
        self.result = PutResult(self.key, self.size, self.sha256, etag)
        return self.result

    def abort(self) -> None:
        if not self._closed:
            self._closed = True
            self._abort()

    # file-like odds and ends so writers can be handed to libraries (pyarrow, zstandard)
    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        return None

    @property
    def closed(self) -> bool:
        return self._closed

    def tell(self) -> int:
        return self.size

    def __enter__(self) -> ObjectWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is None:
            if not self._closed:
                self.commit()
        else:
            self.abort()

    @abstractmethod
    def _write(self, data: memoryview) -> None: ...

    @abstractmethod
    def _commit(self) -> str | None:
        """Make the object visible; return its ETag when the backend has one."""

    @abstractmethod
    def _abort(self) -> None: ...


class Store(ABC):
    """A place for objects: an S3 prefix or a local directory."""

    url: str

    @property
    def locks_objects(self) -> bool:
        """Objects may carry a retention (S3 Object Lock): ``head`` reports ``locked_until``."""
        return False

    @abstractmethod
    def writer(self, key: str, *, size_hint: int | None = None, if_absent: bool = False,
               content_type: str | None = None) -> ObjectWriter:
        """A streaming writer for ``key``; ``if_absent`` makes the commit fail if the key exists."""

    @abstractmethod
    def open(self, key: str) -> BinaryIO:
        """A readable, buffered stream of the object's bytes (raises ObjectNotFound)."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects whose key starts with ``prefix``, in key order."""

    @abstractmethod
    def head(self, key: str) -> ObjectInfo | None:
        """The object's size and time, or None when it does not exist."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; removing a missing object is not an error."""

    def incomplete_writes(self, prefix: str = "") -> builtins.list[IncompleteWrite]:
        """Writes under ``prefix`` left behind by a killed writer; backends without any return []."""
        return []

    def discard_incomplete(self, write: IncompleteWrite) -> None:
        """Remove what an incomplete write left (an S3 multipart upload, a temp file)."""
        return None

    def describe(self, key: str) -> str:
        """A display URL for an object, for messages."""
        return f"{self.url.rstrip('/')}/{key}"

    def put(self, key: str, stream: BinaryIO | Iterable[bytes], *, size_hint: int | None = None,
            if_absent: bool = False, content_type: str | None = None) -> PutResult:
        """Upload everything ``stream`` yields; memory stays bounded by the writer's buffer."""
        with self.writer(key, size_hint=size_hint, if_absent=if_absent, content_type=content_type) as out:
            for chunk in _chunks(stream):
                out.write(chunk)
        assert out.result is not None
        return out.result

    def put_bytes(self, key: str, data: bytes, *, if_absent: bool = False, content_type: str | None = None) -> PutResult:
        return self.put(key, io.BytesIO(data), size_hint=len(data), if_absent=if_absent, content_type=content_type)

    def get_bytes(self, key: str) -> bytes:
        with self.open(key) as stream:
            return stream.read()

    def read_range(self, key: str, start: int, length: int, *, etag: str | None = None) -> bytes:
        """``length`` bytes from ``start`` (fewer at the end of the object).

        With ``etag``, a backend that has ETags refuses to read an object that has changed.
        """
        with self.open(key) as stream:
            stream.seek(start)
            return stream.read(length)

    def open_seekable(self, key: str) -> BinaryIO:
        """A seekable reader for formats that need random access (Parquet reads its footer first).

        Reads become ranged requests; nothing is copied to local disk.
        """
        return io.BufferedReader(RangeReader(self, key), buffer_size=READ_CHUNK)


class RangeReader(io.RawIOBase):
    """A seekable view of one object, pinned to the version (ETag) it had when opened."""

    def __init__(self, store: Store, key: str) -> None:
        super().__init__()
        info = store.head(key)
        if info is None:
            raise ObjectNotFound(store.describe(key))
        self._store = store
        self._key = key
        self.size = info.size
        self.etag = info.etag
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._position = base + offset
        return self._position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        wanted = min(len(view), self.size - self._position)
        if wanted <= 0:
            return 0
        data = self._store.read_range(self._key, self._position, wanted, etag=self.etag)
        view[:len(data)] = data
        self._position += len(data)
        return len(data)


def _chunks(stream: BinaryIO | Iterable[bytes]) -> Iterator[bytes]:
    read = getattr(stream, "read", None)
    if read is None:
        yield from stream
        return
    while chunk := read(READ_CHUNK):
        yield chunk


def sha256_of(stream: BinaryIO) -> tuple[str, int]:
    """SHA-256 and size of everything left in ``stream``."""
    digest, size = hashlib.sha256(), 0
    while chunk := stream.read(READ_CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size
