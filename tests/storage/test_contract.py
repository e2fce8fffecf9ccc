"""One contract, every backend: the same tests run against the file store and moto's S3 server."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from archiver.errors import ObjectExists, ObjectNotFound, StoreError
from archiver.storage.base import Store, sha256_of
from archiver.storage.local import LocalStore
from archiver.storage.s3 import S3Store
from tests.helpers import PROJECT
from tests.storage_helpers import MiB, pattern


def leftovers(store: Store) -> list[str]:
    """Anything a failed write could have left behind: temp files or pending multipart uploads."""
    if isinstance(store, LocalStore):
        return [str(p) for p in store.stale_temp_files()]
    assert isinstance(store, S3Store)
    return [u["Key"] for u in store.pending_uploads()]


def test_put_then_read_back_with_checksum(store: Store) -> None:
    data = pattern(3 * MiB + 17)
    result = store.put("backups/2026/a.bin", iter([data[:MiB], data[MiB:]]))
    assert result.size == len(data)
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert store.get_bytes("backups/2026/a.bin") == data
    with store.open("backups/2026/a.bin") as stream:
        assert sha256_of(stream) == (result.sha256, len(data))


def test_multipart_sized_object_round_trips(store: Store) -> None:
    data = pattern(21 * MiB, seed=1)  # more than two 8 MiB parts on S3
    with store.writer("big/object.bin", size_hint=len(data)) as out:
        for offset in range(0, len(data), 3 * MiB + 5):
            out.write(data[offset:offset + 3 * MiB + 5])
    assert out.result is not None and out.result.sha256 == hashlib.sha256(data).hexdigest()
    info = store.head("big/object.bin")
    assert info is not None and info.size == len(data)
    with store.open("big/object.bin") as stream:
        assert stream.read(10) == data[:10]
        assert stream.read() == data[10:]


def test_empty_object(store: Store) -> None:
    result = store.put_bytes("empty", b"")
    assert result.size == 0 and result.sha256 == hashlib.sha256(b"").hexdigest()
    assert store.get_bytes("empty") == b""
    assert store.head("empty").size == 0  # type: ignore[union-attr]


def test_list_by_prefix_in_key_order(store: Store) -> None:
    for key in ("b/2", "a/1", "a/10", "a/2", "ab/1", "c"):
        store.put_bytes(key, key.encode())
    assert [o.key for o in store.list("a/")] == ["a/1", "a/10", "a/2"]
    assert [o.key for o in store.list("a")] == ["a/1", "a/10", "a/2", "ab/1"]
    assert [(o.key, o.size) for o in store.list()] == [("a/1", 3), ("a/10", 4), ("a/2", 3), ("ab/1", 4), ("b/2", 3), ("c", 1)]
    assert list(store.list("nothing/")) == []


def test_head_and_delete(store: Store) -> None:
    assert store.head("missing") is None
    store.put_bytes("x/y", b"12345")
    info = store.head("x/y")
    assert info is not None and info.key == "x/y" and info.size == 5
    store.delete("x/y")
    assert store.head("x/y") is None
    store.delete("x/y")  # deleting a missing object is not an error
    with pytest.raises(ObjectNotFound):
        store.open("x/y")


def test_create_only_write_refuses_existing_object(store: Store) -> None:
    store.put_bytes("lease", b"first", if_absent=True)
    with pytest.raises(ObjectExists):
        store.put_bytes("lease", b"second", if_absent=True)
    assert store.get_bytes("lease") == b"first"
    store.put_bytes("lease", b"third")  # a plain put overwrites
    assert store.get_bytes("lease") == b"third"


def test_failure_midway_leaves_nothing(store: Store) -> None:
    store.put_bytes("dump.bin", b"previous good object")

    def failing_source() -> Iterator[bytes]:
        for index in range(5):
            yield pattern(4 * MiB, seed=index)  # past the first multipart part on S3
        raise RuntimeError("pg_dump died")

    with pytest.raises(RuntimeError, match="pg_dump died"):
        store.put("dump.bin", failing_source())
    with pytest.raises(RuntimeError):
        store.put("never.bin", failing_source())
    assert store.get_bytes("dump.bin") == b"previous good object"
    assert store.head("never.bin") is None
    assert leftovers(store) == []


def test_writer_aborts_on_exception_in_block(store: Store) -> None:
    with pytest.raises(ValueError):
        with store.writer("half.bin") as out:
            out.write(pattern(9 * MiB))
            raise ValueError("caller gave up")
    assert store.head("half.bin") is None
    assert leftovers(store) == []


@pytest.mark.parametrize("key", ["", "/abs", "a//b", "../up", "a/./b", "a/../b"])
def test_invalid_keys_are_refused(store: Store, key: str) -> None:
    with pytest.raises(StoreError, match="invalid object key"):
        store.put_bytes(key, b"x")


CHILD = textwrap.dedent("""
    import hashlib, json, sys
    from archiver.storage.backends import open_store
    from archiver.policy.schema import StorageConfig
    url, endpoint, total = sys.argv[1], sys.argv[2] or None, int(sys.argv[3])
    store = open_store(StorageConfig(url=url, endpoint_url=endpoint, region="us-east-1"))
    block = hashlib.sha256(b"seed").digest() * 32768            # 1 MiB
    def source():
        for i in range(total // len(block)):
            yield block[i % 977:] + block[:i % 977]           # every MiB differs
    result = store.put("big/stream.bin", source())
    # VmHWM, not getrusage(): Linux carries ru_maxrss over from the forking parent (pytest, which
    # holds moto's copy of the object), while VmHWM belongs to this process image alone.
    hwm_kib = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print(json.dumps({"size": result.size, "sha256": result.sha256, "peak_rss_mib": hwm_kib / 1024}))
""")


def expected_stream_sha(total: int) -> str:
    block = hashlib.sha256(b"seed").digest() * 32768
    digest = hashlib.sha256()
    for i in range(total // len(block)):
        digest.update(block[i % 977:] + block[:i % 977])
    return digest.hexdigest()


def test_200_mib_stream_uploads_with_bounded_memory(store: Store, request: pytest.FixtureRequest) -> None:
    """The upload runs in a child process so its peak RSS is its own (moto keeps the object in ours)."""
    total = 200 * MiB
    if isinstance(store, S3Store):
        url, endpoint = f"s3://{store.bucket}/{store.prefix}", request.getfixturevalue("s3_endpoint")
    else:
        assert isinstance(store, LocalStore)
        url, endpoint = f"file://{store.root}", ""
    proc = subprocess.run([sys.executable, "-c", CHILD, url, endpoint, str(total)], capture_output=True, text=True,
                          timeout=600, cwd=PROJECT)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["size"] == total
    assert report["sha256"] == expected_stream_sha(total)
    assert report["peak_rss_mib"] < 150, report
    with store.open("big/stream.bin") as stream:
        assert sha256_of(stream) == (report["sha256"], total)
