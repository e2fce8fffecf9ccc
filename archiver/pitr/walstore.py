"""The WAL archive in the store: push one file, fetch one file, list them all.

A push (``archive_command``, or the receiver for each segment it completes) hashes the file, looks
at what is stored under its name, compresses it into the store with a create-only write, then
reads the stored object back and checks it decompresses to the same SHA-256 before it reports
success. A name stored already with the same content is a success that writes nothing (PostgreSQL
retries, and may archive a segment twice); with other content it is an error that overwrites
nothing (:class:`WalConflict`, exit 4). Versions of a ``.partial`` segment replace each other: the
older ones (and every partial of a segment once the complete segment is stored) are deleted once
the newer object has been read back, unless Object Lock still holds them (then prune takes them later).

A fetch (``restore_command``) picks the stored file for a name (for a segment that was never
completed, its newest ``.partial``), decompresses it into a temporary file beside the
destination, checks its SHA-256 against the key, and only then renames it into place.

With ``encryption.recipients`` a segment (or partial) is compressed, then age-encrypted, then stored
(its key ends in ``.age``). A push holds no private key, so it proves the upload by reading the
stored bytes back against the SHA-256 and size it wrote; a fetch needs an identity and decrypts in
the stream (age authenticates: an altered object does not decrypt), then checks the original SHA-256.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ..common import log
from ..common.timeutil import isoformat, utcnow
from ..errors import ObjectExists, ObjectNotFound, UsageError, VerificationFailed
from ..policy.schema import CompressionConfig, Policy
from ..storage.agekeys import CannotDecrypt, Keyring, cannot_decrypt
from ..storage.base import Store
from ..storage.compress import SUFFIXES, CompressingWriter, TruncatedStream, iter_decompressed
from ..storage.crypt import AGE_HEADER, DamagedCiphertext, iter_decrypted, sealed
from ..storage.crypt import SUFFIX as AGE_SUFFIX
from ..storage.integrity import DECOMPRESSION_ERRORS, ObjectMismatch
from ..storage.objectlock import locked_until
from .walnames import (
    ENCRYPTED_KINDS,
    WAL_PREFIX,
    StoredWal,
    WalFile,
    WalNameError,
    parse_wal_key,
    parse_wal_name,
    versions_prefix,
    wal_key,
)

READ_SIZE = 1024 * 1024
_log = log.get_logger("wal")


class WalConflict(VerificationFailed):
    """A WAL file name is stored already with other content: nothing is overwritten (exit 4)."""


@dataclass(frozen=True)
class Pushed:
    stored: StoredWal
    new: bool  # False: an identical copy was stored already, nothing was written
    seconds: float


def wal_file(name: str) -> WalFile:
    try:
        return parse_wal_name(name)
    except WalNameError as exc:
        raise UsageError(str(exc)) from None


def _digest(path: Path) -> tuple[str, int, datetime]:
    digest, size = hashlib.sha256(), 0
    try:
        with open(path, "rb") as source:
            while chunk := source.read(READ_SIZE):
                digest.update(chunk)
                size += len(chunk)
            modified = datetime.fromtimestamp(os.fstat(source.fileno()).st_mtime, UTC)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file (archive_command passes %p, the path relative to the data "
                         "directory)") from None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    return digest.hexdigest(), size, modified


def stored_versions(store: Store, name: str) -> list[StoredWal]:
    """Every stored copy of the WAL file ``name`` (oldest first)."""
    found = []
    for info in store.list(versions_prefix(name)):
        stored = parse_wal_key(info.key, info.size)
        if stored is not None and stored.name == name:
            found.append(stored)
    return sorted(found, key=lambda item: (item.completed, item.key))


def scan_wal(store: Store) -> list[StoredWal]:
    """Every stored WAL file; keys under ``pitr/wal/`` that are not one are left out (and left alone)."""
    found = [stored for info in store.list(WAL_PREFIX) if (stored := parse_wal_key(info.key, info.size)) is not None]
    return sorted(found, key=lambda item: (item.file.timeline, item.name, item.completed))


def wal_recipients(policy: Policy) -> list[str]:
    """The public keys WAL is encrypted to (none: stored as compressed only); a push needs nothing more."""
    return list(policy.encryption.recipients) if policy.encryption is not None else []


def push_wal(store: Store, path: Path, compression: CompressionConfig, recipients: Sequence[str] = ()) -> Pushed:
    """Archive the WAL file at ``path``: stored and read back, or there already with the same content;
    a segment or partial encrypted to ``recipients`` when there are any."""
    clock = time.monotonic()
    file = wal_file(path.name)
    sha256, size, modified = _digest(path)
    completed = min(modified, utcnow())
    versions = stored_versions(store, file.name)
    same = next((version for version in versions if version.sha256 == sha256), None)
    if same is not None:
        return Pushed(same, False, time.monotonic() - clock)
    if versions and file.replaces_nothing:
        other = versions[-1]
        raise WalConflict(f"WAL file {file.name} is archived already with other content ({store.describe(other.key)}, "
                          f"SHA-256 {other.sha256[:16]}..., this one {sha256[:16]}...): refusing to overwrite it",
                          hint="two servers archive into one store (each database needs its own storage.url), or "
                               "the server's WAL was reset; nothing was overwritten")
    sealed_to = list(recipients) if file.kind in ENCRYPTED_KINDS else []
    key = wal_key(file.name, completed, sha256, SUFFIXES[compression.codec] + (AGE_SUFFIX if sealed_to else ""))
    written: tuple[int, str | None]
    try:
        written = _upload(store, key, path, size, sha256, compression, sealed_to)
    except ObjectExists:
        written = (0, None)  # the same name, time and content, pushed by another process at the same moment
    stored = parse_wal_key(key, written[0])
    assert stored is not None
    if stored.encrypted:
        check_sealed(store, stored, written[1])
    else:
        check_stored(store, stored)
    _drop_superseded(store, stored)
    return Pushed(stored, True, time.monotonic() - clock)


def _upload(store: Store, key: str, path: Path, size: int, sha256: str, compression: CompressionConfig,
            recipients: list[str]) -> tuple[int, str | None]:
    """compress -> encrypt (with recipients) -> store; the stored size and, when known, the stored SHA-256."""
    digest = hashlib.sha256()
    with open(path, "rb") as source, store.writer(key, size_hint=size, if_absent=True,
                                                   content_type="application/octet-stream") as out, \
            sealed(out, recipients) as sink:
        compressor = CompressingWriter(sink, compression.codec, compression.effective_level(), compression.threads)
        while chunk := source.read(READ_SIZE):
            digest.update(chunk)
            compressor.write(chunk)
        if digest.hexdigest() != sha256:  # leaving the block with an error aborts the write
            raise VerificationFailed(f"{path} changed while it was being archived (SHA-256 {sha256[:16]}... "
                                     f"became {digest.hexdigest()[:16]}...); nothing was stored")
        compressor.finish()
        sink.finish()
    return out.size, (out.result.sha256 if out.result is not None else None)


def _plain_chunks(store: Store, stored: StoredWal, keyring: Keyring | None = None) -> Iterator[bytes]:
    """The original bytes of a stored WAL file; a damaged object raises ObjectMismatch."""
    what = f"WAL file {store.describe(stored.key)}"
    if stored.encrypted and keyring is None:
        raise UsageError(f"{what} is encrypted and encryption.identities is not set: cannot read it",
                         hint="nothing was written; set encryption.identities (private key files readable by the user "
                              "that runs this, for restore_command the server's user)")
    try:
        with store.open(stored.key) as source:
            chunks: Iterator[bytes] = iter(lambda: source.read(READ_SIZE), b"")
            if stored.encrypted:
                assert keyring is not None
                chunks = iter_decrypted(chunks, keyring)
            yield from iter_decompressed(chunks, stored.codec)
    except CannotDecrypt:
        raise cannot_decrypt(what, None) from None
    except DamagedCiphertext as exc:
        raise ObjectMismatch(f"{what} cannot be decrypted: {exc}", key=stored.key, reason="corrupt") from None
    except ObjectNotFound:
        raise ObjectMismatch(f"{what} is missing (it was listed a moment ago)", key=stored.key, reason="missing") from None
    except TruncatedStream as exc:
        raise ObjectMismatch(f"{what} is truncated ({exc})", key=stored.key, reason="truncated") from None
    except DECOMPRESSION_ERRORS as exc:
        raise ObjectMismatch(f"{what} cannot be decompressed ({type(exc).__name__}: {exc})", key=stored.key,
                             reason="corrupt") from None


def _mismatch(store: Store, stored: StoredWal, actual: str) -> ObjectMismatch:
    return ObjectMismatch(f"WAL file {store.describe(stored.key)} decompresses to SHA-256 {actual[:16]}..., not the "
                          f"{stored.sha256[:16]}... it was archived with (altered or damaged in the store)",
                          key=stored.key, reason="checksum")


def check_stored(store: Store, stored: StoredWal) -> None:
    """Read a stored WAL file back and prove it holds what was archived (exit 4 when not)."""
    digest = hashlib.sha256()
    for chunk in _plain_chunks(store, stored):
        digest.update(chunk)
    if digest.hexdigest() != stored.sha256:
        raise _mismatch(store, stored, digest.hexdigest())


def check_sealed(store: Store, stored: StoredWal, sha256: str | None) -> None:
    """Without a private key: read an encrypted WAL file back and prove the store holds the bytes written
    (their SHA-256; for a copy another push wrote at the same moment, at least an age stream)."""
    digest, size, head = hashlib.sha256(), 0, b""
    try:
        with store.open(stored.key) as source:
            while chunk := source.read(READ_SIZE):
                head = head or chunk[:len(AGE_HEADER)]
                digest.update(chunk)
                size += len(chunk)
    except ObjectNotFound:
        raise ObjectMismatch(f"WAL file {store.describe(stored.key)} is missing right after it was stored",
                             key=stored.key, reason="missing") from None
    if sha256 is not None and digest.hexdigest() != sha256:
        raise ObjectMismatch(f"WAL file {store.describe(stored.key)} reads back as SHA-256 {digest.hexdigest()[:16]}..., "
                             f"not the {sha256[:16]}... written", key=stored.key, reason="checksum")
    if head != AGE_HEADER:
        raise ObjectMismatch(f"WAL file {store.describe(stored.key)} is not an age stream ({size} bytes)",
                             key=stored.key, reason="corrupt")


def read_wal_bytes(store: Store, stored: StoredWal) -> bytes:
    """A small stored WAL file (a timeline history), checked before it is returned."""
    data = b"".join(_plain_chunks(store, stored))
    if hashlib.sha256(data).hexdigest() != stored.sha256:
        raise _mismatch(store, stored, hashlib.sha256(data).hexdigest())
    return data


def _drop_superseded(store: Store, stored: StoredWal) -> None:
    """Older ``.partial`` versions of what was just stored (proven) are no longer needed."""
    if stored.file.kind == "segment":
        doomed = stored_versions(store, f"{stored.name}.partial")
    elif stored.file.kind == "partial":
        doomed = [version for version in stored_versions(store, stored.name)
                  if version.key != stored.key and version.completed <= stored.completed]
    else:
        return
    for version in doomed:
        until = locked_until(store, [version.key], utcnow())
        if until is not None:  # harmless: a fetch prefers the complete segment, or the newest partial
            _log.info("wal.partial_kept_locked", extra=log.fields(key=version.key, by=stored.key,
                                                                  locked_until=isoformat(until)))
            continue
        store.delete(version.key)
        _log.info("wal.partial_superseded", extra=log.fields(key=version.key, by=stored.key))


# -- fetch -------------------------------------------------------------------------------------------

def choose_version(store: Store, name: str) -> StoredWal | None:
    """The stored file to give recovery for ``name``: the file itself, or for a segment never completed
    its newest ``.partial`` (zero-padded by the receiver: recovery reads to its last valid record)."""
    file = wal_file(name)
    versions = stored_versions(store, name)
    if len({version.sha256 for version in versions}) > 1 and file.replaces_nothing:
        raise VerificationFailed(f"WAL file {name} is stored twice with different content "
                                 f"({', '.join(store.describe(v.key) for v in versions)}): refusing to choose one")
    if versions:
        return versions[-1]
    if file.kind == "segment":
        partials = stored_versions(store, f"{name}.partial")
        return partials[-1] if partials else None
    return None


def fetch_wal(store: Store, name: str, dest: Path, keyring: Keyring | None = None) -> StoredWal | None:
    """Write the WAL file ``name`` to ``dest``, checked first; None (nothing written) when it is not stored."""
    stored = choose_version(store, name)
    if stored is None:
        return None
    fetch_wal_version(store, stored, dest, keyring)
    return stored


def fetch_wal_version(store: Store, stored: StoredWal, dest: Path, keyring: Keyring | None = None) -> None:
    """Decompress ``stored`` beside ``dest``, check its SHA-256, then rename it into place (atomic)."""
    temporary = dest.parent / f".{dest.name}.archiver-tmp-{secrets.token_hex(4)}"
    digest = hashlib.sha256()
    try:
        with open(temporary, "xb") as out:
            for chunk in _plain_chunks(store, stored, keyring):
                digest.update(chunk)
                out.write(chunk)
            if digest.hexdigest() != stored.sha256:
                raise _mismatch(store, stored, digest.hexdigest())
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise
