"""The store a URL names: backends chosen by URL scheme (``s3://``, ``file://``).

Storage knows no policy: :func:`open_store` takes anything shaped like a policy's ``storage``
section (:class:`StoreSettings`), or a bare URL.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Protocol

from ..errors import UsageError
from .base import Store
from .local import LocalStore
from .url import parse_storage_url


class StoreSettings(Protocol):
    """What opening a store needs: the fields of a policy's ``storage`` section."""

    @property
    def url(self) -> str: ...
    @property
    def endpoint_url(self) -> str | None: ...
    @property
    def region(self) -> str | None: ...
    @property
    def profile(self) -> str | None: ...
    @property
    def sse(self) -> str | None: ...
    @property
    def kms_key_id(self) -> str | None: ...
    @property
    def storage_class(self) -> str | None: ...
    @property
    def addressing_style(self) -> str: ...
    @property
    def upload_concurrency(self) -> int: ...
    @property
    def max_attempts(self) -> int: ...
    @property
    def timeout(self) -> timedelta: ...


def open_store(config: StoreSettings | str) -> Store:
    """The store a policy's ``storage`` section (or a bare URL, with the defaults) points at."""
    url = config if isinstance(config, str) else config.url
    try:
        location = parse_storage_url(url)
    except ValueError as exc:
        raise UsageError(f"storage.url {url!r}: {exc}") from None
    if location.scheme == "file":
        return LocalStore(location.prefix)
    from .s3 import S3Store  # boto3: loaded only for an s3:// store

    if isinstance(config, str):
        return S3Store(location.bucket, location.prefix)
    return S3Store(location.bucket, location.prefix, endpoint_url=config.endpoint_url, region=config.region,
                   profile=config.profile, sse=config.sse, kms_key_id=config.kms_key_id,
                   storage_class=config.storage_class, addressing_style=config.addressing_style,
                   concurrency=config.upload_concurrency, max_attempts=config.max_attempts,
                   timeout=config.timeout.total_seconds())
