"""Encrypted point-in-time archives: the identities a restore or drill needs, and proving they fit before
anything is written.

A base backup records its recipients' fingerprints in its manifest (``objects.base.encryption``); a
WAL file's key ends in ``.age`` when it is encrypted. Restores and drills load the identities first
(exit 2 naming encryption.identities when the policy encrypts and none is set), then open the base
backup's and the first encrypted WAL file's age header with them (exit 4, "cannot decrypt with the
configured identities", when none fits), all before the data directory is touched.
"""

from __future__ import annotations

from typing import Any

from ..errors import UsageError
from ..policy.protect import reading_keyring
from ..policy.schema import Policy
from ..storage.agekeys import Keyring, cannot_decrypt
from ..storage.base import Store
from ..storage.crypt import PROBE_BYTES, opens
from ..storage.integrity import check_decryptable
from .walnames import StoredWal


def restore_keyring(policy: Policy, task: str) -> Keyring | None:
    """The identities of a task that reads the archive back (None: the policy does not encrypt)."""
    return reading_keyring(policy.encryption, task)


def check_opens(store: Store, base: Any, files: list[tuple[str, StoredWal]], keyring: Keyring | None) -> None:
    """The base backup and the WAL recovery will ask for open with ``keyring`` (their headers suffice)."""
    entry = base.manifest["objects"]["base"]
    check_decryptable(store, entry, f"base backup {base.id}", keyring)
    sealed = next((stored for _, stored in files if stored.encrypted), None)
    if sealed is None:
        return
    what = f"WAL file {store.describe(sealed.key)}"
    if keyring is None:
        raise UsageError(f"{what} is encrypted and encryption.identities is not set: cannot read it",
                         hint="nothing was written; set encryption.identities (private key files)")
    if opens(store.read_range(sealed.key, 0, PROBE_BYTES), keyring):
        return
    # a WAL file's key records no recipients: those of the base backup it continues were current then
    recorded = [str(r) for r in (entry.get("encryption") or {}).get("recipients") or []]
    error = cannot_decrypt(what, recorded)
    error.hint = f"nothing was written; {error.hint}"
    raise error
