"""Stream compression of backup objects, and undoing it."""

from __future__ import annotations

import io
import os

import pytest

from archiver.storage.compress import CompressingWriter, TruncatedStream, open_decompressed, zstd_threads


@pytest.mark.parametrize("codec, level, threads", [("zstd", 3, 0), ("zstd", 1, 1), ("zstd", 19, 2), ("gzip", 6, 0),
                                                   ("none", None, 0)])
def test_round_trip(codec: str, level: int | None, threads: int) -> None:
    data = (b"time,device,value\n" + os.urandom(1 << 20) + b"2026-01-01,meter-1,42.0\n" * 200_000)
    sink = io.BytesIO()
    writer = CompressingWriter(sink, codec, level, threads)  # type: ignore[arg-type]
    for offset in range(0, len(data), 100_000):
        writer.write(data[offset:offset + 100_000])
    writer.finish()
    assert writer.bytes_in == len(data)
    stored = sink.getvalue()
    if codec != "none":
        assert len(stored) < len(data) * 0.5
    assert open_decompressed(io.BytesIO(stored), codec).read() == data


def _compressed(codec: str, data: bytes) -> bytes:
    sink = io.BytesIO()
    writer = CompressingWriter(sink, codec, None, 1)  # type: ignore[arg-type]
    writer.write(data)
    writer.finish()
    return sink.getvalue()


@pytest.mark.parametrize("codec, error", [("zstd", TruncatedStream), ("gzip", EOFError)])
def test_a_truncated_stream_is_an_error_not_a_short_read(codec: str, error: type[Exception]) -> None:
    stored = _compressed(codec, os.urandom(200_000))
    with pytest.raises(error):
        open_decompressed(io.BytesIO(stored[:-10]), codec).read()


def test_concatenated_zstd_frames_read_as_one_stream() -> None:
    first, second = os.urandom(300_000), b"tail" * 100_000
    stored = _compressed("zstd", first) + _compressed("zstd", second)
    stream = open_decompressed(io.BytesIO(stored), "zstd")
    assert b"".join(iter(lambda: stream.read(7777), b"")) == first + second


def test_threads_zero_means_one_per_core() -> None:
    assert zstd_threads(0) == (os.cpu_count() or 1)
    assert zstd_threads(3) == 3


def test_unknown_codec_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown codec"):
        CompressingWriter(io.BytesIO(), "lz4")  # type: ignore[arg-type]
