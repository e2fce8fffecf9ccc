"""A store that age-encrypts the Parquet files written through it (``archive.encrypt: true``).

The cold tier writes and reads through this wrapper and is otherwise unchanged: a ``.parquet`` key is
encrypted on its way to the inner store (the :class:`PutResult` describes the stored, encrypted bytes
and carries the encryption for the manifest), and :meth:`open_seekable`, the random access Parquet
readers need, decrypts a whole object into a private spooled temp file (spilling to disk past
``SPOOL_MEMORY``). Everything else (manifests, listings, ``open`` and ``read_range`` for checksums
of what is stored) passes through untouched. Encrypted Parquet is not queryable in place.
"""

from __future__ import annotations

import builtins
import dataclasses
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any, BinaryIO

from ..errors import UsageError
from .agekeys import CannotDecrypt, Keyring, cannot_decrypt
from .base import IncompleteWrite, ObjectInfo, ObjectWriter, PutResult, Store
from .crypt import AGE_HEADER, DamagedCiphertext, EncryptingWriter, iter_decrypted

SPOOL_MEMORY = 32 * 1024 * 1024
READ_CHUNK = 1024 * 1024
SEALED_SUFFIX = ".parquet"


class _SealedWriter(ObjectWriter):
    """Counts and hashes the plaintext (``tell`` is what pyarrow's footer offsets need); the result is the
    inner writer's, of the stored bytes."""

    def __init__(self, inner: ObjectWriter, recipients: Sequence[str]) -> None:
        super().__init__(inner.key)
        self._inner = inner
        self._encrypting = EncryptingWriter(inner, recipients)
        self._stored: PutResult | None = None

    def _write(self, data: memoryview) -> None:
        self._encrypting.write(data)

    def _commit(self) -> str | None:
        self._encrypting.finish()
        self._stored = self._inner.commit()
        return self._stored.etag

    def commit(self) -> PutResult:
        super().commit()
        assert self._stored is not None
        self.result = dataclasses.replace(self._stored, encryption=self._encrypting.describe())
        return self.result

    def _abort(self) -> None:
        self._encrypting.abort()
        self._inner.abort()


class SealedStore(Store):
    def __init__(self, inner: Store, recipients: Sequence[str], keyring: Keyring | None) -> None:
        self.inner = inner
        self.url = inner.url
        self.recipients = list(recipients)
        self.keyring = keyring

    @property
    def locks_objects(self) -> bool:
        return self.inner.locks_objects

    def writer(self, key: str, *, size_hint: int | None = None, if_absent: bool = False,
               content_type: str | None = None) -> ObjectWriter:
        inner = self.inner.writer(key, size_hint=size_hint, if_absent=if_absent, content_type=content_type)
        if not self.recipients or not key.endswith(SEALED_SUFFIX):
            return inner
        return _SealedWriter(inner, self.recipients)

    def open_seekable(self, key: str) -> BinaryIO:
        if self.inner.read_range(key, 0, len(AGE_HEADER)) != AGE_HEADER:
            return self.inner.open_seekable(key)  # written before archive.encrypt was on
        if self.keyring is None:
            raise UsageError(f"{self.describe(key)} is encrypted and encryption.identities is not set: cannot read it")
        spool: Any = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)  # noqa: SIM115 - returned open, the caller closes it
        try:
            with self.inner.open(key) as source:
                for piece in iter_decrypted(iter(lambda: source.read(READ_CHUNK), b""), self.keyring):
                    spool.write(piece)
        except CannotDecrypt:
            spool.close()
            raise cannot_decrypt(self.describe(key), None) from None
        except DamagedCiphertext as exc:
            spool.close()
            raise ValueError(f"cannot be decrypted: {exc}") from None
        except BaseException:
            spool.close()
            raise
        spool.seek(0)
        return spool  # type: ignore[no-any-return]

    def open(self, key: str) -> BinaryIO:
        return self.inner.open(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def head(self, key: str) -> ObjectInfo | None:
        return self.inner.head(key)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def read_range(self, key: str, start: int, length: int, *, etag: str | None = None) -> bytes:
        return self.inner.read_range(key, start, length, etag=etag)

    def incomplete_writes(self, prefix: str = "") -> builtins.list[IncompleteWrite]:
        return self.inner.incomplete_writes(prefix)

    def discard_incomplete(self, write: IncompleteWrite) -> None:
        self.inner.discard_incomplete(write)

    def describe(self, key: str) -> str:
        return self.inner.describe(key)
