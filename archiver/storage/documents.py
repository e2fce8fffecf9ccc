"""The catalog on storage: JSON manifests, written last, read back by listing and restore.

Only manifests make things exist: a data object that no manifest references is not a backup or
an archive. This module holds what every kind of manifest shares: ids, canonical JSON, reading
with clear errors. Storage key layout (relative to the policy's storage URL):

    backups/<backup-id>/dump.pgdump.zst         the custom-format dump (codec in the manifest)
    backups/<backup-id>/globals.sql.zst         roles and grants (pg_dumpall --globals-only)
    backups/<backup-id>/manifest.json           written last
    backups/<backup-id>/verification.json       result of the newest restore drill
    archive/<database>/<schema>.<table>/year=YYYY/month=MM/day=DD/<chunk>_<start>_<end>.parquet
    catalog/archive/<database>/<schema>.<table>/...json   archive manifests, outside the Parquet
                                                           tree so that query engines reading the
                                                           archive/ prefix see only Parquet files
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import ObjectNotFound, TaskFailed
from .base import PutResult, Store

FORMAT_VERSION = 2  # 2: archive manifests name their range (identity) and what they supersede


class ManifestError(TaskFailed):
    """A manifest that cannot be read or does not make sense."""


def dumps(document: dict[str, Any]) -> bytes:
    """Canonical JSON: sorted keys, UTF-8, newline-terminated."""
    return (json.dumps(document, sort_keys=True, indent=2, ensure_ascii=False, default=str) + "\n").encode()


def write_json(store: Store, key: str, document: dict[str, Any], *, if_absent: bool = False) -> PutResult:
    return store.put_bytes(key, dumps(document), if_absent=if_absent, content_type="application/json")


def read_json(store: Store, key: str) -> dict[str, Any]:
    try:
        raw = store.get_bytes(key)
    except ObjectNotFound:
        raise
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"manifest {store.describe(key)} is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ManifestError(f"manifest {store.describe(key)} is not a JSON object")
    version = document.get("format_version")
    if version is not None and version > FORMAT_VERSION:
        raise ManifestError(f"manifest {store.describe(key)} has format_version {version}; this archiver reads up to "
                            f"{FORMAT_VERSION}", hint="upgrade archiver")
    return document
