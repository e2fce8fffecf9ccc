"""S3 backend specifics, against moto's server over HTTP (faults injected with botocore hooks or a
TCP proxy, since moto itself has no fault injection)."""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import urlsplit

import pytest

from archiver.errors import StoreError
from archiver.policy.schema import StorageConfig
from archiver.storage.backends import open_store
from archiver.storage.s3 import S3Store
from archiver.storage.s3_transfer import MAX_PARTS, MIN_PART_SIZE, MiB, choose_part_size, part_size_for
from tests.netfault import CuttingProxy, inject_s3_errors
from tests.storage_helpers import pattern

GiB = 1024 * MiB


@pytest.mark.parametrize("hint, expected", [
    (None, 8 * MiB), (0, 8 * MiB), (10 * GiB, 8 * MiB), (62 * GiB, 8 * MiB),
    (100 * GiB, 13 * MiB), (1024 * GiB, 132 * MiB), (50 * 1024 * GiB, 5 * GiB),
])
def test_part_size_fits_the_hint_under_10000_parts(hint: int | None, expected: int) -> None:
    size = choose_part_size(hint)
    assert size == expected
    if hint and hint < 40 * 1024 * GiB:
        assert hint * 1.25 / size <= MAX_PARTS


def test_parts_grow_when_the_stream_outgrows_its_hint() -> None:
    sizes = [part_size_for(n, MIN_PART_SIZE) for n in range(1, MAX_PARTS + 1)]
    assert sizes[0] == sizes[4999] == 8 * MiB and sizes[5000] == 16 * MiB
    assert sum(sizes) > 500 * GiB  # a stream far beyond 78 GiB still fits in 10,000 parts


def test_transient_part_errors_are_retried_by_botocore(s3_store: S3Store) -> None:
    calls = inject_s3_errors(s3_store, "UploadPart", lambda n: n <= 2)
    data = pattern(20 * MiB)
    result = s3_store.put("retried.bin", iter([data]))
    assert len(calls) >= 5  # 3 parts, two of the attempts failed
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert s3_store.get_bytes("retried.bin") == data
    assert s3_store.pending_uploads() == []


def test_part_failing_beyond_retries_aborts_the_upload(s3_store: S3Store) -> None:
    s3_store.put_bytes("dump.bin", b"previous")
    calls = inject_s3_errors(s3_store, "UploadPart", lambda n: True)
    with pytest.raises(StoreError, match="upload of part .* failed: InternalError"):
        s3_store.put("dump.bin", iter([pattern(20 * MiB)]))
    assert len(calls) >= s3_store.max_attempts
    assert s3_store.get_bytes("dump.bin") == b"previous"
    assert s3_store.pending_uploads() == []


def test_missing_bucket_is_a_permanent_error(s3_endpoint: str) -> None:
    store = S3Store("no-such-bucket-here", "x", endpoint_url=s3_endpoint, region="us-east-1")
    with pytest.raises(StoreError, match="bucket does not exist \\(permanent"):
        store.put_bytes("a", b"b")
    with pytest.raises(StoreError, match="bucket does not exist"):
        list(store.list())


def test_encryption_and_storage_class_are_passed_through(bucket: str, s3_endpoint: str, s3_client: Any) -> None:
    store = open_store(StorageConfig(url=f"s3://{bucket}/enc", endpoint_url=s3_endpoint, region="us-east-1",
                                     sse="AES256", storage_class="STANDARD_IA"))
    store.put_bytes("small", b"x" * 100)
    store.put("large", iter([pattern(9 * MiB)]))
    for key in ("enc/small", "enc/large"):
        head = s3_client.head_object(Bucket=bucket, Key=key)
        assert head["ServerSideEncryption"] == "AES256"
        assert head["StorageClass"] == "STANDARD_IA"


def test_a_dropped_connection_mid_read_resumes_where_it_stopped(bucket: str, s3_endpoint: str) -> None:
    data = pattern(12 * MiB, seed=7)
    upstream = urlsplit(s3_endpoint)
    with CuttingProxy(upstream.hostname or "127.0.0.1", upstream.port or 80) as proxy:
        store = S3Store(bucket, "resume", endpoint_url=proxy.url, region="us-east-1")
        store.put("object.bin", iter([data]))
        proxy.arm(cut_after_bytes=5 * MiB)
        with store.open("object.bin") as stream:
            received = stream.read()
        assert proxy.cuts == 1
    assert hashlib.sha256(received).hexdigest() == hashlib.sha256(data).hexdigest()
