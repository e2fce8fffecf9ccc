"""The age stream (pyrage) against Debian's age CLI: what archiver encrypts, age decrypts and the other way
round, for X25519 and ssh-ed25519 keys; streaming in bounded pieces; damaged and foreign streams refused."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from archiver.errors import ExitCode, UsageError
from archiver.storage.agekeys import CannotDecrypt, fingerprint, load_keyring
from archiver.storage.crypt import QUEUE_DEPTH, DamagedCiphertext, EncryptingWriter, iter_decrypted, opens

pytestmark = pytest.mark.skipif(shutil.which("age") is None or shutil.which("ssh-keygen") is None,
                                reason="Debian's age and ssh-keygen are needed")


class CountingSink:
    def __init__(self) -> None:
        self.data = io.BytesIO()
        self.largest = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.largest = max(self.largest, len(data))
        return self.data.write(data)


def encrypt(plain: bytes, recipients: list[str]) -> tuple[bytes, int]:
    sink = CountingSink()
    with EncryptingWriter(sink, recipients) as writer:
        for start in range(0, len(plain), 1 << 20):
            writer.write(plain[start:start + (1 << 20)])
        writer.finish()
    return sink.data.getvalue(), sink.largest


def test_x25519_and_ssh_recipients_round_trip_with_the_age_cli(tmp_path: Path) -> None:
    age_key = tmp_path / "age.txt"
    subprocess.run(["age-keygen", "-o", str(age_key)], check=True, capture_output=True)
    age_key.chmod(0o600)
    age_public = subprocess.run(["age-keygen", "-y", str(age_key)], check=True, capture_output=True, text=True).stdout.strip()
    ssh_key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ops@example", "-f", str(ssh_key)], check=True)
    ssh_public = (tmp_path / "id_ed25519.pub").read_text().strip()
    plain = os.urandom(5 * 1024 * 1024 + 17)

    stored, largest = encrypt(plain, [age_public, ssh_public])
    assert stored.startswith(b"age-encryption.org/v1\n") and largest <= 64 * 1024 + 1024  # streamed in age chunks
    (tmp_path / "object.age").write_bytes(stored)
    for key in (age_key, ssh_key):  # Debian's age opens what archiver wrote, with either key
        out = subprocess.run(["age", "-d", "-i", str(key), str(tmp_path / "object.age")], check=True, capture_output=True)
        assert hashlib.sha256(out.stdout).digest() == hashlib.sha256(plain).digest()
    for key in (age_key, ssh_key):  # and archiver decrypts with either identity file
        keyring = load_keyring([str(key)], "encryption.identities")
        pieces = list(iter_decrypted((stored[i:i + 100_000] for i in range(0, len(stored), 100_000)), keyring))
        assert b"".join(pieces) == plain and max(map(len, pieces)) <= 64 * 1024
    assert fingerprint(ssh_public) == fingerprint(ssh_public.rsplit(" ", 1)[0])  # the comment is not the key

    by_cli = subprocess.run(["age", "-r", age_public], input=plain, check=True, capture_output=True).stdout
    keyring = load_keyring([str(age_key)], "encryption.identities")
    assert b"".join(iter_decrypted([by_cli], keyring)) == plain  # what age wrote, archiver reads
    assert QUEUE_DEPTH * (1 << 20) < 16 * 1024 * 1024  # memory in flight is bounded by the queue


def test_a_foreign_key_a_damaged_stream_and_a_readable_identity_file_are_refused(tmp_path: Path) -> None:
    mine, other = tmp_path / "mine.txt", tmp_path / "other.txt"
    for path in (mine, other):
        subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
        path.chmod(0o600)
    public = subprocess.run(["age-keygen", "-y", str(mine)], check=True, capture_output=True, text=True).stdout.strip()
    stored, _ = encrypt(b"x" * 200_000, [public])
    with pytest.raises(CannotDecrypt):
        list(iter_decrypted([stored], load_keyring([str(other)], "encryption.identities")))
    keyring = load_keyring([str(mine)], "encryption.identities")
    assert opens(stored[:70_000], keyring) and not opens(stored[:70_000], load_keyring([str(other)], "x"))
    with pytest.raises(DamagedCiphertext):
        list(iter_decrypted([stored[:-10]], keyring))
    damaged = bytearray(stored)
    damaged[len(damaged) // 2] ^= 1
    with pytest.raises(DamagedCiphertext):
        list(iter_decrypted([bytes(damaged)], keyring))

    other.chmod(0o640)
    with pytest.raises(UsageError) as refused:
        load_keyring([str(other)], "encryption.identities")
    assert refused.value.exit_code == ExitCode.USAGE and "mode 0o640" in str(refused.value)
    secret = mine.read_text().splitlines()[-1]
    (tmp_path / "bad.txt").write_text(secret[:-3] + "xyz\n")
    (tmp_path / "bad.txt").chmod(0o600)
    with pytest.raises(UsageError) as bad:
        load_keyring([str(tmp_path / "bad.txt")], "encryption.identities")
    assert "line 1 is not an age identity" in str(bad.value) and secret[:20] not in str(bad.value)
