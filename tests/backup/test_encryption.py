"""Encrypted backups (age): what is stored, restoring by hand with Debian's age, zstd and pg_restore,
``archiver restore``/``verify`` with and without the right identities, and key rotation."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from archiver.backup.manifest import verification_key
from archiver.backup.task import run_backup
from archiver.pg.dsn import dsn_env
from archiver.pg.scratch import LocalPostgres
from archiver.storage.agekeys import fingerprint
from archiver.storage.base import Store
from archiver.storage.documents import read_json
from tests.backup_helpers import backup_policy, live_stats, load_policy, read_manifest
from tests.helpers import run_cli
from tests.restore_helpers import add_verify_section, database_exists, fresh_name, restore

pytestmark = pytest.mark.skipif(shutil.which("age") is None or shutil.which("age-keygen") is None,
                                reason="Debian's age is not installed (.ci/run installs it)")


def new_key(directory: Path, name: str, mode: int = 0o600) -> tuple[Path, str]:
    """An identity file made by age-keygen; (its path, its public key)."""
    path = directory / f"{name}.txt"
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    path.chmod(mode)
    public = subprocess.run(["age-keygen", "-y", str(path)], check=True, capture_output=True, text=True).stdout.strip()
    return path, public


def encrypt_policy(path: Path, recipients: list[str], identities: Any = None, **extra: Any) -> Path:
    document = yaml.safe_load(path.read_text())
    document["encryption"] = {"recipients": recipients}
    if identities is not None:
        document["encryption"]["identities"] = identities
    document.update(extra)
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    directory = tmp_path / "keys"
    directory.mkdir()
    return {name: new_key(directory, name) for name in ("a", "b")}


def encrypted_backup(tmp_path: Path, source: str, store: Store, s3: str | None,
                     keys: dict[str, tuple[Path, str]], recipient: str = "a") -> tuple[Path, str]:
    path = encrypt_policy(backup_policy(tmp_path, source, store, s3), [keys[recipient][1]], str(keys[recipient][0]))
    return path, str(run_backup(load_policy(path), store=store).data["id"])


def manual_restore(instance: LocalPostgres, store_dir: Path, manifest: dict[str, Any], key: Path, dbname: str) -> None:
    """The README's pipelines, by hand: age -d | zstd -d | psql (globals), then | pg_restore (dump)."""
    env = {"PATH": f"{instance.bindir}:/usr/bin:/bin", **dsn_env(instance.dsn("postgres"))}
    objects = manifest["objects"]
    globals_file = store_dir / objects["globals"]["key"]
    subprocess.run(f"age -d -i {key} {globals_file} | zstd -d | psql -X -q -d postgres", shell=True, check=True,
                   env=env, capture_output=True)
    subprocess.run(["createdb", dbname], check=True, env=env, capture_output=True)
    dump_file = store_dir / objects["dump"]["key"]
    done = subprocess.run(f"set -o pipefail; age -d -i {key} {dump_file} | zstd -d | pg_restore --exit-on-error "
                          f"--single-transaction -d {dbname}", shell=True, executable="/bin/bash", env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_stored_objects_are_age_with_no_plain_data_and_restore_by_hand_and_with_archiver(
        tmp_path: Path, rich_database: tuple[str, str], file_store: Store, keys: dict[str, tuple[Path, str]],
        target_server: LocalPostgres) -> None:
    source, _ = rich_database
    path, backup_id = encrypted_backup(tmp_path, source, file_store, None, keys)
    manifest = read_manifest(file_store, backup_id)
    store_dir = Path(file_store.url.removeprefix("file://"))

    for role in ("dump", "globals"):
        entry = manifest["objects"][role]
        stored = file_store.get_bytes(entry["key"])
        assert entry["key"].endswith(".zst.age")
        assert stored.startswith(b"age-encryption.org/v1\n")
        assert b"PGDMP" not in stored and b"example.com" not in stored and b"CREATE ROLE" not in stored
        assert hashlib.sha256(stored).hexdigest() == entry["sha256"] and len(stored) == entry["size"]
        assert entry["encryption"] == {"format": "age-encryption.org/v1", "recipients": [fingerprint(keys["a"][1])]}
    manifest_text = json.dumps(manifest)
    assert "AGE-SECRET-KEY" not in manifest_text and keys["a"][0].read_text().splitlines()[-1] not in manifest_text

    by_hand = fresh_name()
    manual_restore(target_server, store_dir, manifest, keys["a"][0], by_hand)
    assert live_stats(target_server.dsn(by_hand)) == live_stats(source)

    with_archiver = fresh_name()
    result = restore(path, target_server.dsn(with_archiver), "--yes", "--checksums")
    assert result.code == 0, result.output
    assert live_stats(target_server.dsn(with_archiver)) == live_stats(source)
    assert "AGE-SECRET-KEY" not in result.output


def test_without_an_identity_exit_2_and_with_another_key_exit_4_and_nothing_is_written(
        tmp_path: Path, rich_database: tuple[str, str], store: Store, endpoint: str | None,
        keys: dict[str, tuple[Path, str]], target_server: LocalPostgres) -> None:
    source, _ = rich_database
    path, backup_id = encrypted_backup(tmp_path, source, store, endpoint, keys)

    encrypt_policy(path, [keys["a"][1]])  # a writer's policy: recipients only
    name = fresh_name()
    missing = restore(path, target_server.dsn(name), "--yes")
    assert missing.code == 2, missing.output
    assert "restore needs encryption.identities" in missing.stderr
    assert not database_exists(target_server, name)

    encrypt_policy(path, [keys["a"][1]], str(keys["b"][0]))
    wrong = restore(path, target_server.dsn(name), "--yes")
    assert wrong.code == 4, wrong.output
    assert (f"cannot decrypt with the configured identities (recipients recorded: {fingerprint(keys['a'][1])})"
            in wrong.stderr)
    assert "nothing was written" in wrong.stderr
    assert not database_exists(target_server, name)
    assert "AGE-SECRET-KEY" not in missing.output + wrong.output


def test_an_identity_file_readable_by_others_is_refused(
        tmp_path: Path, rich_database: tuple[str, str], file_store: Store, keys: dict[str, tuple[Path, str]],
        target_server: LocalPostgres) -> None:
    source, _ = rich_database
    path, _ = encrypted_backup(tmp_path, source, file_store, None, keys)
    keys["a"][0].chmod(0o644)
    name = fresh_name()
    result = restore(path, target_server.dsn(name), "--yes")
    assert result.code == 2, result.output
    assert f"encryption.identities: {keys['a'][0]} is accessible by group or others (mode 0o644)" in result.stderr
    assert f"chmod 600 {keys['a'][0]}" in result.stderr
    assert not database_exists(target_server, name)


def test_rotation_old_backups_restore_with_both_keys_and_are_flagged_without_the_old_one(
        tmp_path: Path, rich_database: tuple[str, str], file_store: Store, keys: dict[str, tuple[Path, str]],
        target_server: LocalPostgres) -> None:
    source, _ = rich_database
    path, old = encrypted_backup(tmp_path, source, file_store, None, keys, "a")
    encrypt_policy(path, [keys["b"][1]], str(keys["b"][0]))
    new = str(run_backup(load_policy(path), store=file_store).data["id"])
    assert read_manifest(file_store, new)["objects"]["dump"]["encryption"]["recipients"] == [fingerprint(keys["b"][1])]

    encrypt_policy(path, [keys["b"][1]], [str(keys["a"][0]), str(keys["b"][0])])
    for backup_id in (old, new):
        name = fresh_name()
        result = restore(path, target_server.dsn(name), "--yes", "--backup", backup_id)
        assert result.code == 0, result.output
        assert live_stats(target_server.dsn(name)) == live_stats(source)
    both = json.loads(run_cli("--policies", str(path.parent), "backups", "list", "app", "--json").stdout)
    assert {item["id"]: item["decryptable"] for item in both["backups"]} == {old: True, new: True}

    encrypt_policy(path, [keys["b"][1]], str(keys["b"][0]))
    name = fresh_name()
    refused = restore(path, target_server.dsn(name), "--yes", "--backup", old)
    assert refused.code == 4, refused.output
    assert (f"cannot decrypt with the configured identities (recipients recorded: {fingerprint(keys['a'][1])})"
            in refused.stderr)
    assert not database_exists(target_server, name)
    listed = json.loads(run_cli("--policies", str(path.parent), "backups", "list", "app", "--json").stdout)
    assert {item["id"]: (item["encrypted"], item["decryptable"]) for item in listed["backups"]} == {
        old: (True, False), new: (True, True)}
    table = run_cli("--policies", str(path.parent), "backups", "list", "app").stdout
    old_line = next(line for line in table.splitlines() if old in line)
    new_line = next(line for line in table.splitlines() if new in line)
    assert "NO KEY: cannot decrypt with the configured identities" in old_line and "NO KEY" not in new_line


def test_verify_decrypts_in_the_stream_and_needs_the_identity(
        tmp_path: Path, rich_database: tuple[str, str], file_store: Store, keys: dict[str, tuple[Path, str]]) -> None:
    source, _ = rich_database
    path, backup_id = encrypted_backup(tmp_path, source, file_store, None, keys)
    add_verify_section(path, scratch={"work_dir": "/var/tmp"})
    result = run_cli("--policies", str(path.parent), "verify", "app")
    assert result.code == 0, result.output
    record = read_json(file_store, verification_key(backup_id))
    assert record["result"] == "passed" and any(check["kind"] == "table" for check in record["checks"])

    encrypt_policy(path, [keys["a"][1]])
    missing = run_cli("--policies", str(path.parent), "verify", "app")
    assert missing.code == 2, missing.output
    assert "verify needs encryption.identities" in missing.stderr
    encrypt_policy(path, [keys["a"][1]], str(keys["b"][0]))
    wrong = run_cli("--policies", str(path.parent), "verify", "app")
    assert wrong.code == 4, wrong.output
    assert f"recipients recorded: {fingerprint(keys['a'][1])}" in wrong.stderr


def test_backups_show_commands_print_a_pipeline_that_restores_the_backup_without_archiver(
        tmp_path: Path, rich_database: tuple[str, str], file_store: Store, keys: dict[str, tuple[Path, str]],
        target_server: LocalPostgres) -> None:
    source, _ = rich_database
    path, backup_id = encrypted_backup(tmp_path, source, file_store, None, keys)
    manifest = read_manifest(file_store, backup_id)
    name = fresh_name()
    shown = run_cli("--policies", str(path.parent), "backups", "show", "app", backup_id, "--commands",
                    "--database", name)
    assert shown.code == 0, shown.output
    lines = shown.stdout.splitlines()
    dump = manifest["objects"]["dump"]
    assert f"echo '{dump['sha256']}  dump.pgdump.zst.age' | sha256sum -c -" in lines
    assert (f"age -d -i {keys['a'][0]} dump.pgdump.zst.age | zstd -d | pg_restore --exit-on-error --no-password "
            f"--single-transaction -d {name}") in lines

    work = tmp_path / "by-hand"
    work.mkdir()
    env = {"PATH": f"{target_server.bindir}:/usr/bin:/bin", **dsn_env(target_server.dsn("postgres"))}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", shown.stdout], cwd=work, env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert "dump.pgdump.zst.age: OK" in done.stdout
    assert live_stats(target_server.dsn(name)) == live_stats(source)

    (work / "dump.pgdump.zst.age").write_bytes(b"age-encryption.org/v1\nnot what was stored")
    fetch_and_check = [line for line in lines if line.startswith(("cp ", "echo "))]
    fetch_and_check = [line for line in fetch_and_check if "dump" in line and not line.startswith("cp ")]
    tampered = subprocess.run(["bash", "-euo", "pipefail", "-c", "\n".join(fetch_and_check)], cwd=work, env=env,
                              capture_output=True, text=True)
    assert tampered.returncode != 0 and "FAILED" in tampered.stdout  # the check catches a replaced object

    summary = run_cli("--policies", str(path.parent), "backups", "show", "app", backup_id)
    assert summary.code == 0 and f"age to {fingerprint(keys['a'][1])}" in summary.stdout


@pytest.mark.timescaledb
def test_the_printed_commands_restore_a_timescaledb_backup_with_pre_and_post_restore(
        tmp_path: Path, database: str, file_store: Store, keys: dict[str, tuple[Path, str]],
        target_server: LocalPostgres) -> None:
    from archiver.pg.connect import connect
    from tests.backup_helpers import TELEMETRY_SCHEMA, timescale_state

    with connect(database, safe_search_path=False) as conn:
        conn.execute(TELEMETRY_SCHEMA)
        conn.execute("CALL refresh_continuous_aggregate('asset_metrics_hourly', NULL, NULL)")
    path, backup_id = encrypted_backup(tmp_path, database, file_store, None, keys)
    name = fresh_name()
    shown = run_cli("--policies", str(path.parent), "backups", "show", "app", backup_id, "--commands", "--database", name)
    assert shown.code == 0, shown.output
    assert "SELECT timescaledb_pre_restore()" in shown.stdout and "SELECT timescaledb_post_restore()" in shown.stdout
    work = tmp_path / "by-hand"
    work.mkdir()
    env = {"PATH": f"{target_server.bindir}:/usr/bin:/bin", **dsn_env(target_server.dsn("postgres"))}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", shown.stdout], cwd=work, env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert timescale_state(target_server.dsn(name)) == timescale_state(database)
    assert live_stats(target_server.dsn(name)) == live_stats(database)
