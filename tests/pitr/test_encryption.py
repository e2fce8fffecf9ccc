"""age encryption of the point-in-time archive, with a real server, pg_basebackup, the server's own
archive_command (which holds only the recipient) and recovery: the stored base backup and WAL segments are
age streams, the marker proof restores through them, and a restore without the identity (exit 2) or with
another key (exit 4) writes nothing."""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyrage
import pytest
import yaml

from archiver.pg.connect import execute
from archiver.pg.scratch import free_port
from archiver.pitr.catalog import scan_base_backups
from archiver.pitr.walstore import scan_wal
from archiver.storage.agekeys import fingerprint
from archiver.storage.crypt import AGE_HEADER
from tests.helpers import CliResult, run_cli
from tests.pitr_helpers import Rig, markers, pitr_rig, receiver, server_clock, wait_receiving


def _identity_file(path: Path) -> str:
    """A new age identity in ``path`` (mode 0600, owned by the server user, who runs restore_command); its
    public key."""
    identity = pyrage.x25519.Identity.generate()
    path.write_text(f"{identity}\n")
    path.chmod(0o600)
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return str(identity.to_public())


def _policy_copy(rig: Rig, name: str, **encryption: Any) -> Path:
    """The rig's policy in a directory of its own, with ``encryption`` changed."""
    directory = rig.directory / f"policies-{name}"
    directory.mkdir(mode=0o755)
    document = yaml.safe_load(rig.policy_path.read_text())
    document["encryption"] = {**document["encryption"], **encryption}
    document["encryption"] = {key: value for key, value in document["encryption"].items() if value is not None}
    path = directory / "app.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    path.chmod(0o644)
    return directory


@pytest.fixture
def sealed_rig() -> Iterator[tuple[Rig, str]]:
    with pitr_rig("archive_command", {"url": "file://"}) as rig:
        recipient = _identity_file(rig.directory / "key.txt")
        document = yaml.safe_load(rig.policy_path.read_text())
        document["encryption"] = {"recipients": [recipient], "identities": str(rig.directory / "key.txt")}
        rig.policy_path.write_text(yaml.safe_dump(document, sort_keys=False))
        yield rig, recipient


