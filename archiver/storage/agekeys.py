"""age keys: recipients (public keys, all a writer needs) and identities (private keys, read from files).

Identity files must be mode 0600 or less, as libpq wants of .pgpass. A private key's text is never
put in a message, a log record or an exception; its line is registered as a log secret when read.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..common import log
from ..errors import UsageError, VerificationFailed


class CannotDecrypt(VerificationFailed):
    """None of the configured identities opens the object (exit 4)."""




def fingerprint(recipient: str) -> str:
    """A short, stable name for a public key (recorded in manifests, shown in messages)."""
    text = " ".join(recipient.split()[:2])  # an ssh key's comment does not change the key
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]


def parse_recipient(text: str) -> Any:
    """A pyrage recipient from ``age1...`` or an ``ssh-ed25519``/``ssh-rsa`` public key; ValueError otherwise."""
    import pyrage

    text = text.strip()
    try:
        if text.startswith("age1"):
            return pyrage.x25519.Recipient.from_str(text)
        if text.startswith(("ssh-ed25519 ", "ssh-rsa ")):
            return pyrage.ssh.Recipient.from_str(text)
    except pyrage.RecipientError as exc:
        raise ValueError(f"not a valid age recipient ({exc})") from None
    raise ValueError("not an age recipient")


@dataclass(frozen=True)
class Keyring:
    """Identities read from files, and the fingerprints of the public keys known to match them."""

    identities: tuple[Any, ...]
    fingerprints: frozenset[str] = field(default_factory=frozenset)
    opaque: int = 0  # identities whose public key cannot be derived (ssh keys): only a trial tells

    def __repr__(self) -> str:
        return f"Keyring({len(self.identities)} identities)"


def load_keyring(paths: Sequence[str], setting: str) -> Keyring:
    """Every identity in ``paths`` (age identity files, or OpenSSH private keys)."""
    identities: list[Any] = []
    fingerprints: set[str] = set()
    opaque = 0
    for name in paths:
        for identity, public in _read_identity_file(Path(name), setting):
            identities.append(identity)
            if public is None:
                opaque += 1
            else:
                fingerprints.add(fingerprint(public))
    if not identities:
        raise UsageError(f"{setting}: no identity found in {', '.join(paths)}")
    return Keyring(tuple(identities), frozenset(fingerprints), opaque)


def _read_identity_file(path: Path, setting: str) -> list[tuple[Any, str | None]]:
    import pyrage

    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise UsageError(f"{setting}: {path} is accessible by group or others (mode {oct(mode & 0o777)}); "
                             f"identity files must be mode 0600 or less: run chmod 600 {path}")
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{setting}: {path}: {exc.strerror}") from None
    if b"-----BEGIN OPENSSH PRIVATE KEY-----" in data:
        try:
            return [(pyrage.ssh.Identity.from_buffer(data), None)]
        except Exception:  # pyrage's message could quote the key: say only where
            raise UsageError(f"{setting}: {path} is not a usable OpenSSH private key (an encrypted key is not supported)") \
                from None
    found: list[tuple[Any, str | None]] = []
    for number, raw in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        log.register_secret(line)
        try:
            identity = pyrage.x25519.Identity.from_str(line)
        except Exception:
            raise UsageError(f"{setting}: {path} line {number} is not an age identity (AGE-SECRET-KEY-1...)") from None
        found.append((identity, str(identity.to_public())))
    return found


def may_open(keyring: Keyring, recorded: Iterable[str]) -> bool | None:
    """True when a configured identity's public key is among ``recorded``; None when only a trial can tell."""
    if keyring.fingerprints & set(recorded):
        return True
    return None if keyring.opaque else False


def cannot_decrypt(what: str, recorded: Iterable[str] | None) -> CannotDecrypt:
    """``recorded``: the fingerprints the manifest lists (None: not at hand here; the manifest has them)."""
    listed = "in its manifest's encryption.recipients" if recorded is None else (", ".join(recorded) or "none")
    return CannotDecrypt(f"{what}: cannot decrypt with the configured identities (recipients recorded: {listed})",
                         hint="add the identity (private key) of one of these recipients to encryption.identities")


def environment_paths(value: str | list[str] | None) -> list[str]:
    """The identity files of a setting: a path, a list of paths, or several joined by the OS path separator."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    return [part for item in items for part in str(item).split(os.pathsep) if part.strip()]
