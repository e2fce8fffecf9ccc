"""Streaming transfers for the ``s3://`` store: multipart uploads with bounded memory, resumable reads.

Bytes are cut into parts as they arrive, at most ``concurrency`` parts are in flight, so memory is
bounded by ``(concurrency + 1) x part size`` whatever the object's size. Any failure aborts the
multipart upload, so no invisible parts are left to be billed. Reading a response body, which
botocore does not retry, resumes with a ranged GET pinned to the ETag.
"""

from __future__ import annotations

import io
import math
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

import botocore.exceptions

from ..common import log, signals
from ..errors import ObjectExists, ObjectNotFound, StoreError
from . import waits
from .base import ObjectWriter


class S3Access(Protocol):
    """What the transfers use of their store (:class:`archiver.storage.s3.S3Store`)."""

    bucket: str
    concurrency: int

    @property
    def api(self) -> Any: ...
    def resuming(self, what: str, attempt: Callable[[], bytes]) -> bytes: ...
    def object_key(self, key: str) -> str: ...
    def put_arguments(self, content_type: str | None, key: str = "") -> dict[str, Any]: ...
    def describe(self, key: str) -> str: ...


MiB = 1024 * 1024
MIN_PART_SIZE = 8 * MiB
MAX_PART_SIZE = 5 * 1024 * MiB
MAX_PARTS = 10_000
# Parts beyond this many grow (doubling every GROWTH_STEP parts) so a stream larger than its
# size hint still ends below MAX_PARTS instead of failing at part 10,001.
GROWTH_AFTER = 5_000
GROWTH_STEP = 1_000

TRANSIENT_READ_ERRORS = (
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ConnectionClosedError,
    botocore.exceptions.IncompleteReadError,
    botocore.exceptions.ResponseStreamingError,
    botocore.exceptions.EndpointConnectionError,
    ConnectionError,
    TimeoutError,
)
_log = log.get_logger("storage")


def choose_part_size(size_hint: int | None) -> int:
    """The smallest part size (whole MiB, at least 8 MiB) that fits ``size_hint`` in 10,000 parts.

    A 25% margin covers hints that are estimates (a dump can be larger than the database).
    """
    if not size_hint or size_hint <= 0:
        return MIN_PART_SIZE
    needed = math.ceil(size_hint * 1.25 / MAX_PARTS)
    return min(MAX_PART_SIZE, max(MIN_PART_SIZE, math.ceil(needed / MiB) * MiB))


def part_size_for(part_number: int, base: int) -> int:
    if part_number <= GROWTH_AFTER:
        return base
    doublings = (part_number - GROWTH_AFTER - 1) // GROWTH_STEP + 1
    return min(MAX_PART_SIZE, base * (1 << doublings))


def error_code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def explain(exc: Exception, what: str) -> StoreError:
    """A StoreError that says whether retrying could help (permanent errors say so)."""
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, botocore.exceptions.ClientError):
        code = error_code(exc)
        permanent = {
            "NoSuchBucket": "the bucket does not exist (permanent: create it or fix storage.url)",
            "AccessDenied": "access denied (permanent: check the credentials and the bucket policy)",
            "InvalidAccessKeyId": "the access key is not known (permanent: check AWS credentials)",
            "SignatureDoesNotMatch": "the secret key does not match (permanent: check AWS credentials)",
            "KMS.NotFoundException": "the KMS key does not exist (permanent: fix storage.kms_key_id)",
        }
        reason = permanent.get(code, f"{code}: {exc.response.get('Error', {}).get('Message', '')}".strip(": "))
        return StoreError(f"{what}: {reason}")
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return StoreError(f"{what}: no AWS credentials found (permanent: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                          "a profile, or an instance/pod role)")
    wait: waits.Wait | None = getattr(exc, "archiver_wait", None)
    given_up = f"; {wait.gave_up()}" if wait is not None else ""
    if isinstance(exc, botocore.exceptions.EndpointConnectionError):
        return StoreError(f"{what}: cannot reach the S3 endpoint ({exc}){given_up}")
    if isinstance(exc, waits.NO_ANSWER_ERRORS):
        return StoreError(f"{what}: no answer from the S3 endpoint ({exc}){given_up}")
    return StoreError(f"{what}: {type(exc).__name__}: {exc}")


