"""Storage URLs: ``s3://bucket/prefix`` and ``file:///path``, and S3's bucket-name rules.

Pure parsing: the policy checks URLs with it and :mod:`archiver.storage.backends` chooses a store
by the scheme.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def bucket_name_problem(bucket: str) -> str | None:
    """Why S3 would reject this bucket name, or None (the general-purpose bucket rules)."""
    if not 3 <= len(bucket) <= 63:
        return "must be 3 to 63 characters long"
    if not _BUCKET_RE.fullmatch(bucket):
        return "may hold only lowercase letters, digits, '.' and '-', and must start and end with a letter or digit"
    if ".." in bucket or ".-" in bucket or "-." in bucket:
        return "may not contain '..', '.-' or '-.'"
    try:
        ipaddress.IPv4Address(bucket)
        return "may not look like an IP address"
    except ValueError:
        pass
    for prefix in ("xn--", "sthree-", "amzn-s3-demo-"):
        if bucket.startswith(prefix):
            return f"may not start with {prefix!r}"
    for suffix in ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3"):
        if bucket.endswith(suffix):
            return f"may not end with {suffix!r}"
    return None


@dataclass(frozen=True)
class StorageLocation:
    scheme: str
    bucket: str  # empty for file://
    prefix: str  # key prefix inside the bucket, or the directory for file://

    @property
    def identity(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.prefix.strip('/')}".rstrip("/")


def parse_storage_url(url: str) -> StorageLocation:
    """``s3://bucket/prefix`` or ``file:///path``; a prefix whose parts could not be storage keys
    (empty, ``.``, ``..``) or a ``?query``/``#fragment`` that would be silently dropped is refused."""
    parts = urlsplit(url)
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise ValueError("a storage URL takes no ?query or #fragment")
    if parts.scheme == "s3":
        prefix = parts.path.strip("/")
        if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
            raise ValueError("the prefix may not hold empty, '.' or '..' parts")
        return StorageLocation("s3", parts.netloc, prefix)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError("file URLs name a local path: file:///absolute/path")
        if any(part in (".", "..") for part in parts.path.split("/")):
            raise ValueError("the path may not hold '.' or '..' parts")
        return StorageLocation("file", "", parts.path)
    raise ValueError("unsupported scheme")
