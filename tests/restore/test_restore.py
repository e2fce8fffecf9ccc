"""``archiver restore``: real backups into real PostgreSQL servers with the real pg_restore, from both stores."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import psycopg
import pytest

from archiver.pg.connect import connect, execute, query
from archiver.pg.locks import server_advisory_lock
from archiver.pg.scratch import LocalPostgres
from archiver.pg.target import content_stats
from archiver.storage.base import Store
from tests.backup_helpers import (
    DIGEST_ORDER,
    TELEMETRY_SCHEMA,
    live_stats,
    new_database,
    read_manifest,
    table_digest,
    timescale_state,
)
from tests.helpers import run_cli
from tests.restore_helpers import (
    backed_up,
    damage,
    database_exists,
    fresh_name,
    restore,
    rewrite_manifest,
    role_exists,
    user_tables,
)


def test_a_backup_restores_into_a_new_database_with_every_table_equal_to_the_source(
        tmp_path: Path, rich_database: tuple[str, str], store: Store, endpoint: str | None,
        target_server: LocalPostgres) -> None:
    source, role = rich_database
    path, backup_id = backed_up(tmp_path, source, store, endpoint)
    name = fresh_name()
    result = restore(path, target_server.dsn(name), "--yes", "--checksums")
    assert result.code == 0, result.output

    restored = target_server.dsn(name)
    assert live_stats(restored) == live_stats(source)  # row counts and content checksums, table by table
    for table, order in DIGEST_ORDER.items():
        assert table_digest(restored, table, order) == table_digest(source, table, order), table
    assert content_stats(restored).large_objects == content_stats(source).large_objects
    assert role_exists(target_server, role)  # from the globals object: the target lacked it
    with connect(restored) as conn:
        conn.execute(f"SET ROLE {role}")
        assert conn.execute("SELECT count(*) FROM app.devices").fetchone() == (300,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT count(*) FROM identity.users")

    # the plan came first, then what happened
    assert f"backup   {backup_id}" in result.stderr and "does not exist: it will be created" in result.stderr
    assert re.search(rf"roles    creates \d+ the target lacks: .*\b{role}\b", result.stderr)
    assert "committed only after the dump's SHA-256 matched the manifest" in result.stderr
    assert "row counts and checksums: all 7 tables match the manifest" in result.stdout
    assert re.search(r"time: restore \d+\.\ds \(the achieved RTO", result.stdout)


def test_a_non_empty_target_is_refused_without_clean_and_replaced_with_it(
        tmp_path: Path, rich_database: tuple[str, str], file_store: Store, target_server: LocalPostgres) -> None:
    source, _ = rich_database
    path, _ = backed_up(tmp_path, source, file_store, None)
    _, target = new_database(target_server)
    execute(target, "CREATE SCHEMA app; CREATE TABLE app.devices (id uuid, junk text);"
                       "INSERT INTO app.devices VALUES (gen_random_uuid(), 'stale');"
                       "CREATE TABLE public.keepme (n int); INSERT INTO public.keepme VALUES (1)")

    refused = restore(path, target, "--yes")
    assert refused.code == 2, refused.output
    assert "is not empty (2 tables, schema app): refusing to restore over it" in refused.stderr
    assert "add --clean" in refused.stderr
    assert query(target, "SELECT junk FROM app.devices") == [("stale",)]

    cleaned = restore(path, target, "--clean", "--yes")
    assert cleaned.code == 0, cleaned.output
    assert "NOT EMPTY: 2 tables, schema app" in cleaned.stderr
    assert "kept, not in the backup: public.keepme" in cleaned.stderr
    stats = live_stats(target)
    assert {name: stats[name] for name in live_stats(source)} == live_stats(source)
    assert query(target, "SELECT n FROM public.keepme") == [(1,)]  # --clean replaces the backup's objects only


@pytest.mark.parametrize("change, message, hint", [
    (lambda d: d["database"].update(server_version="16.4", server_version_num=160004),
     "the target runs PostgreSQL 15.", "restore into a PostgreSQL 16 (or newer) server"),
    (lambda d: (d.update(timescaledb_version="9.9.9"), d["database"]["extensions"].update(timescaledb="9.9.9")),
     "the target server cannot create TimescaleDB 9.9.9, the version the backup was taken with",
     "install timescaledb 9.9.9 for PostgreSQL 15 (package timescaledb-2-postgresql-15=9.9.9* on Debian/Ubuntu"),
    (lambda d: d["database"]["extensions"].update(postgis_nowhere="3.4.2"),
     "the target server cannot create extension(s) the backup uses: postgis_nowhere",
     "install them for PostgreSQL 15"),
], ids=["older major", "missing timescaledb version", "missing extension"])
def test_a_target_that_cannot_take_the_backup_is_refused_naming_what_to_install(
        tmp_path: Path, rich_database: tuple[str, str], file_store: Store, target_server: LocalPostgres,
        change: Any, message: str, hint: str) -> None:
    source, role = rich_database
    path, backup_id = backed_up(tmp_path, source, file_store, None)
    rewrite_manifest(file_store, backup_id, change)
    name = fresh_name()
    result = restore(path, target_server.dsn(name), "--yes")
    assert result.code == 2, result.output
    assert message in result.stderr and hint in result.stderr
    assert not database_exists(target_server, name) and not role_exists(target_server, role)


@pytest.mark.parametrize("how", ["flipped byte", "flipped byte (zstd)", "truncated", "missing", "wrong object"])
def test_a_damaged_backup_is_caught_before_anything_stays_in_the_target(
        tmp_path: Path, rich_database: tuple[str, str], store: Store, endpoint: str | None,
        target_server: LocalPostgres, how: str) -> None:
    source, role = rich_database
    codec = "zstd" if how == "flipped byte (zstd)" else "none"  # uncompressed: the dump's text can be altered
    path, earlier = backed_up(tmp_path, source, store, endpoint, compression={"codec": codec})
    execute(source, "DELETE FROM app.processed_messages")
    _, backup_id = backed_up(tmp_path, source, store, endpoint, compression={"codec": codec})
    expected = damage(store, backup_id, how.replace(" (zstd)", ""), other_backup=earlier,
                      needle=b"user42@example.com" if how == "flipped byte" else None)

    new = fresh_name()
    result = restore(path, target_server.dsn(new), "--backup", backup_id, "--yes")
    assert result.code == 4, result.output
    assert re.search(expected, result.stderr), result.stderr
    assert f"backup {backup_id}" in result.stderr and "choose another backup" in result.stderr
    assert not database_exists(target_server, new) and not role_exists(target_server, role)
    if how in ("flipped byte", "wrong object"):  # caught while streaming: what pg_restore had loaded was rolled back
        assert re.search(r"the target was put back as it was \(dropped \d+ role\(s\) it had created; dropped database",
                         result.stderr), result.stderr

    _, existing = new_database(target_server)  # an existing, empty target stays empty
    again = restore(path, existing, "--backup", backup_id, "--yes")
    assert again.code == 4, again.output
    assert user_tables(existing) == [] and not role_exists(target_server, role)


def test_without_a_terminal_restore_asks_for_yes_and_dry_run_changes_nothing(
        tmp_path: Path, rich_database: tuple[str, str], file_store: Store, target_server: LocalPostgres) -> None:
    source, _ = rich_database
    path, backup_id = backed_up(tmp_path, source, file_store, None)
    name = fresh_name()
    unconfirmed = restore(path, target_server.dsn(name))
    assert unconfirmed.code == 2, unconfirmed.output
    assert "refusing to restore without a confirmation: stdin is not a terminal" in unconfirmed.stderr
    assert f"backup   {backup_id}" in unconfirmed.stderr  # the plan was shown
    dry = restore(path, target_server.dsn(name), "--dry-run")
    assert dry.code == 0, dry.output
    assert "step     CREATE DATABASE" in dry.stdout and "dry run: nothing was changed" in dry.stderr
    assert not database_exists(target_server, name)


def test_a_password_on_the_command_line_is_refused_and_accepted_from_the_environment(
        tmp_path: Path, rich_database: tuple[str, str], file_store: Store, target_server: LocalPostgres) -> None:
    source, _ = rich_database
    path, _ = backed_up(tmp_path, source, file_store, None)
    name = fresh_name()
    dsn = target_server.dsn(name) + " password=Sup3r-s3cret@x"  # trust authentication ignores it
    typed = restore(path, dsn, "--yes")
    assert typed.code == 2 and "--target holds a password" in typed.stderr
    assert "Sup3r-s3cret" not in typed.output and not database_exists(target_server, name)
    from_env = run_cli("--policies", str(path.parent), "restore", "app", "--yes",
                       env={"ARCHIVER_RESTORE_TARGET": dsn})
    assert from_env.code == 0, from_env.output
    assert "Sup3r-s3cret" not in from_env.output and "password=********" in from_env.stderr


def test_jobs_spool_the_proven_dump_and_restore_in_parallel(
        tmp_path: Path, rich_database: tuple[str, str], file_store: Store, target_server: LocalPostgres) -> None:
    source, _ = rich_database
    path, _ = backed_up(tmp_path, source, file_store, None)
    work = tmp_path / "spool"
    work.mkdir()
    name = fresh_name()
    result = restore(path, target_server.dsn(name), "--jobs", "2", "--work-dir", str(work), "--yes")
    assert result.code == 0, result.output
    assert f"spooled to {work}" in result.stderr and '"--jobs=2"' in result.stderr  # pg_restore argv, logged
    assert "with 2 jobs (not one transaction)" in result.stderr
    assert live_stats(target_server.dsn(name)) == live_stats(source)
    assert list(work.iterdir()) == []  # the spooled dump is gone


def test_before_picks_the_newest_backup_taken_earlier(
        tmp_path: Path, rich_database: tuple[str, str], file_store: Store, target_server: LocalPostgres) -> None:
    source, _ = rich_database
    path, first = backed_up(tmp_path, source, file_store, None)
    execute(source, "DELETE FROM app.devices WHERE name LIKE 'device 1%'")
    _, second = backed_up(tmp_path, source, file_store, None)
    taken = read_manifest(file_store, second)["snapshot_time"]
    name = fresh_name()
    result = restore(path, target_server.dsn(name), "--before", taken, "--yes")
    assert result.code == 0, result.output
    assert f"backup   {first}" in result.stderr
    assert query(target_server.dsn(name), "SELECT count(*) FROM app.devices") == [(300,)]
    both = restore(path, target_server.dsn(fresh_name()), "--before", taken, "--backup", second, "--yes")
    assert both.code == 2 and "--backup and --before exclude each other" in both.stderr


# -- TimescaleDB ------------------------------------------------------------------------------------

@pytest.fixture
def telemetry(database: str) -> str:
    with connect(database, safe_search_path=False) as conn:
        conn.execute(TELEMETRY_SCHEMA)
        conn.execute("CALL refresh_continuous_aggregate('asset_metrics_hourly', NULL, NULL)")
    return database


@pytest.mark.timescaledb
def test_timescaledb_backup_restores_with_compressed_chunks_and_its_continuous_aggregate(
        tmp_path: Path, telemetry: str, s3_store: Store, s3_endpoint: str, target_server: LocalPostgres) -> None:
    path, backup_id = backed_up(tmp_path, telemetry, s3_store, s3_endpoint)
    version = read_manifest(s3_store, backup_id)["timescaledb_version"]
    name = fresh_name()
    parallel = restore(path, target_server.dsn(name), "--jobs", "2", "--yes")
    assert parallel.code == 2 and "a TimescaleDB backup restores with one job" in parallel.stderr

    result = restore(path, target_server.dsn(name), "--yes", "--checksums")
    assert result.code == 0, result.output
    assert f"CREATE EXTENSION timescaledb VERSION '{version}'" in result.stderr
    assert "timescaledb_pre_restore()" in result.stderr and "timescaledb_post_restore()" in result.stderr
    restored = target_server.dsn(name)
    assert timescale_state(restored) == timescale_state(telemetry)
    assert live_stats(restored) == live_stats(telemetry)
    assert query(restored, "SELECT current_setting('timescaledb.restoring', true)") in ([("off",)], [(None,)])

    # --clean over a TimescaleDB target: the dump is proven in full, then everything is replaced
    execute(restored, "INSERT INTO asset_metrics (time, asset_id, metric, value) "
                         "VALUES ('2026-01-03 00:00:30+00', gen_random_uuid(), 'power', 1)")
    again = restore(path, restored, "--clean", "--yes", "--checksums")
    assert again.code == 0, again.output
    assert "DROPS EVERYTHING" in again.stderr and "spooled to" in again.stderr
    assert timescale_state(restored) == timescale_state(telemetry)


@pytest.mark.timescaledb
def test_a_target_that_does_not_preload_timescaledb_is_told_how(tmp_path: Path, telemetry: str,
                                                               file_store: Store) -> None:
    path, _ = backed_up(tmp_path, telemetry, file_store, None)
    with LocalPostgres(timescaledb=False) as plain:
        result = restore(path, plain.dsn("telemetry"), "--yes")
        assert result.code == 2, result.output
        assert "the target server does not preload TimescaleDB" in result.stderr
        assert "add timescaledb to shared_preload_libraries" in result.stderr
        assert not database_exists(plain, "telemetry")


def test_a_pg_restore_failure_on_an_intact_dump_rolls_back_and_says_why(
        tmp_path: Path, rich_database: tuple[str, str], file_store: Store, target_server: LocalPostgres) -> None:
    """pg_restore stops early: archiver reads the rest of the object to tell a damaged backup (exit 4)
    from a failed restore (exit 1), and the transaction leaves nothing behind."""
    source, _ = rich_database
    path, _ = backed_up(tmp_path, source, file_store, None, globals=False)
    name, target = new_database(target_server)
    execute(target_server.dsn(), f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    result = restore(path, target, "--yes")
    assert result.code == 1, result.output
    assert "pg_restore exited 1" in result.stderr and "read-only transaction" in result.stderr
    assert "nothing was written to the target" in result.stderr
    execute(target_server.dsn(), f'ALTER DATABASE "{name}" RESET default_transaction_read_only')
    assert user_tables(target) == []


def test_two_restores_into_one_target_do_not_run_at_once(
        tmp_path: Path, rich_database: tuple[str, str], file_store: Store, target_server: LocalPostgres) -> None:
    source, _ = rich_database
    path, _ = backed_up(tmp_path, source, file_store, None)
    name, target = new_database(target_server)
    with server_advisory_lock(target, f"restore-target:{name}", holder="archiver restore app (another engineer)"):
        result = restore(path, target, "--yes")
    assert result.code == 3, result.output
    assert f"restore into database '{name}' cannot start: the restore lock of" in result.stderr
    assert "archiver restore app (another engineer)" in result.stderr
    assert user_tables(target) == []
