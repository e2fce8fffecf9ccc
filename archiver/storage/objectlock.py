"""S3 Object Lock: every data object and manifest is put with a retention (``ObjectLockMode`` and
``ObjectLockRetainUntilDate``), so that not even the backup writer's own credentials can delete it
early. The bucket must have been created with Object Lock enabled: that is checked before the first
write, with a clear error.

Only the objects worth protecting are locked: backups (dumps, globals, manifests, drill records), the
point-in-time archive (base backups with their manifests and drill records, WAL segments, partial
segments and timeline history files) and the cold tier's Parquet files and manifests. Leases and run
records are rewritten and deleted all the time and stay unlocked. Object Lock needs a versioned
bucket: a plain DELETE of a locked object only hides it behind a delete marker, which is why prune
and expiry decide by the retain-until date and never try; a lifecycle rule expiring noncurrent
versions frees the space once locks end.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ..common.timeutil import format_duration, utcnow
from ..errors import UsageError
from .base import Store

LOCKED_PREFIXES = ("backups/", "archive/", "catalog/archive/", "pitr/base/", "pitr/wal/")
MODES = ("GOVERNANCE", "COMPLIANCE")


@dataclass(frozen=True)
class ObjectLock:
    mode: str  # GOVERNANCE or COMPLIANCE
    retain: timedelta

    def applies_to(self, key: str) -> bool:
        return key.startswith(LOCKED_PREFIXES)

    def retain_until(self, now: datetime | None = None) -> datetime:
        return (now or utcnow()) + self.retain

    def put_arguments(self) -> dict[str, Any]:
        return {"ObjectLockMode": self.mode, "ObjectLockRetainUntilDate": self.retain_until()}

    def describe(self) -> str:
        return f"{self.mode.lower()}, {format_duration(self.retain)}"


def locked_until(store: Store, keys: Iterable[str], now: datetime) -> datetime | None:
    """The latest Object Lock retain-until date among ``keys`` still in the future (None: none is locked now)."""
    if not store.locks_objects:
        return None
    dates = [info.locked_until for key in keys if (info := store.head(key)) is not None and info.locked_until]
    latest = max(dates, default=None)
    return latest if latest is not None and latest > now else None


def check_bucket_lock(client: Any, bucket: str, url: str) -> None:
    """The bucket has Object Lock enabled; a clear error otherwise (before anything is written)."""
    import botocore.exceptions

    try:
        response = client.get_object_lock_configuration(Bucket=bucket)
        enabled = response.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"
    except botocore.exceptions.ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code != "ObjectLockConfigurationNotFoundError":
            raise UsageError(f"storage.object_lock: cannot read the Object Lock configuration of bucket {bucket!r} "
                             f"({url}): {code or exc}") from None
        enabled = False
    if not enabled:
        raise UsageError(f"storage.object_lock is set but bucket {bucket!r} ({url}) does not have Object Lock enabled: "
                         "nothing was written",
                         hint="Object Lock can only be enabled on a versioned bucket (aws s3api create-bucket "
                              "--object-lock-enabled-for-bucket, or put-object-lock-configuration on a versioned "
                              "bucket); or remove storage.object_lock")
