"""The ``file://`` store: the embedded default.

Writes go to a temporary file beside the target, are fsynced, renamed into place and the
directory is fsynced, so a crash leaves either the old state or the complete new object.
A create-only write uses ``link()``, which fails atomically when the name is taken.
"""

from __future__ import annotations

import builtins
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from ..errors import ObjectExists, ObjectNotFound, StoreError
from .base import IncompleteWrite, ObjectInfo, ObjectWriter, Store, check_key

TEMP_MARKER = ".archiver-tmp-"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalWriter(ObjectWriter):
    def __init__(self, store: LocalStore, key: str, if_absent: bool) -> None:
        super().__init__(key)
        self._store = store
        self._final = store.path_of(key)
        self._if_absent = if_absent
        try:
            self._final.parent.mkdir(parents=True, exist_ok=True)
            self._temp = self._final.parent / f"{TEMP_MARKER}{self._final.name}.{uuid.uuid4().hex}"
            self._file = open(self._temp, "xb")  # noqa: SIM115 - the writer owns it until commit or abort
        except OSError as exc:
            raise StoreError(f"cannot write {store.describe(key)}: {exc.strerror}") from None

    def _write(self, data: memoryview) -> None:
        try:
            self._file.write(data)
        except OSError as exc:
            raise StoreError(f"cannot write {self._store.describe(self.key)}: {exc.strerror}") from None

    def _commit(self) -> str | None:
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            if self._if_absent:
                try:
                    os.link(self._temp, self._final)
                except FileExistsError:
                    raise ObjectExists(self._store.describe(self.key)) from None
                os.unlink(self._temp)
            else:
                os.replace(self._temp, self._final)
            _fsync_dir(self._final.parent)
        except OSError as exc:
            raise StoreError(f"cannot write {self._store.describe(self.key)}: {exc.strerror}") from None
        return None

    def _abort(self) -> None:
        try:
            self._file.close()
        finally:
            try:
                os.unlink(self._temp)
            except FileNotFoundError:
                pass


class LocalStore(Store):
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.url = f"file://{self.root}"

    def path_of(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    def writer(self, key: str, *, size_hint: int | None = None, if_absent: bool = False,
               content_type: str | None = None) -> ObjectWriter:
        return LocalWriter(self, key, if_absent)

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self.path_of(key), "rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFound(self.describe(key)) from None
        except OSError as exc:
            raise StoreError(f"cannot read {self.describe(key)}: {exc.strerror}") from None

    def open_seekable(self, key: str) -> BinaryIO:
        return self.open(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # Walk only the directory the prefix pins down, then filter by the full prefix.
        directory = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root.joinpath(*directory.split("/")) if directory else self.root
        if not start.is_dir():
            return
        keys: list[tuple[str, os.stat_result]] = []
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames.sort()
            relative_dir = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if name.startswith(TEMP_MARKER):
                    continue
                key = name if relative_dir == "." else f"{relative_dir}/{name}"
                if key.startswith(prefix):
                    try:
                        keys.append((key, os.stat(os.path.join(dirpath, name))))
                    except FileNotFoundError:
                        continue  # deleted while we walked
        for key, info in sorted(keys, key=lambda item: item[0]):
            yield ObjectInfo(key, info.st_size, datetime.fromtimestamp(info.st_mtime, UTC))

    def head(self, key: str) -> ObjectInfo | None:
        try:
            info = self.path_of(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not self.path_of(key).is_file():
            return None
        return ObjectInfo(key, info.st_size, datetime.fromtimestamp(info.st_mtime, UTC))

    def delete(self, key: str) -> None:
        path = self.path_of(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StoreError(f"cannot delete {self.describe(key)}: {exc.strerror}") from None
        _fsync_dir(path.parent)
        self._remove_empty_parents(path.parent)

    def _remove_empty_parents(self, directory: Path) -> None:
        while directory != self.root and self.root in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent

    def stale_temp_files(self) -> Iterator[Path]:
        """Temp files left by a killed writer (cleaned up by prune after a grace period)."""
        if self.root.is_dir():
            yield from (p for p in self.root.rglob(f"{TEMP_MARKER}*") if p.is_file())

    def incomplete_writes(self, prefix: str = "") -> builtins.list[IncompleteWrite]:
        found: list[IncompleteWrite] = []
        for path in self.stale_temp_files():
            relative_dir = path.parent.relative_to(self.root).as_posix()
            # .archiver-tmp-<name>.<32 hex>: the object the writer was making
            name = path.name[len(TEMP_MARKER):].rsplit(".", 1)[0]
            key = name if relative_dir == "." else f"{relative_dir}/{name}"
            if not key.startswith(prefix):
                continue
            try:
                started = datetime.fromtimestamp(path.stat().st_mtime, UTC)
            except FileNotFoundError:
                continue
            found.append(IncompleteWrite(key, started, f"temp file {path}", str(path)))
        return sorted(found, key=lambda write: write.key)

    def discard_incomplete(self, write: IncompleteWrite) -> None:
        path = Path(write.handle)
        if self.root not in path.parents or not path.name.startswith(TEMP_MARKER):
            raise StoreError(f"refusing to remove {path}: not a temp file of {self.url}")
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StoreError(f"cannot remove {path}: {exc.strerror}") from None
