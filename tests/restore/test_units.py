"""The pieces of a restore that need no server: argv, the roles filter, the withheld tail, backup choice."""

from __future__ import annotations

import hashlib
import io
from datetime import UTC, datetime
from pathlib import Path

import pytest

from archiver.backup.dump import pg_amcheck_argv, pg_restore_argv
from archiver.backup.globals import plan_roles, split_statements
from archiver.backup.manifest import backup_manifest_key
from archiver.errors import UsageError
from archiver.restore.select import select_backup
from archiver.restore.stream import HOLD_BACK, _Withheld
from archiver.storage.compress import CompressingWriter
from archiver.storage.documents import write_json
from archiver.storage.integrity import CheckedObject, ObjectMismatch, precheck
from archiver.storage.local import LocalStore

GLOBALS = r"""--
-- PostgreSQL database cluster dump
--

\restrict D8gUf2xAHiBeIAUBJlpw60PTKqQksZunCft3G0p2pXQtJI1szyMbEsaR9YyUFJ6

SET default_transaction_read_only = off;
SET standard_conforming_strings = on;

CREATE ROLE "Odd Role";
ALTER ROLE "Odd Role" WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB NOLOGIN NOREPLICATION NOBYPASSRLS;
CREATE ROLE app;
ALTER ROLE app WITH SUPERUSER INHERIT NOCREATEROLE NOCREATEDB LOGIN NOREPLICATION NOBYPASSRLS PASSWORD 'SCRAM-SHA-256$4096:x';
COMMENT ON ROLE app IS 'multi
line; comment with a ''quote''';
CREATE ROLE postgres;
ALTER ROLE postgres WITH SUPERUSER INHERIT CREATEROLE CREATEDB LOGIN REPLICATION BYPASSRLS;
CREATE ROLE reader;
ALTER ROLE reader WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB NOLOGIN NOREPLICATION NOBYPASSRLS;
ALTER ROLE app SET search_path TO 'a; b', 'public';
ALTER ROLE postgres SET work_mem TO '1GB';
GRANT reader TO "Odd Role" WITH ADMIN OPTION GRANTED BY postgres;
GRANT reader TO app GRANTED BY ghost;
GRANT postgres TO reader GRANTED BY postgres;
GRANT SET ON PARAMETER log_statement TO app;
CREATE TABLESPACE fast OWNER postgres LOCATION '/srv/fast';
DROP DATABASE everything;

\unrestrict D8gUf2xAHiBeIAUBJlpw60PTKqQksZunCft3G0p2pXQtJI1szyMbEsaR9YyUFJ6
"""


def test_statements_split_outside_quotes_and_skip_comments_and_meta_commands() -> None:
    statements = split_statements(GLOBALS)
    assert statements[0] == "SET default_transaction_read_only = off;"
    assert "COMMENT ON ROLE app IS 'multi\nline; comment with a ''quote'''" + ";" in statements
    assert not any(s.startswith(("\\", "--")) for s in statements)
    assert statements[-1] == "DROP DATABASE everything;"


def test_only_missing_roles_are_created_and_existing_ones_are_left_alone() -> None:
    plan = plan_roles(GLOBALS, {"postgres", "reader"})
    assert plan.create == ["Odd Role", "app"] and plan.existing == ["postgres", "reader"]
    run = "\n".join(plan.statements)
    assert 'CREATE ROLE "Odd Role";' in run and "CREATE ROLE app;" in run
    assert "ALTER ROLE app WITH SUPERUSER" in run  # a superuser restores the attributes as they were
    assert "postgres WITH" not in run and "work_mem" not in run  # the target's own roles are not touched
    assert 'GRANT reader TO "Odd Role" WITH ADMIN OPTION GRANTED BY postgres;' in plan.statements
    assert "GRANT reader TO app;" in plan.statements  # the grantor does not exist there
    assert "GRANT postgres TO reader" not in run  # between existing roles: not ours to change
    assert "GRANT SET ON PARAMETER log_statement TO app;" in plan.statements
    assert "TABLESPACE" not in run and plan.tablespaces == ["fast"]
    assert "DROP DATABASE" not in run and any("DROP DATABASE everything" in s for s in plan.skipped)


def test_without_superuser_privileged_attributes_are_left_out_and_reported() -> None:
    plan = plan_roles(GLOBALS, {"postgres", "reader"}, superuser=False)
    (alter_app,) = [s for s in plan.statements if s.startswith("ALTER ROLE app WITH")]
    assert alter_app == ("ALTER ROLE app WITH INHERIT NOCREATEROLE NOCREATEDB LOGIN PASSWORD "
                         "'SCRAM-SHA-256$4096:x';")
    assert 'ALTER ROLE "Odd Role" WITH INHERIT NOCREATEROLE NOCREATEDB NOLOGIN;' in plan.statements
    assert any("SUPERUSER not granted" in s for s in plan.skipped)
    assert not any("ON PARAMETER" in s for s in plan.statements)


