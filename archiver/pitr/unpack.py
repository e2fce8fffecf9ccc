"""A base backup from the store into a data directory, proven before the directory is written.

The tar streams from the store through the decompressor into ``tarfile`` (no copy of the backup
on disk besides the files themselves), into a staging directory beside the destination. Only once
the object's SHA-256 and sizes match the manifest, and ``pg_verifybackup`` finds every file as the
server's own ``backup_manifest`` describes it (sizes and checksums; ``-n``: the WAL comes from the
archive at recovery), does the staging directory become the destination (one rename). A damaged
backup leaves the destination as it was (exit 4).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..common.process import run_captured
from ..errors import UsageError, VerificationFailed
from ..pg.recovery import chown_tree
from ..storage.agekeys import Keyring
from ..storage.base import Store
from ..storage.integrity import CheckedObject, ObjectMismatch, read_verified
from .catalog import BaseBackup


class _ChunkReader(io.RawIOBase):
    """A readable stream over an iterator of byte chunks (tarfile reads the decompressed tar from it)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        super().__init__()
        self._chunks = chunks
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = memoryview(chunk)
        size = min(len(view), len(self._pending))
        view[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


def check_destination(data_dir: Path) -> None:
    """Refuse (exit 2) a destination that holds anything, or whose parent does not exist."""
    if data_dir.exists():
        if not data_dir.is_dir():
            raise UsageError(f"--data-dir {data_dir} exists and is not a directory")
        if any(data_dir.iterdir()):
            raise UsageError(f"--data-dir {data_dir} is not empty: a restore never writes into a directory that holds "
                             "anything", hint="name a new or empty directory (move the old data directory aside "
                                              "first if it must be reused)")
    elif not data_dir.parent.is_dir():
        raise UsageError(f"--data-dir {data_dir}: its parent directory {data_dir.parent} does not exist")


@contextlib.contextmanager
def staging_directory(data_dir: Path) -> Iterator[Path]:
    """A private directory beside ``data_dir`` (same filesystem: it becomes ``data_dir`` by a rename);
    removed on the way out unless it was moved into place."""
    staging = Path(tempfile.mkdtemp(prefix=f".{data_dir.name}.archiver-restore-", dir=data_dir.parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def extract_base(store: Store, base: BaseBackup, staging: Path, keyring: Keyring | None = None) -> int:
    """Unpack the base backup's tar into ``staging`` (decrypted in the stream when it is encrypted), checked
    against our manifest; the bytes unpacked."""
    entry = base.manifest["objects"]["base"]
    with CheckedObject(store, entry, f"base backup {base.id}", keyring) as obj:
        reader = io.BufferedReader(_ChunkReader(obj.chunks()), buffer_size=1024 * 1024)
        with tarfile.open(fileobj=reader, mode="r|") as archive:
            archive.extractall(staging, filter=_member_filter)
        damaged = obj.read_rest_and_check()  # the tar's end padding, then size and SHA-256 against the manifest
        if damaged is not None:
            raise damaged
        unpacked = obj.decompressed_bytes
    for name in ("pg_wal", "pg_wal/archive_status"):
        (staging / name).mkdir(mode=0o700, exist_ok=True)
    staging.chmod(0o700)
    return unpacked


def _member_filter(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
    """tarfile's ``data`` filter (no absolute paths, nothing outside the directory, no devices), keeping
    the owner-only permissions PostgreSQL insists on."""
    return tarfile.data_filter(member, path).replace(mode=member.mode & 0o700, deep=False)


def verify_with_server_manifest(store: Store, base: BaseBackup, staging: Path, pg_verifybackup: Path) -> str:
    """``pg_verifybackup -n`` against the server's manifest as stored (itself checked first); its output."""
    entry = base.manifest["objects"]["backup_manifest"]
    manifest = read_verified(store, entry, f"backup_manifest of base backup {base.id}")
    with tempfile.NamedTemporaryFile(prefix="archiver-backup-manifest-", suffix=".json") as copy:
        copy.write(manifest)
        copy.flush()
        result = run_captured([str(pg_verifybackup), "--no-parse-wal", "--manifest-path", copy.name, str(staging)],
                              os.environ, "pg_verifybackup", timeout=6 * 3600)
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0:
        raise VerificationFailed(f"pg_verifybackup found the unpacked base backup {base.id} different from the "
                                 f"server's backup_manifest:\n{output[-3000:]}",
                                 hint="nothing was written to the data directory")
    return output


def move_into_place(staging: Path, data_dir: Path) -> None:
    """The proven staging directory becomes ``data_dir`` (which must still be absent or empty)."""
    chown_tree(staging)
    check_destination(data_dir)
    if data_dir.exists():
        data_dir.rmdir()  # empty: checked just above
    os.rename(staging, data_dir)


def unpack_checked(store: Store, base: BaseBackup, data_dir: Path, pg_verifybackup: Path,
                   prepare: Any = None, keyring: Keyring | None = None) -> tuple[int, str]:
    """Everything above in order; ``prepare(staging)`` writes the recovery settings before the move.
    A mismatch raises ObjectMismatch / VerificationFailed (exit 4) with ``data_dir`` untouched."""
    with staging_directory(data_dir) as staging:
        try:
            unpacked = extract_base(store, base, staging, keyring)
        except tarfile.TarError as exc:
            raise ObjectMismatch(f"base backup {base.id} is not a readable tar ({exc})",
                                 key=str(base.manifest["objects"]["base"]["key"]), reason="corrupt") from None
        verified = verify_with_server_manifest(store, base, staging, pg_verifybackup)
        if prepare is not None:
            prepare(staging)
        move_into_place(staging, data_dir)
    return unpacked, verified
