"""WAL fetched ahead of recovery, so restore_command finds each segment on local disk.

PostgreSQL asks ``restore_command`` for one file at a time and waits for it. While a restore that
archiver started replays, this thread downloads the next files of the span (checked, like every
fetch) into ``pg_wal/.archiver-prefetch/<name>.<sha256>``, a few ahead; the restore_command checks
such a file's SHA-256 again (``sha256sum``) and renames it into place
(:func:`archiver.pitr.settings.restore_command`). A file the thread could not fetch is simply not
there: ``archiver wal-fetch`` then reads the store itself, and says what is wrong.
"""

from __future__ import annotations

import threading
from pathlib import Path

from ..common import log
from ..pg.recovery import chown_tree
from ..storage.agekeys import Keyring
from ..storage.base import Store
from .walnames import StoredWal
from .walstore import fetch_wal_version

_log = log.get_logger("wal")


def cached_name(name: str, sha256: str) -> str:
    return f"{name}.{sha256}"


class Prefetcher(threading.Thread):
    def __init__(self, store: Store, files: list[tuple[str, StoredWal]], cache: Path, *, ahead: int = 6,
                 keyring: Keyring | None = None) -> None:
        super().__init__(name="wal-prefetch", daemon=True)
        self.store = store
        self.files = files  # (the name recovery asks for, the stored file that answers it), in recovery's order
        self.cache = cache
        self.ahead = ahead
        self.keyring = keyring  # decrypts encrypted WAL in this process (restore_command then only renames)
        self.fetched = 0
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=30)

    def _waiting(self) -> int:
        try:
            return sum(1 for path in self.cache.iterdir() if not path.name.startswith("."))
        except OSError:
            return 0

    def run(self) -> None:
        try:
            for name, stored in self.files:
                while self._waiting() >= self.ahead and not self._halt.wait(0.1):
                    pass
                if self._halt.is_set():
                    return
                target = self.cache / cached_name(name, stored.sha256)
                fetch_wal_version(self.store, stored, target, self.keyring)
                chown_tree(target)
                self.fetched += 1
        except Exception as exc:  # wal-fetch falls back to the store and reports the problem itself
            _log.warning("wal.prefetch_stopped", extra=log.fields(error=log.scrub(str(exc))[-500:]))
