"""What the server's own commands call: ``archive_command`` (wal-push) and ``restore_command`` (wal-fetch).

Both touch only the store (the server's environment needs the store's settings, not the
database's). wal-fetch answers PostgreSQL's protocol: 0 with the file written, 1 when the archive
has no such file (the normal end of the archive). Any other failure (a damaged object, a store that
does not answer) must not look like the end of the archive, or recovery would stop there and
promote at an earlier point: with ``--recovery-report`` it writes what happened to that file and
exits 255, which makes PostgreSQL stop recovery instead (``archiver restore --pitr`` reads the
report and says exit 4 or 1).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..common import log
from ..common.timeutil import isoformat, utcnow
from ..errors import ArchiverError, UsageError
from ..policy.schema import Policy
from ..storage.agekeys import Keyring
from ..storage.backends import open_store
from .catalog import pitr_config
from .walstore import Pushed, choose_version, fetch_wal_version, push_wal, wal_file, wal_recipients

_log = log.get_logger("wal")
RECOVERY_ABORT_EXIT = 255  # > 125: PostgreSQL treats it like a signal and stops recovery


def wal_push(policy: Policy, path: Path) -> Pushed:
    config = pitr_config(policy)
    pushed = push_wal(open_store(policy.storage), path, config.wal.compression, wal_recipients(policy))
    _log.info("wal.pushed", extra=log.fields(policy=policy.name, file=path.name, new=pushed.new,
                                             completed_at=isoformat(pushed.stored.completed),
                                             seconds=round(pushed.seconds, 3)))
    return pushed


def wal_fetch(policy: Policy, name: str, dest: Path) -> str:
    """Deliver ``name`` to ``dest``: "store", or "missing" (nothing written). The identities are read only
    for an encrypted file (exit 2 naming encryption.identities when none is set, before DEST is written)."""
    pitr_config(policy)
    wal_file(name)
    store = open_store(policy.storage)
    stored = choose_version(store, name)
    if stored is None:
        return "missing"
    keyring = wal_keyring(policy, "wal-fetch") if stored.encrypted else None
    fetch_wal_version(store, stored, dest, keyring)
    return "store"


def wal_keyring(policy: Policy, task: str) -> Keyring:
    """The identities that decrypt this policy's WAL; exit 2 naming encryption.identities without them."""
    if policy.encryption is None:
        raise UsageError(f"{task} needs encryption.identities to read encrypted WAL, and the policy has no "
                         "encryption section", hint="add encryption: {recipients: [...], identities: ...}")
    return policy.encryption.keyring(task)


def write_recovery_report(path: Path, name: str, exc: ArchiverError) -> None:
    """What stopped recovery, for the restore that watches it (best effort: the log has it too)."""
    document = {"file": name, "error": log.scrub(str(exc)), "exit_code": int(exc.exit_code),
                "reason": getattr(exc, "reason", None), "at": isoformat(utcnow())}
    try:
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text(json.dumps(document))
        os.replace(temporary, path)
    except OSError as error:
        _log.warning("wal.report_failed", extra=log.fields(path=str(path), error=str(error)))
