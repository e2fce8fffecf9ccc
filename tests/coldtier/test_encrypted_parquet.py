"""archive.encrypt: the Parquet files are age-encrypted in the upload stream; archive's read-back,
retention's re-check before a drop and restore-archive decrypt them; Debian's age opens them into
Parquet pyarrow reads; without the identity, retention refuses (exit 2) before doing anything."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from archiver.coldtier.archive import run_archive
from archiver.coldtier.plan import run_plan
from archiver.coldtier.retention import run_retention
from archiver.errors import ExitCode, UsageError
from archiver.policy.protect import EncryptionConfig
from archiver.policy.schema import StorageConfig
from archiver.restore.archive import run_restore_archive
from archiver.storage.agekeys import fingerprint
from archiver.storage.backends import open_store
from tests.coldtier_helpers import READING_AGES, create_readings, manifests, object_keys, policy_for, relations, sql

pytestmark = pytest.mark.skipif(shutil.which("age-keygen") is None, reason="Debian's age is not installed")


def test_encrypted_archives_are_age_and_archive_retention_and_restore_archive_decrypt_them(
        tmp_path: Path, database: str) -> None:
    key = tmp_path / "key.txt"
    subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
    key.chmod(0o600)
    public = subprocess.run(["age-keygen", "-y", str(key)], check=True, capture_output=True, text=True).stdout.strip()
    create_readings(database)
    storage = StorageConfig(url=f"file://{tmp_path}/store")
    plain = policy_for(database, storage)
    policy = dataclasses.replace(plain, archive=dataclasses.replace(plain.archive, encrypt=True),
                                 encryption=EncryptionConfig(recipients=[public], identities=str(key)))
    store = open_store(storage)

    archived = run_archive(policy)
    assert archived.status == "ok", archived.lines
    documents = manifests(store)
    assert sorted(documents) == sorted(f"readings_d{age}" for age in READING_AGES)
    for name, document in documents.items():
        rows = sum(int(entry["rows"]) for entry in document["objects"])
        (entry,) = document["objects"]
        stored = store.get_bytes(entry["key"])
        assert stored.startswith(b"age-encryption.org/v1\n") and b"PAR1" not in stored
        assert entry["encryption"] == {"format": "age-encryption.org/v1", "recipients": [fingerprint(public)]}
        opened = tmp_path / f"{name}.parquet"
        subprocess.run(["age", "-d", "-i", str(key), "-o", str(opened), str(tmp_path / "store" / entry["key"])],
                       check=True)
        assert pq.ParquetFile(opened).metadata.num_rows == rows == 50

    planned = run_plan(policy)
    assert planned.lines[-1] == "protection: backups encrypted (age), archives encrypted (age), no object lock"

    without_key = dataclasses.replace(policy, encryption=EncryptionConfig(recipients=[public]))
    with pytest.raises(UsageError) as refused:
        run_retention(without_key)
    assert refused.value.exit_code == ExitCode.USAGE
    assert "retention (it re-checks archives before drops) needs encryption.identities" in str(refused.value)
    assert len(relations(database, "readings_d%")) == 4  # nothing dropped

    retained = run_retention(policy)
    assert retained.metrics["chunks_dropped"] == 4, retained.lines  # each re-checked (decrypted) before its drop
    assert relations(database, "readings_d%") == []

    window = (f"{sql(database, 'SELECT (current_date - 90)::timestamptz::text')[0][0]}",
              f"{sql(database, 'SELECT (current_date - 79)::timestamptz::text')[0][0]}")
    sql(database, "CREATE TABLE readings_d90 PARTITION OF readings FOR VALUES FROM ((current_date - 90)::timestamptz) "
                  "TO ((current_date - 89)::timestamptz)")
    restored = run_restore_archive(policy, table="readings", start=window[0], end=window[1])
    assert restored.status == "ok", restored.lines
    assert restored.metrics["rows"] == 100
    assert sql(database, "SELECT count(*), sum(price) FROM readings")[0] == (100, sum(g * 1.25 for g in range(1, 51)) * 2)
    assert all(key.endswith(".parquet") for document in documents.values() for key in object_keys(document))
