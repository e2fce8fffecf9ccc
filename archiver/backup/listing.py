"""``archiver backups list``: the backups of each policy from their manifests.

A backup whose objects none of the configured identities can open is flagged (``decryptable``
false), so that a key rotation that dropped a needed key shows before a restore needs it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..common.timeutil import isoformat
from ..errors import ArchiverError
from ..policy.schema import Policy
from ..storage.agekeys import Keyring, may_open
from ..storage.backends import open_store
from ..storage.base import Store
from ..storage.crypt import PROBE_BYTES, opens
from . import manifest as backup_manifest
from .manifest import BackupEntry


@dataclass(frozen=True)
class ListedBackup:
    policy: str
    entry: BackupEntry
    decryptable: bool | None = None  # None: not encrypted, or no identities configured here

    def to_json(self) -> dict[str, Any]:
        verdict = {"yes": "passed", "failed": "failed"}.get(self.entry.verified)  # the newest drill's, if any
        return {"policy": self.policy, "id": self.entry.id, "time": isoformat(self.entry.time), "size": self.entry.size,
                "duration_seconds": self.entry.duration_seconds, "verified": verdict == "passed", "verification": verdict,
                "database": self.entry.manifest.get("database", {}).get("name"),
                "encrypted": bool(encryption_of(self.entry.manifest)), "decryptable": self.decryptable}


@dataclass(frozen=True)
class BackupListing:
    backups: list[ListedBackup]  # newest first
    errors: dict[str, str]  # policy -> why its backups could not be listed


def encryption_of(manifest: dict[str, Any]) -> dict[str, Any] | None:
    dump = (manifest.get("objects") or {}).get("dump") or {}
    encryption = dump.get("encryption")
    return encryption if isinstance(encryption, dict) else None


def decryptable(store: Store, entry: BackupEntry, keyring: Keyring | None) -> bool | None:
    """Whether the configured identities open the backup's dump: by fingerprint, else by trying its header."""
    encryption = encryption_of(entry.manifest)
    if encryption is None or keyring is None:
        return None
    recorded = [str(r) for r in encryption.get("recipients") or []]
    known = may_open(keyring, recorded)
    if known is not None and (known or not keyring.opaque):
        return known
    key = str(entry.manifest["objects"]["dump"]["key"])
    return opens(store.read_range(key, 0, PROBE_BYTES), keyring)


def _keyring(policy: Policy) -> Keyring | None:
    """The identities to judge with; None where none are configured here (``${VAR}`` unset: a writer's view)."""
    paths = policy.encryption.identity_paths() if policy.encryption else []
    if policy.encryption is None or not paths or any("${" in path for path in paths):
        return None
    return policy.encryption.keyring("backups list")


def list_backups(policies: Iterable[Policy], *, stores: dict[str, Store] | None = None) -> BackupListing:
    """Backups of each policy from their manifests, newest first; a failing store is reported, not fatal."""
    listed: list[ListedBackup] = []
    errors: dict[str, str] = {}
    for policy in policies:
        name = policy.name or ""
        try:
            store = (stores or {}).get(name) or open_store(policy.storage)
            keyring = _keyring(policy)
            listed += [ListedBackup(name, entry, decryptable(store, entry, keyring))
                       for entry in backup_manifest.list_backups(store)]
        except ArchiverError as exc:
            errors[name] = str(exc)
    listed.sort(key=lambda item: (item.entry.time, item.entry.id), reverse=True)
    return BackupListing(listed, errors)
