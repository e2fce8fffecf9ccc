"""Policy sections that protect the stored objects: ``encryption`` (age) and ``storage.object_lock``.

Writers need only ``encryption.recipients`` (public keys); the tasks that read stored objects back
(verify, restore, restore-archive, retention's re-check of encrypted Parquet) need
``encryption.identities``: files of private keys, mode 0600.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal

from ..common.timeutil import format_duration
from ..errors import UsageError
from .fields import Check, Duration

if TYPE_CHECKING:
    from ..storage.agekeys import Keyring
    from ..storage.base import Store
    from .schema import Policy

IDENTITIES_SETTING = "encryption.identities"


def _recipient_problem(value: str) -> str | None:
    from ..storage.agekeys import parse_recipient  # pyrage: loaded when a policy is built, not with the schema

    try:
        parse_recipient(value)
    except ValueError as exc:
        shown = value if len(value) <= 24 else value[:21] + "..."
        return f"{exc} (got {shown!r}; allowed an age public key age1... or an ssh-ed25519/ssh-rsa public key)"
    return None


def _recipients_present(value: list[str]) -> str | None:
    return None if value else "is empty (allowed: at least one public key; writers need nothing else)"


@dataclass(frozen=True)
class EncryptionConfig:
    recipients: Annotated[list[Annotated[str, Check(_recipient_problem)]], Check(_recipients_present)]
    # identity files (private keys), only where reading is needed; a path, a list, or ${VAR:-}
    identities: str | list[str] | None = None

    def identity_paths(self) -> list[str]:
        from ..storage.agekeys import environment_paths

        return environment_paths(self.identities)

    def keyring(self, task: str) -> Keyring:
        """The identities a reading task needs; exit 2 naming the setting when there are none."""
        from ..storage.agekeys import load_keyring

        paths = self.identity_paths()
        if not paths:
            raise UsageError(f"{task} needs {IDENTITIES_SETTING} (the private keys of this policy's encrypted "
                             "objects), and it is not set", hint="set encryption.identities: ${ARCHIVER_AGE_IDENTITY_FILE} "
                             "and that variable to an identity file (mode 0600) where this task runs")
        return load_keyring(paths, IDENTITIES_SETTING)


def reading_keyring(encryption: EncryptionConfig | None, task: str) -> Keyring | None:
    """The identities of a task that reads stored objects back: None when the policy does not encrypt;
    exit 2 naming the setting when it does and no identity is configured (checked before any work)."""
    return encryption.keyring(task) if encryption is not None else None


def cold_store(store: Store, encryption: EncryptionConfig | None, encrypt: bool, task: str) -> Store:
    """The store the cold tier works through: with ``archive.encrypt``, one that encrypts the Parquet files
    it writes and decrypts those it reads (the identities are needed then: exit 2 without)."""
    if encryption is None or not (encrypt or encryption.identity_paths()):
        return store
    from ..storage.sealedstore import SealedStore

    keyring = encryption.keyring(task) if encrypt or encryption.identity_paths() else None
    return SealedStore(store, encryption.recipients if encrypt else [], keyring)


def protection(policy: Policy) -> dict[str, Any]:
    """Whether the policy encrypts its backups and archives, and locks its objects (status, plan, metrics)."""
    from ..storage.agekeys import fingerprint

    encryption, lock = policy.encryption, policy.storage.object_lock if policy.storage else None
    return {"backups_encrypted": encryption is not None,
            "archives_encrypted": bool(encryption is not None and policy.archive and policy.archive.encrypt),
            "recipients": [fingerprint(r) for r in encryption.recipients] if encryption else [],
            "object_lock": {"mode": lock.mode, "retain_seconds": int(lock.retain.total_seconds())} if lock else None}


def describe_protection(found: dict[str, Any]) -> str:
    parts = [f"backups {'encrypted (age)' if found['backups_encrypted'] else 'not encrypted'}",
             f"archives {'encrypted (age)' if found['archives_encrypted'] else 'not encrypted'}"]
    lock = found["object_lock"]
    parts.append(f"object lock {lock['mode']} {format_duration(timedelta(seconds=lock['retain_seconds']))}" if lock
                 else "no object lock")
    return ", ".join(parts)


def _retain_range(value: timedelta) -> str | None:
    if not timedelta(days=1) <= value <= timedelta(days=36500):
        return f"out of range (got {format_duration(value)}; allowed 1d..100y, whole days are what S3 keeps)"
    return None


@dataclass(frozen=True)
class ObjectLockConfig:
    """Every data object and manifest is put with this S3 Object Lock retention (s3:// only)."""

    mode: Literal["governance", "compliance"]
    retain: Annotated[Duration, Check(_retain_range)] = field(default=timedelta(days=35))

    @property
    def s3_mode(self) -> str:
        return self.mode.upper()