def test_pg_restore_argv() -> None:
    tool = Path("/usr/lib/postgresql/15/bin/pg_restore")
    assert pg_restore_argv(tool, dbname="app") == [
        str(tool), "--no-password", "--exit-on-error", "--verbose", "--dbname=dbname=app", "--single-transaction"]
    assert pg_restore_argv(tool, dbname="odd name", single_transaction=False, jobs=4, clean=True,
                                no_tablespaces=True, archive=Path("/spool/dump.pgdump")) == [
        str(tool), "--no-password", "--exit-on-error", "--verbose", "--dbname=dbname='odd name'", "--jobs=4",
        "--clean", "--if-exists", "--no-tablespaces", "/spool/dump.pgdump"]
    assert pg_amcheck_argv(Path("/bin/pg_amcheck")) == ["/bin/pg_amcheck", "--no-password", "--install-missing"]


def test_the_withheld_tail_is_never_passed_on_before_the_end() -> None:
    withheld = _Withheld(HOLD_BACK)
    chunks = [bytes([n]) * (300 * 1024) for n in range(10)]
    passed = b"".join(piece for chunk in chunks for piece in withheld.push(chunk))
    assert len(b"".join(chunks)) - len(passed) >= HOLD_BACK
    assert passed + b"".join(withheld.rest()) == b"".join(chunks)
    small = _Withheld(HOLD_BACK)
    assert list(small.push(b"x" * 10)) == [] and list(small.rest()) == [b"x" * 10]


def stored(store: LocalStore, key: str, data: bytes, codec: str) -> dict[str, object]:
    raw = io.BytesIO()
    writer = CompressingWriter(raw, codec)  # type: ignore[arg-type]
    writer.write(data)
    writer.finish()
    store.put_bytes(key, raw.getvalue())
    return {"key": key, "size": len(raw.getvalue()), "sha256": hashlib.sha256(raw.getvalue()).hexdigest(),
            "codec": codec, "uncompressed_size": len(data)}


@pytest.mark.parametrize("codec", ["zstd", "gzip", "none"])
def test_checked_objects_prove_every_byte(tmp_path: Path, codec: str) -> None:
    store = LocalStore(tmp_path)
    data = b"".join(b"row %d\n" % i for i in range(200_000))
    entry = stored(store, "a/object", data, codec)
    with CheckedObject(store, entry, "the object") as obj:
        assert b"".join(obj.chunks()) == data
        obj.finish()
    raw = store.get_bytes("a/object")
    store.put_bytes("a/object", raw + b"\0")  # trailing bytes count too
    with pytest.raises(ObjectMismatch, match="truncated or replaced"):
        precheck(store, entry, "the object")
    with CheckedObject(store, entry, "the object") as obj, pytest.raises(ObjectMismatch) as caught:
        for _ in obj.chunks():
            pass
        obj.finish()
    assert caught.value.reason in ("size", "corrupt", "truncated")
    store.put_bytes("a/object", raw[:-7])
    with CheckedObject(store, entry, "the object") as obj, pytest.raises(ObjectMismatch) as caught:
        for _ in obj.chunks():
            pass
        obj.finish()
    assert caught.value.reason == ("size" if codec == "none" else "truncated")


def test_choosing_a_backup(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    with pytest.raises(UsageError, match="no backups in"):
        select_backup(store)
    for backup_id, taken in (("20260101T020000Z-aaaa", "2026-01-01T02:00:00Z"),
                             ("20260102T020000Z-bbbb", "2026-01-02T02:00:00Z")):
        write_json(store, backup_manifest_key(backup_id), {"id": backup_id, "snapshot_time": taken})
    assert select_backup(store).id == "20260102T020000Z-bbbb"
    assert select_backup(store, before=datetime(2026, 1, 2, tzinfo=UTC)).id == "20260101T020000Z-aaaa"
    with pytest.raises(UsageError, match="no backup taken before 2026-01-01T00:00:00Z; the oldest is 20260101"):
        select_backup(store, before=datetime(2026, 1, 1, tzinfo=UTC))
    with pytest.raises(UsageError, match="no backup '20250101T000000Z-0000'") as caught:
        select_backup(store, backup_id="20250101T000000Z-0000")
    assert "20260102T020000Z-bbbb, 20260101T020000Z-aaaa" in str(caught.value)
