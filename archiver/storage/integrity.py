"""Reading a stored object back and proving it is the one its manifest describes.

The SHA-256 and size of the stored bytes are computed while they stream, the decompressed size
is counted, and a decompressor that fails or a stream that stops mid-frame says the object is
damaged. Nothing read through :class:`CheckedObject` may be trusted before :meth:`finish`
returns: callers that pass data on before that (a restore streaming into pg_restore) must be
able to take it back.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import zlib
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

import zstandard

from ..errors import ObjectNotFound, UsageError, VerificationFailed
from .agekeys import CannotDecrypt, Keyring, cannot_decrypt, may_open
from .base import ObjectInfo, Store
from .compress import TruncatedStream, iter_decompressed
from .crypt import PROBE_BYTES, DamagedCiphertext, iter_decrypted, opens

READ_SIZE = 1024 * 1024
# what a decompressor raises on a damaged stream
DECOMPRESSION_ERRORS = (zstandard.ZstdError, gzip.BadGzipFile, zlib.error, OSError, ValueError)


class ObjectMismatch(VerificationFailed):
    """A stored object is missing, or not the object its manifest describes (exit code 4).

    ``reason``: ``missing``, ``size``, ``checksum``, ``truncated`` or ``corrupt``.
    """

    def __init__(self, message: str, *, key: str, reason: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.key = key
        self.reason = reason


def precheck(store: Store, entry: dict[str, Any], what: str) -> ObjectInfo:
    """The object exists with the size its manifest records (a listing call: cheap, before any download)."""
    key = str(entry["key"])
    info = store.head(key)
    if info is None:
        raise ObjectMismatch(f"{what} {store.describe(key)} is missing (the manifest lists it with "
                             f"{int(entry['size']):,} bytes)", key=key, reason="missing")
    if info.size != int(entry["size"]):
        raise ObjectMismatch(f"{what} {store.describe(key)} is {info.size:,} bytes; its manifest says "
                             f"{int(entry['size']):,} (truncated or replaced)", key=key, reason="size")
    return info


class CheckedObject:
    """An object of a manifest, read as its original (decompressed) bytes and checked at the end.

    ``with CheckedObject(store, entry, "dump") as obj: for chunk in obj.chunks(): ...; obj.finish()``.
    ``chunks`` raises :class:`ObjectMismatch` when the object is missing or cannot be decompressed;
    ``finish`` when its size, SHA-256 or decompressed size differ from the manifest. A consumer
    that stops early may call ``chunks`` again to go on where it stopped.
    """

    def __init__(self, store: Store, entry: dict[str, Any], what: str, keyring: Keyring | None = None) -> None:
        self.store = store
        self.keyring = keyring
        self.entry = entry
        self.what = what
        self.key = str(entry["key"])
        self.decompressed_bytes = 0
        self.stored_bytes = 0
        self._sha256 = hashlib.sha256()
        self._source: BinaryIO | None = None
        self._decoded: Iterator[bytes] | None = None

    def __enter__(self) -> CheckedObject:
        try:
            self._source = self.store.open(self.key)
        except ObjectNotFound:
            raise ObjectMismatch(f"{self.what} {self.store.describe(self.key)} is missing", key=self.key,
                                 reason="missing") from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._source is not None:
            with contextlib.suppress(Exception):
                self._source.close()

    def _stored_chunks(self) -> Iterator[bytes]:
        assert self._source is not None
        while chunk := self._source.read(READ_SIZE):
            self._sha256.update(chunk)
            self.stored_bytes += len(chunk)
            yield chunk

    def _plain_chunks(self) -> Iterator[bytes]:
        """The stored bytes, decrypted when the manifest says the object is encrypted."""
        encryption = self.entry.get("encryption")
        if not encryption:
            return self._stored_chunks()
        if self.keyring is None:
            raise UsageError(f"{self.what} {self.store.describe(self.key)} is encrypted and encryption.identities "
                             "is not set: cannot read it")
        return iter_decrypted(self._stored_chunks(), self.keyring)

    def _decode(self) -> Iterator[bytes]:
        try:
            for chunk in iter_decompressed(self._plain_chunks(), str(self.entry.get("codec", "none"))):
                self.decompressed_bytes += len(chunk)
                yield chunk
        except CannotDecrypt:
            recorded = [str(r) for r in (self.entry.get("encryption") or {}).get("recipients") or []]
            raise cannot_decrypt(f"{self.what} {self.store.describe(self.key)}", recorded) from None
        except DamagedCiphertext as exc:
            raise self._mismatch("corrupt", f"cannot be decrypted: {exc}") from None
        except TruncatedStream as exc:
            raise self._mismatch("truncated", f"ends in the middle of its compressed stream ({exc})") from None
        except DECOMPRESSION_ERRORS as exc:
            raise self._mismatch("corrupt", f"cannot be decompressed ({type(exc).__name__}: {exc})") from None

    def chunks(self) -> Iterator[bytes]:
        """The original bytes, in chunks; a damaged object raises (never a silent short read)."""
        if self._decoded is None:
            self._decoded = self._decode()
        yield from self._decoded

    def finish(self) -> None:
        """Read what the decompressor left (trailing bytes count too) and compare with the manifest."""
        for _ in self._stored_chunks():
            pass
        expected_size, expected_sha = int(self.entry["size"]), str(self.entry["sha256"])
        if self.stored_bytes != expected_size:
            raise self._mismatch("size", f"is {self.stored_bytes:,} bytes; its manifest says {expected_size:,} "
                                         "(truncated or replaced)")
        actual_sha = self._sha256.hexdigest()
        if actual_sha != expected_sha:
            raise self._mismatch("checksum", f"has SHA-256 {actual_sha[:16]}...; its manifest says "
                                             f"{expected_sha[:16]}... (altered or replaced)")
        expected_plain = self.entry.get("uncompressed_size")
        if expected_plain is not None and self.decompressed_bytes != int(expected_plain):
            raise self._mismatch("size", f"decompresses to {self.decompressed_bytes:,} bytes; its manifest says "
                                         f"{int(expected_plain):,}")

    def read_rest_and_check(self, chunks: Iterable[bytes] | None = None) -> ObjectMismatch | None:
        """After a consumer gave up early: read the rest (of ``chunks``, when it read through a
        :class:`Prefetch`), and say whether the object is damaged."""
        try:
            for _ in self.chunks() if chunks is None else chunks:
                pass
            self.finish()
        except ObjectMismatch as exc:
            return exc
        return None

    def _mismatch(self, reason: str, detail: str) -> ObjectMismatch:
        at = f" (after {self.stored_bytes:,} stored bytes)" if reason in ("truncated", "corrupt") else ""
        return ObjectMismatch(f"{self.what} {self.store.describe(self.key)} {detail}{at}", key=self.key, reason=reason)


def check_decryptable(store: Store, entry: dict[str, Any], what: str, keyring: Keyring | None) -> None:
    """Before anything is written: an encrypted object opens with the configured identities (its header
    is enough); exit 2 without identities, exit 4 with none that fits."""
    encryption = entry.get("encryption")
    if not encryption:
        return
    key = str(entry["key"])
    if keyring is None:
        raise UsageError(f"{what} {store.describe(key)} is encrypted and encryption.identities is not set: "
                         "cannot read it", hint="nothing was written; set encryption.identities (private key files)")
    recorded = [str(r) for r in encryption.get("recipients") or []]
    if may_open(keyring, recorded) or opens(store.read_range(key, 0, PROBE_BYTES), keyring):
        return
    error = cannot_decrypt(f"{what} {store.describe(key)}", recorded)
    error.hint = f"nothing was written; {error.hint}"
    raise error


def read_verified(store: Store, entry: dict[str, Any], what: str, keyring: Keyring | None = None) -> bytes:
    """A small object's original bytes, checked completely before they are returned."""
    with CheckedObject(store, entry, what, keyring) as obj:
        data = b"".join(obj.chunks())
        obj.finish()
    return data
