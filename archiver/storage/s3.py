"""The ``s3://`` store: boto3 against AWS S3 or anything that speaks it (MinIO, Ceph, moto).

Uploads are multipart and streaming: bytes are cut into parts as they arrive, at most
``concurrency`` parts are in flight, so memory is bounded by ``(concurrency + 1) x part size``
whatever the object's size. Any failure aborts the multipart upload, so no invisible parts are
left to be billed. API calls are retried by botocore's ``standard`` retry mode; reading a
response body, which botocore does not retry, resumes with a ranged GET pinned to the ETag.
Every wait is bounded by ``storage.timeout`` as a whole, retries included (see ``waits``), and
once a stop was requested (SIGTERM, SIGINT) calls go through a client with short timeouts, so
that aborting an upload cannot hang on a stalled endpoint.
"""

from __future__ import annotations

import builtins
import contextlib
import io
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import boto3
import botocore.exceptions
from botocore.config import Config

from ..errors import ObjectNotFound, StoreError
from . import waits
from .base import IncompleteWrite, ObjectInfo, ObjectWriter, Store, check_key
from .objectlock import ObjectLock, check_bucket_lock
from .s3_transfer import TRANSIENT_READ_ERRORS, S3Reader, S3Writer, error_code, explain
from .waits import WaitBudget


