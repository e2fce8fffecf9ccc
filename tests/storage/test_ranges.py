"""Random access to stored objects (Parquet readers need it), on every backend, without local copies."""

from __future__ import annotations

import pytest

from archiver.errors import ObjectNotFound, StoreError
from archiver.storage.base import RangeReader, Store
from archiver.storage.s3 import S3Store
from tests.storage_helpers import MiB, pattern


def test_ranges_and_seeks_read_the_right_bytes(store: Store) -> None:
    data = pattern(3 * MiB + 11, seed=4)
    store.put("archive/x.parquet", iter([data]))
    assert store.read_range("archive/x.parquet", 5, 10) == data[5:15]
    assert store.read_range("archive/x.parquet", len(data) - 4, 100) == data[-4:]
    with store.open_seekable("archive/x.parquet") as reader:
        reader.seek(-8, 2)
        assert reader.read() == data[-8:]
        reader.seek(MiB)
        assert reader.read(2 * MiB) == data[MiB:3 * MiB]
        assert reader.tell() == 3 * MiB


def test_a_missing_object_is_reported(store: Store) -> None:
    with pytest.raises(ObjectNotFound):
        store.open_seekable("archive/none.parquet")


def test_an_object_replaced_while_being_read_is_refused(s3_store: S3Store) -> None:
    s3_store.put_bytes("archive/y.parquet", b"first version " * 1000)
    reader = RangeReader(s3_store, "archive/y.parquet")  # pinned to the ETag it saw when opened
    assert reader.read(5) == b"first"
    s3_store.put_bytes("archive/y.parquet", b"second version " * 1000)
    with pytest.raises(StoreError, match="changed while it was being read"):
        reader.read(5)
