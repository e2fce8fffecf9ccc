"""Object storage: one small contract (:class:`Store`), backends chosen by URL scheme."""

from __future__ import annotations

from ..errors import UsageError
from ..policy import StorageConfig, parse_storage_url
from .base import IncompleteWrite, ObjectInfo, ObjectWriter, PutResult, Store, sha256_of
from .local import LocalStore
from .s3 import S3Store

__all__ = ["IncompleteWrite", "ObjectInfo", "ObjectWriter", "PutResult", "Store", "LocalStore", "S3Store", "open_store", "sha256_of"]


def open_store(config: StorageConfig | str) -> Store:
    """The store a policy's ``storage`` section (or a bare URL) points at."""
    settings = config if isinstance(config, StorageConfig) else StorageConfig(url=config)
    try:
        location = parse_storage_url(settings.url)
    except ValueError as exc:
        raise UsageError(f"storage.url {settings.url!r}: {exc}") from None
    if location.scheme == "file":
        return LocalStore(location.prefix)
    return S3Store(location.bucket, location.prefix, endpoint_url=settings.endpoint_url, region=settings.region,
                   profile=settings.profile, sse=settings.sse, kms_key_id=settings.kms_key_id,
                   storage_class=settings.storage_class, addressing_style=settings.addressing_style,
                   concurrency=settings.upload_concurrency, max_attempts=settings.max_attempts,
                   timeout=settings.timeout.total_seconds())