def _by_hand(rig: Rig, base_id: str, segment: bytes, segment_sha256: str) -> None:
    """``backups show --commands`` for the base backup, run as printed (fetch, sha256sum -c, age -d | zstd -d |
    tar -x, pg_verifybackup), and the WAL pipeline of "Restoring by hand", with Debian's age and zstd."""
    if shutil.which("age") is None or shutil.which("zstd") is None:
        return  # CI installs both (.ci/run); the rest of the test does not need them
    shown = rig.cli("backups", "show", "app", base_id, "--commands")
    assert shown.code == 0, shown.output
    assert f"age -d -i {rig.directory / 'key.txt'} base.tar.zst.age | zstd -d | tar -x -C \"$PGDATA\"" in shown.stdout
    script = "set -e\n" + "\n".join(line for line in shown.stdout.splitlines() if not line.startswith("#"))
    work = rig.directory / "by-hand"
    work.mkdir()
    env = {**os.environ, "PGDATA": str(work / "DIR"), "PATH": f"{rig.server.bindir}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "backup successfully verified" in done.stdout + done.stderr
    assert (work / "DIR" / "PG_VERSION").read_text().strip() == "15"
    (work / "wal.zst.age").write_bytes(segment)
    plain = subprocess.run(f"age -d -i {rig.directory / 'key.txt'} wal.zst.age | zstd -d", shell=True, cwd=work,
                           check=True, capture_output=True).stdout
    assert hashlib.sha256(plain).hexdigest() == segment_sha256


def _restore(policies: Path, rig: Rig, data_dir: Path) -> CliResult:
    return run_cli("--policies", str(policies), "restore", "app", "--pitr", "--to-latest", "--data-dir", str(data_dir),
                   "--yes", env={"ARCHIVER_BIN": rig.archiver})


def test_an_encrypted_archive_is_age_on_the_store_restores_to_a_point_and_refuses_without_the_key(
        sealed_rig: tuple[Rig, str]) -> None:
    rig, recipient = sealed_rig
    made = rig.cli("basebackup", "app")
    assert made.code == 0, made.output
    base_id = made.stdout.strip()
    execute(rig.dsn, "CREATE TABLE markers (name text PRIMARY KEY)")
    execute(rig.dsn, "INSERT INTO markers VALUES ('A')")
    point = server_clock(rig.dsn)
    execute(rig.dsn, "INSERT INTO markers VALUES ('B')")
    segment = rig.switch_and_wait()

    store = rig.store
    (base,) = scan_base_backups(store).backups
    entry = base.manifest["objects"]["base"]
    assert entry["key"] == f"pitr/base/{base_id}/base.tar.zst.age"
    with store.open(entry["key"]) as source:
        stored = source.read()
    assert stored.startswith(AGE_HEADER) and b"markers" not in stored
    assert entry["sha256"] == hashlib.sha256(stored).hexdigest() and entry["size"] == len(stored)
    assert entry["encryption"] == {"format": "age-encryption.org/v1", "recipients": [fingerprint(recipient)]}
    (wal,) = [item for item in scan_wal(store) if item.name == segment]
    assert wal.encrypted and wal.key.endswith(".zst.age")
    with store.open(wal.key) as source:
        sealed_wal = source.read()
    assert sealed_wal.startswith(AGE_HEADER)
    _by_hand(rig, base_id, sealed_wal, wal.sha256)

    keyless = _policy_copy(rig, "keyless", identities=None)
    data_dir = rig.restore_dir("keyless")
    refused = _restore(keyless, rig, data_dir)
    assert refused.code == 2, refused.output
    assert "restore --pitr needs encryption.identities" in refused.stderr
    assert not data_dir.exists()
    fetched = run_cli("--policies", str(keyless), "wal-fetch", "app", segment, str(rig.directory / "seg"))
    assert fetched.code == 2 and "wal-fetch needs encryption.identities" in fetched.stderr, fetched.output
    assert not (rig.directory / "seg").exists()

    other = _identity_file(rig.directory / "other.txt")
    assert other != recipient
    wrong = _policy_copy(rig, "wrong", identities=str(rig.directory / "other.txt"))
    data_dir = rig.restore_dir("wrong")
    refused = _restore(wrong, rig, data_dir)
    assert refused.code == 4, refused.output
    assert (f"base backup {base_id} {store.describe(entry['key'])}: cannot decrypt with the configured identities "
            f"(recipients recorded: {fingerprint(recipient)})") in refused.stderr
    assert not data_dir.exists()
    fetched = run_cli("--policies", str(wrong), "wal-fetch", "app", segment, str(rig.directory / "seg"))
    assert fetched.code == 4 and "cannot decrypt with the configured identities" in fetched.stderr, fetched.output
    assert not (rig.directory / "seg").exists()

    to_time, port = rig.restore_dir("to-time"), free_port()
    result = rig.cli("restore", "app", "--pitr", "--to-time", point, "--data-dir", str(to_time), "--start",
                     "--port", str(port), "--yes")
    assert result.code == 0, result.output
    restored = rig.restored_server(to_time)
    assert markers(f"host=127.0.0.1 port={port} user=postgres dbname=app") == ["A"]
    assert f"restored base backup {base_id}" in result.stdout
    restored.stop()

    latest, port = rig.restore_dir("latest"), free_port()
    result = rig.cli("restore", "app", "--pitr", "--to-latest", "--data-dir", str(latest), "--start",
                     "--port", str(port), "--yes")
    assert result.code == 0, result.output
    rig.restored_server(latest).stop()

    drill = rig.cli("verify", "app", "--pitr", "--to-time", point)
    assert drill.code == 0, drill.output
    fetched = rig.cli("wal-fetch", "app", segment, str(rig.directory / "seg"))
    assert fetched.code == 0, fetched.output
    assert hashlib.sha256((rig.directory / "seg").read_bytes()).hexdigest() == wal.sha256


def test_the_receiver_encrypts_with_the_recipients_alone_and_the_archive_restores_with_the_identity(
        bucket: str, s3_endpoint: str) -> None:
    storage = {"url": f"s3://{bucket}/app", "endpoint_url": s3_endpoint, "region": "us-east-1"}
    with pitr_rig("stream", storage) as rig:
        recipient = _identity_file(rig.directory / "key.txt")
        document = yaml.safe_load(rig.policy_path.read_text())
        document["encryption"] = {"recipients": [recipient]}  # the receiver and basebackup: no private key
        rig.policy_path.write_text(yaml.safe_dump(document, sort_keys=False))
        with receiver(rig) as process:
            wait_receiving(rig.dsn)
            made = rig.cli("basebackup", "app")
            assert made.code == 0, made.output
            execute(rig.dsn, "CREATE TABLE markers (name text PRIMARY KEY)")
            execute(rig.dsn, "INSERT INTO markers VALUES ('A')")
            segment = rig.switch_and_wait()
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
        segments = [item for item in scan_wal(rig.store) if item.file.kind in ("segment", "partial")]
        assert segments and all(item.encrypted for item in segments), [item.key for item in segments]
        assert segment in {item.name for item in segments}

        reader = _policy_copy(rig, "reader", identities=str(rig.directory / "key.txt"))
        latest, port = rig.restore_dir("latest"), free_port()
        result = run_cli("--policies", str(reader), "restore", "app", "--pitr", "--to-latest", "--data-dir",
                         str(latest), "--start", "--port", str(port), "--yes", env={"ARCHIVER_BIN": rig.archiver})
        assert result.code == 0, result.output
        rig.restored_server(latest)
        assert markers(f"host=127.0.0.1 port={port} user=postgres dbname=app") == ["A"]
