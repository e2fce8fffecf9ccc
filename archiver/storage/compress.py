"""Stream compression for backup objects: zstd (multithreaded), gzip, or none.

pg_dump 15 can only gzip, single-threaded, which makes a dump CPU-bound. The backup runs
pg_dump uncompressed and compresses its stream here on the way to the store; the codec is
recorded in the manifest so a restore can undo it with :func:`open_decompressed`.
"""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO, Literal, Protocol

import zstandard

from ..common.sysinfo import available_cpus

Codec = Literal["zstd", "gzip", "none"]
CODECS: tuple[Codec, ...] = ("zstd", "gzip", "none")
SUFFIXES: dict[str, str] = {"zstd": ".zst", "gzip": ".gz", "none": ""}
DEFAULT_LEVELS: dict[str, int] = {"zstd": 3, "gzip": 6, "none": 0}
READ_SIZE = 1024 * 1024


class Sink(Protocol):
    def write(self, data: bytes | bytearray | memoryview) -> int: ...


class CompressingWriter:
    """Compresses everything written into ``sink``; :meth:`finish` ends the stream.

    ``finish`` must be called before the sink is committed: without it a zstd frame or a
    gzip member is incomplete. Dropping the writer without ``finish`` (on an error) is fine.
    """

    def __init__(self, sink: Sink, codec: Codec, level: int | None = None, threads: int = 0) -> None:
        if codec not in CODECS:
            raise ValueError(f"unknown codec {codec!r} (allowed: {', '.join(CODECS)})")
        self.codec = codec
        self.level = DEFAULT_LEVELS[codec] if level is None else level
        self.threads = zstd_threads(threads) if codec == "zstd" else 1
        self.bytes_in = 0
        self._sink = sink
        self._stream: BinaryIO | None = None
        if codec == "zstd":
            compressor = zstandard.ZstdCompressor(level=self.level, threads=self.threads, write_checksum=True)
            self._stream = compressor.stream_writer(sink, closefd=False)  # type: ignore[arg-type]
        elif codec == "gzip":
            self._stream = gzip.GzipFile(  # type: ignore[call-overload]  # a Sink has no flush(), which GzipFile needs only in flush()
                fileobj=sink, mode="wb", compresslevel=self.level, mtime=0)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        size = len(data)
        self.bytes_in += size
        if self._stream is None:
            self._sink.write(data)
        else:
            self._stream.write(data)
        return size

    def finish(self) -> None:
        if self._stream is not None:
            self._stream.close()  # ends the frame / member; the sink stays open (closefd=False)
            self._stream = None


def zstd_threads(configured: int) -> int:
    """The policy's ``threads`` (0 = one per core) as zstandard's ``threads`` argument.

    zstd with one worker thread still compresses beside the caller, so the reading loop and the
    compression overlap even on one core.
    """
    if configured > 0:
        return configured
    return available_cpus()


class TruncatedStream(ValueError):
    """The compressed stream ended in the middle of a frame: the object is incomplete."""


class _ZstdReader(io.RawIOBase):
    """Decompresses every frame of a zstd stream; ends with an error, not silently, when the
    input stops mid-frame (zstandard's ``stream_reader`` returns the partial data)."""

    def __init__(self, source: BinaryIO, read_size: int = READ_SIZE) -> None:
        super().__init__()
        self._source = source
        self._read_size = read_size
        self._decompressor = zstandard.ZstdDecompressor()
        self._frame = self._decompressor.decompressobj()
        self._pending = b""
        self._offset = 0
        self._in_frame = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while self._offset >= len(self._pending):
            if not self._fill():
                return 0
        size = min(len(view), len(self._pending) - self._offset)
        view[:size] = self._pending[self._offset:self._offset + size]
        self._offset += size
        return size

    def _fill(self) -> bool:
        """Decompress more input into ``_pending``; False at a clean end of the stream."""
        data = self._source.read(self._read_size)
        if not data:
            if self._in_frame:
                raise TruncatedStream("zstd stream ends in the middle of a frame (the object is truncated)")
            return False
        self._pending, self._offset = b"", 0
        while data:
            self._in_frame = True
            self._pending += self._frame.decompress(data)
            if not self._frame.eof:
                break
            data = self._frame.unused_data
            self._frame = self._decompressor.decompressobj()
            self._in_frame = False
        return True


def open_decompressed(stream: BinaryIO, codec: str) -> BinaryIO:
    """A readable stream of the original bytes of an object written with ``codec``.

    A truncated object raises (TruncatedStream for zstd, EOFError for gzip) at its end.
    """
    if codec == "zstd":
        return io.BufferedReader(_ZstdReader(stream), buffer_size=READ_SIZE)
    if codec == "gzip":
        return gzip.GzipFile(fileobj=stream, mode="rb")  # type: ignore[return-value]
    if codec == "none":
        return stream
    raise ValueError(f"unknown codec {codec!r} (allowed: {', '.join(CODECS)})")


def iter_decompressed(chunks: Iterable[bytes], codec: str) -> Iterator[bytes]:
    """The original bytes of an object written with ``codec``, from its stored chunks, as they come.

    The generator form of :func:`open_decompressed` for hot paths (a restore feeding pg_restore):
    each input chunk is decompressed in one call, with no intermediate buffering or copying. Every
    frame (zstd) or member (gzip) is read; a stream that ends inside one raises
    :class:`TruncatedStream`.
    """
    if codec == "none":
        yield from chunks
        return
    if codec not in ("zstd", "gzip"):
        raise ValueError(f"unknown codec {codec!r} (allowed: {', '.join(CODECS)})")
    new = (zstandard.ZstdDecompressor().decompressobj if codec == "zstd"
           else lambda: zlib.decompressobj(wbits=16 + zlib.MAX_WBITS))
    decoder: Any = new()
    started = False
    for chunk in chunks:
        while chunk:
            started = True
            output = decoder.decompress(chunk)
            if output:
                yield output
            if not decoder.eof:
                break
            chunk = decoder.unused_data
            decoder, started = new(), False
    if started:
        raise TruncatedStream(f"{codec} stream ends in the middle of a {'frame' if codec == 'zstd' else 'member'} "
                              "(the object is truncated)")