class S3Store(Store):
    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None, region: str | None = None,
                 profile: str | None = None, sse: str | None = None, kms_key_id: str | None = None,
                 storage_class: str | None = None, addressing_style: str = "auto", concurrency: int = 4,
                 max_attempts: int = 5, timeout: float = 120.0, client: Any = None,
                 object_lock: ObjectLock | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.sse = sse
        self.kms_key_id = kms_key_id
        self.storage_class = storage_class
        self.object_lock = object_lock
        self._lock_checked = False
        self.concurrency = concurrency
        self.max_attempts = max_attempts
        self.budget = WaitBudget(total=timeout, max_attempts=max_attempts)
        self._connection: dict[str, Any] = {"endpoint_url": endpoint_url, "region": region, "profile": profile,
                            "addressing_style": addressing_style, "concurrency": concurrency}
        self._clients = waits.BoundedClients(self._new_client, self.budget, self.url, client=client)
        self.client = self._clients.client

    def _new_client(self, budget: WaitBudget) -> Any:
        settings = self._connection
        config = Config(retries={"mode": "standard", "total_max_attempts": budget.attempts},
                        s3={"addressing_style": settings["addressing_style"]}, connect_timeout=budget.connect_timeout,
                        read_timeout=budget.read_timeout, max_pool_connections=max(10, settings["concurrency"] * 2),
                        tcp_keepalive=True)
        profile = settings["profile"]
        session = boto3.session.Session(profile_name=profile) if profile else boto3.session.Session()
        return session.client("s3", endpoint_url=settings["endpoint_url"] or None,
                              region_name=settings["region"] or None, config=config)

    @property
    def api(self) -> Any:
        """The client for the next call (short timeouts once a stop was requested)."""
        return self._clients.current()

    def resuming(self, what: str, attempt: Callable[[], bytes]) -> bytes:
        """Read a response body (botocore does not retry those), resuming within one budget."""
        return waits.retrying(self.budget, what, attempt, TRANSIENT_READ_ERRORS)

    def object_key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    @property
    def locks_objects(self) -> bool:
        return True  # a bucket may hold locked objects even when this policy does not lock new ones

    def put_arguments(self, content_type: str | None, key: str = "") -> dict[str, Any]:
        arguments: dict[str, Any] = {}
        if self.object_lock is not None and self.object_lock.applies_to(key):
            arguments.update(self.object_lock.put_arguments())
        if self.sse:
            arguments["ServerSideEncryption"] = self.sse
        if self.kms_key_id:
            arguments["SSEKMSKeyId"] = self.kms_key_id
        if self.storage_class:
            arguments["StorageClass"] = self.storage_class
        if content_type:
            arguments["ContentType"] = content_type
        return arguments

    def writer(self, key: str, *, size_hint: int | None = None, if_absent: bool = False,
               content_type: str | None = None) -> ObjectWriter:
        if self.object_lock is not None and not self._lock_checked:
            check_bucket_lock(self.api, self.bucket, self.url)
            self._lock_checked = True
        return S3Writer(self, key, size_hint=size_hint, if_absent=if_absent, content_type=content_type)

    def open(self, key: str) -> BinaryIO:
        return io.BufferedReader(S3Reader(self, key), buffer_size=1024 * 1024)

    def read_range(self, key: str, start: int, length: int, *, etag: str | None = None) -> bytes:
        if length <= 0:
            return b""
        arguments: dict[str, Any] = {"Bucket": self.bucket, "Key": self.object_key(key),
                                     "Range": f"bytes={start}-{start + length - 1}"}
        if etag:
            arguments["IfMatch"] = f'"{etag}"'

        def attempt() -> bytes:
            response = self.api.get_object(**arguments)
            with contextlib.closing(response["Body"]) as body:
                return bytes(body.read())
        try:
            return self.resuming(f"reading {self.describe(key)} at byte {start}", attempt)
        except botocore.exceptions.ClientError as exc:
            code = error_code(exc)
            if code in ("NoSuchKey", "404", "NotFound"):
                raise ObjectNotFound(self.describe(key)) from None
            if code in ("PreconditionFailed", "412"):
                raise StoreError(f"{self.describe(key)} changed while it was being read (ETag no longer {etag})") from None
            raise explain(exc, f"cannot read {self.describe(key)}") from None
        except Exception as exc:
            raise explain(exc, f"reading {self.describe(key)} failed at byte {start}") from None

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        root = f"{self.prefix}/" if self.prefix else ""
        paginator = self.api.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=root + prefix):
                for item in page.get("Contents", []):
                    yield ObjectInfo(item["Key"][len(root):], int(item["Size"]), item["LastModified"],
                                     str(item.get("ETag", "")).strip('"') or None)
        except Exception as exc:
            raise explain(exc, f"cannot list {self.url}/{prefix}") from None

    def head(self, key: str) -> ObjectInfo | None:
        try:
            response = self.api.head_object(Bucket=self.bucket, Key=self.object_key(key))
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise explain(exc, f"cannot stat {self.describe(key)}") from None
        except Exception as exc:
            raise explain(exc, f"cannot stat {self.describe(key)}") from None
        return ObjectInfo(key, int(response["ContentLength"]), response["LastModified"],
                          str(response.get("ETag", "")).strip('"') or None,
                          locked_until=response.get("ObjectLockRetainUntilDate"))

    def delete(self, key: str) -> None:
        try:
            self.api.delete_object(Bucket=self.bucket, Key=self.object_key(key))
        except Exception as exc:
            raise explain(exc, f"cannot delete {self.describe(key)}") from None

    def incomplete_writes(self, prefix: str = "") -> builtins.list[IncompleteWrite]:
        """Multipart uploads never completed nor aborted (a SIGKILLed writer cannot abort its own)."""
        root = f"{self.prefix}/" if self.prefix else ""
        found: list[IncompleteWrite] = []
        try:
            for page in self.api.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket,
                                                                                      Prefix=root + prefix):
                for upload in page.get("Uploads", []):
                    key = upload["Key"][len(root):]
                    found.append(IncompleteWrite(key, upload["Initiated"], f"multipart upload {upload['UploadId']}",
                                                 upload["UploadId"]))
        except Exception as exc:
            raise explain(exc, f"cannot list pending uploads under {self.url}/{prefix}") from None
        return sorted(found, key=lambda write: (write.key, write.started))

    def discard_incomplete(self, write: IncompleteWrite) -> None:
        try:
            self.api.abort_multipart_upload(Bucket=self.bucket, Key=self.object_key(write.key), UploadId=write.handle)
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) == "NoSuchUpload":
                return
            raise explain(exc, f"cannot abort multipart upload {write.handle} of {self.describe(write.key)}") from None
        except Exception as exc:
            raise explain(exc, f"cannot abort multipart upload {write.handle} of {self.describe(write.key)}") from None

    def pending_uploads(self, prefix: str = "") -> builtins.list[dict[str, Any]]:
        """Multipart uploads started under ``prefix`` and neither completed nor aborted."""
        root = f"{self.prefix}/" if self.prefix else ""
        try:
            response = self.api.list_multipart_uploads(Bucket=self.bucket, Prefix=root + prefix)
        except Exception as exc:
            raise explain(exc, f"cannot list pending uploads under {self.url}") from None
        return list(response.get("Uploads", []))