class S3Writer(ObjectWriter):
    def __init__(self, store: S3Access, key: str, *, size_hint: int | None, if_absent: bool,
                 content_type: str | None) -> None:
        super().__init__(key)
        self._store = store
        self._object_key = store.object_key(key)
        self._if_absent = if_absent
        self._extra = store.put_arguments(content_type, key)
        self._base_part_size = choose_part_size(size_hint)
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._part_number = 0
        self._pending: deque[Future[dict[str, Any]]] = deque()
        self._done_parts: list[dict[str, Any]] = []
        self._executor: ThreadPoolExecutor | None = None

    @property
    def part_size(self) -> int:
        return part_size_for(self._part_number + 1, self._base_part_size)

    def _write(self, data: memoryview) -> None:
        offset = 0
        while offset < data.nbytes:
            room = self.part_size - len(self._buffer)
            take = min(room, data.nbytes - offset)
            self._buffer += data[offset:offset + take]
            offset += take
            if len(self._buffer) >= self.part_size:
                self._flush_part()

    def _flush_part(self) -> None:
        if self._upload_id is None:
            self._start_multipart()
        self._part_number += 1
        if self._part_number > MAX_PARTS:
            raise StoreError(f"{self._store.describe(self.key)}: more than {MAX_PARTS} parts; the size hint was far too small")
        body, self._buffer = bytes(self._buffer), bytearray()
        assert self._executor is not None
        while len(self._pending) >= self._store.concurrency:
            self._done_parts.append(self._pending.popleft().result())
        self._pending.append(self._executor.submit(self._upload_part, self._part_number, body))

    def _start_multipart(self) -> None:
        try:
            response = self._store.api.create_multipart_upload(Bucket=self._store.bucket, Key=self._object_key, **self._extra)
        except Exception as exc:
            raise explain(exc, f"cannot start upload of {self._store.describe(self.key)}") from None
        self._upload_id = response["UploadId"]
        self._executor = ThreadPoolExecutor(max_workers=self._store.concurrency, thread_name_prefix="s3-part")

    def _upload_part(self, number: int, body: bytes) -> dict[str, Any]:
        try:
            response = self._store.api.upload_part(Bucket=self._store.bucket, Key=self._object_key,
                                                   UploadId=self._upload_id, PartNumber=number, Body=body)
        except Exception as exc:
            raise explain(exc, f"upload of part {number} of {self._store.describe(self.key)} failed") from None
        part = {"PartNumber": number, "ETag": response["ETag"]}
        for name in ("ChecksumCRC32", "ChecksumCRC32C", "ChecksumCRC64NVME", "ChecksumSHA1", "ChecksumSHA256"):
            if response.get(name):
                part[name] = response[name]
        return part

    def _commit(self) -> str | None:
        conditional = {"IfNoneMatch": "*"} if self._if_absent else {}
        if self._upload_id is None:
            try:
                response = self._store.api.put_object(Bucket=self._store.bucket, Key=self._object_key,
                                                      Body=bytes(self._buffer), **self._extra, **conditional)
            except botocore.exceptions.ClientError as exc:
                if error_code(exc) in ("PreconditionFailed", "ConditionalRequestConflict"):
                    raise ObjectExists(self._store.describe(self.key)) from None
                raise explain(exc, f"cannot write {self._store.describe(self.key)}") from None
            except Exception as exc:
                raise explain(exc, f"cannot write {self._store.describe(self.key)}") from None
            self._buffer = bytearray()
            return str(response.get("ETag", "")).strip('"') or None
        if self._buffer or self._part_number == 0:
            self._flush_part()
        while self._pending:
            self._done_parts.append(self._pending.popleft().result())
        self._shutdown()
        try:
            response = self._store.api.complete_multipart_upload(
                Bucket=self._store.bucket, Key=self._object_key, UploadId=self._upload_id,
                MultipartUpload={"Parts": sorted(self._done_parts, key=lambda p: p["PartNumber"])}, **conditional)
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise ObjectExists(self._store.describe(self.key)) from None
            raise explain(exc, f"cannot complete upload of {self._store.describe(self.key)}") from None
        except Exception as exc:
            raise explain(exc, f"cannot complete upload of {self._store.describe(self.key)}") from None
        return str(response.get("ETag", "")).strip('"') or None

    def _shutdown(self) -> None:
        """Wait for the parts in flight, unless a stop was requested: then they are abandoned
        (their threads end with their timeouts, or with the process)."""
        if self._executor is not None:
            self._executor.shutdown(wait=not signals.stop_requested(), cancel_futures=True)
            self._executor = None

    def _abort(self) -> None:
        self._buffer = bytearray()
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        self._shutdown()
        if self._upload_id is not None:
            try:
                self._store.api.abort_multipart_upload(Bucket=self._store.bucket, Key=self._object_key,
                                                       UploadId=self._upload_id)
            except Exception as exc:  # the original error matters more; say what is left behind
                error = explain(exc, f"could not abort multipart upload {self._upload_id} of "
                                     f"{self._store.describe(self.key)} (an S3 lifecycle rule for incomplete uploads "
                                     "will remove it)")
                if signals.stop_requested():  # stopping: the interruption is what the run ends with
                    _log.warning("storage.abort_failed", extra=log.fields(error=str(error)))
                    return
                raise error from None


class S3Reader(io.RawIOBase):
    """A GET body that survives a dropped connection by resuming at the current offset."""

    def __init__(self, store: S3Access, key: str) -> None:
        super().__init__()
        self._store = store
        self._key = key
        self._object_key = store.object_key(key)
        self._position = 0
        self._etag: str | None = None
        self._body: Any = None
        self.size = 0
        self._open_body()

    def _open_body(self) -> None:
        arguments: dict[str, Any] = {"Bucket": self._store.bucket, "Key": self._object_key}
        if self._position:
            arguments["Range"] = f"bytes={self._position}-"
        if self._etag:
            arguments["IfMatch"] = self._etag  # the object must not change under a resumed read
        what = f"cannot read {self._store.describe(self._key)}" + (f" from byte {self._position}"
                                                                   if self._position else "")
        try:
            response = self._store.api.get_object(**arguments)
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) in ("NoSuchKey", "404", "NotFound"):
                raise ObjectNotFound(self._store.describe(self._key)) from None
            raise explain(exc, what) from None
        except Exception as exc:
            raise explain(exc, what) from None
        if self._etag is None:
            self._etag = response.get("ETag")
            self.size = int(response.get("ContentLength", 0))
        self._body = response["Body"]

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self._read_with_resume(len(view))
        view[:len(data)] = data
        self._position += len(data)
        return len(data)

    def _read_with_resume(self, size: int) -> bytes:
        def attempt() -> bytes:
            if self._body is None:
                self._open_body()
            try:
                data: bytes = self._body.read(size)
                return data
            except TRANSIENT_READ_ERRORS:
                self._body = None
                raise
        return self._store.resuming(f"reading {self._store.describe(self._key)} at byte {self._position}", attempt)

    def close(self) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None
        super().close()
