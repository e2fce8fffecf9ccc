"""What pg_restore without --create would lose: the database's encoding, locale, settings, comment,
privileges and owner; and what it silently changes: materialized views come back re-computed."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from archiver.backup.manifest import verification_key
from archiver.pg.connect import execute, query
from archiver.pg.dsn import parse_dsn
from archiver.pg.properties import database_properties
from archiver.pg.scratch import LocalPostgres
from archiver.pg.stats import CHECKSUM_V1
from archiver.pg.target import content_stats
from archiver.storage.base import Store
from archiver.storage.documents import read_json
from tests.backup_helpers import read_manifest
from tests.restore_helpers import add_verify_section, backed_up, database_exists, fresh_name, restore, rewrite_manifest

SETTINGS = {  # six ALTER DATABASE ... SET, as the stored pg_db_role_setting text
    "search_path": 'app, "$user", public',
    "TimeZone": "America/New_York",
    "work_mem": "16MB",
    "statement_timeout": "5min",
    "DateStyle": "SQL, DMY",
    "app.tenant": "acme's",
}


@pytest.fixture
def shop(pg: LocalPostgres) -> Iterator[tuple[str, dict[str, str]]]:
    """A LATIN1 database with C collation (the cluster's default is UTF8), six settings, a role's setting in
    it, a comment, an owner and grants (CONNECT revoked from PUBLIC); (dsn, role names)."""
    suffix = uuid.uuid4().hex[:8]
    name = f"shop_{suffix}"
    roles = {"owner": f"shop_owner_{suffix}", "reader": f"shop_reader_{suffix}", "writer": f"shop_writer_{suffix}"}
    admin = pg.dsn()
    execute(admin, f"CREATE ROLE {roles['owner']} NOLOGIN; CREATE ROLE {roles['reader']} LOGIN; "
                      f"CREATE ROLE {roles['writer']} LOGIN")
    execute(admin, f"CREATE DATABASE {name} OWNER {roles['owner']} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' "
                      f"TEMPLATE template0")
    statements = [f"ALTER DATABASE {name} SET {setting} TO {value}" for setting, value in (
        ("search_path", "app, \"$user\", public"), ("timezone", "'America/New_York'"), ("work_mem", "'16MB'"),
        ("statement_timeout", "'5min'"), ("datestyle", "'SQL, DMY'"), ("app.tenant", "'acme''s'"))]
    statements += [f"ALTER ROLE {roles['reader']} IN DATABASE {name} SET work_mem TO '8MB'",
                   f"COMMENT ON DATABASE {name} IS 'Orders of the shop; don''t drop'",
                   f"REVOKE ALL ON DATABASE {name} FROM PUBLIC",
                   f"GRANT CONNECT ON DATABASE {name} TO {roles['reader']}",
                   f"GRANT CONNECT, CREATE ON DATABASE {name} TO {roles['writer']} WITH GRANT OPTION"]
    for statement in statements:
        execute(admin, statement)
    dsn = pg.dsn(name)
    execute(dsn, "CREATE SCHEMA app; CREATE TABLE app.customers (id int PRIMARY KEY, name text);"
                    "INSERT INTO app.customers VALUES (1, 'M' || chr(252) || 'ller'), (2, 'Ren' || chr(233) || 'e')")
    yield dsn, roles
    execute(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def properties(dsn: str) -> dict[str, Any]:
    found = database_properties(dsn)
    found["settings"] = sorted((s["role"] or "", s["name"], s["value"]) for s in found["settings"])
    found["acl"] = sorted((g["grantee"] or "PUBLIC", g["privilege"], g["grantable"]) for g in found["acl"] or [])
    return found


def test_encoding_locale_settings_comment_owner_and_privileges_come_back(
        tmp_path: Path, shop: tuple[str, dict[str, str]], file_store: Store, target_server: LocalPostgres) -> None:
    source, roles = shop
    path, backup_id = backed_up(tmp_path, source, file_store, None)
    recorded = read_manifest(file_store, backup_id)["database"]["properties"]
    assert (recorded["encoding"], recorded["collate"], recorded["ctype"], recorded["provider"]) == \
        ("LATIN1", "C", "C", "libc")
    assert {s["name"]: s["value"] for s in recorded["settings"] if s["role"] is None} == SETTINGS
    assert recorded["owner"] == roles["owner"] and recorded["comment"] == "Orders of the shop; don't drop"

    name = fresh_name()
    plan = restore(path, target_server.dsn(name), "--dry-run")
    assert plan.code == 0, plan.output
    assert "database encoding LATIN1, LC_COLLATE C, LC_CTYPE C, provider libc, owner " + roles["owner"] in plan.stdout
    assert 'database setting search_path = app, "$user", public' in plan.stdout
    assert f"database setting for role {roles['reader']}: work_mem = 8MB" in plan.stdout
    assert "database comment \"Orders of the shop; don't drop\"" in plan.stdout
    assert f"CONNECT to {roles['reader']}" in plan.stdout
    assert f"step     CREATE DATABASE {name} (encoding LATIN1, LC_COLLATE C, LC_CTYPE C, provider libc)" in plan.stdout
    assert not database_exists(target_server, name)

    result = restore(path, target_server.dsn(name), "--yes", "--checksums")
    assert result.code == 0, result.output
    restored = target_server.dsn(name)
    assert properties(restored) == properties(source)
    assert query(restored, "SELECT name FROM app.customers ORDER BY id") == [("Müller",), ("Renée",)]
    assert "row counts and checksums: all 1 tables match the manifest" in result.stdout
    applied = re.search(r"(\d+) of (\d+) statements for its owner, settings, comment and privileges applied",
                        result.stdout)
    assert applied and applied.group(1) == applied.group(2) == "17", result.stdout  # owner, 7 settings, comment, 8 ACL

    add_verify_section(path, scratch={"work_dir": "/var/tmp"}, amcheck=False)
    drill = run_verify(path)
    checks = {(c["kind"], c["name"]): c for c in drill["checks"]}
    assert drill["result"] == "passed", drill["failed"]
    assert checks[("database", parse_dsn(source)["dbname"])]["status"] == "pass"


def run_verify(path: Path) -> dict[str, Any]:
    from tests.helpers import run_cli
    result = run_cli("--policies", str(path.parent), "verify", "app", "--json")
    assert result.code in (0, 4), result.output
    return json.loads(result.stdout)


def test_a_target_without_the_locale_is_refused_before_anything_is_written(
        tmp_path: Path, shop: tuple[str, dict[str, str]], file_store: Store, target_server: LocalPostgres) -> None:
    source, _ = shop
    path, backup_id = backed_up(tmp_path, source, file_store, None)

    def unknown_locale(document: dict[str, Any]) -> None:
        document["database"]["properties"].update(encoding="UTF8", collate="xx_XX.UTF-8", ctype="xx_XX.UTF-8")
    rewrite_manifest(file_store, backup_id, unknown_locale)
    name = fresh_name()
    result = restore(path, target_server.dsn(name), "--yes")
    assert result.code == 2, result.output
    assert (f"the target server cannot create database {name} with the source database's encoding UTF8, "
            "LC_COLLATE xx_XX.UTF-8, LC_CTYPE xx_XX.UTF-8, provider libc") in result.stderr
    assert 'locale "xx_XX.UTF-8"' in result.stderr and "locale -a" in result.stderr
    assert not database_exists(target_server, name)


def test_an_existing_database_with_another_encoding_is_refused(
        tmp_path: Path, shop: tuple[str, dict[str, str]], file_store: Store, target_server: LocalPostgres) -> None:
    source, _ = shop
    path, _ = backed_up(tmp_path, source, file_store, None)
    name = fresh_name()
    existing = target_server.create_database(name)  # the cluster's default: UTF8
    result = restore(path, existing, "--yes")
    assert result.code == 2, result.output
    assert f"the target database {name} differs from the source database in encoding: source LATIN1, target UTF8" \
        in result.stderr
    assert "restore into a new database" in result.stderr
    assert query(existing, "SELECT count(*) FROM pg_tables WHERE schemaname = 'app'") == [(0,)]


def test_a_stale_materialized_view_comes_back_refreshed_and_the_summary_says_so(
        tmp_path: Path, database: str, file_store: Store, target_server: LocalPostgres) -> None:
    execute(database, """
        CREATE TABLE public.orders (id int, amount numeric);
        INSERT INTO public.orders SELECT i, i * 10 FROM generate_series(1, 3) AS i;
        CREATE MATERIALIZED VIEW public.big_orders AS SELECT id, amount FROM public.orders WHERE amount > 5;
        CREATE MATERIALIZED VIEW public.fresh_orders AS SELECT count(*) AS n FROM public.orders;
        CREATE MATERIALIZED VIEW public.never_filled AS SELECT id FROM public.orders WITH NO DATA;
        INSERT INTO public.orders VALUES (4, 40), (5, 50);  -- big_orders is stale now
    """)
    path, backup_id = backed_up(tmp_path, database, file_store, None)
    recorded = {v["name"]: v for v in read_manifest(file_store, backup_id)["content"]["materialized_views"]}
    assert recorded == {
        "big_orders": {"schema": "public", "name": "big_orders", "populated": True, "rows": 3},
        "fresh_orders": {"schema": "public", "name": "fresh_orders", "populated": True, "rows": 1},
        "never_filled": {"schema": "public", "name": "never_filled", "populated": False, "rows": None}}

    name = fresh_name()
    result = restore(path, target_server.dsn(name), "--yes")
    assert result.code == 0, result.output
    assert ("materialized views: 2 refreshed by the restore (public.big_orders, public.fresh_orders); "
            "1 with another row count than in the backup") in result.stdout
    assert ("note     materialized view public.big_orders was refreshed by the restore and its row count changed "
            "from 3 to 5") in result.stdout
    assert "note     materialized view public.never_filled is not populated, as in the backup" in result.stdout
    assert "fresh_orders was refreshed" not in result.stdout
    assert query(target_server.dsn(name), "SELECT count(*) FROM public.big_orders") == [(5,)]

    add_verify_section(path, scratch={"work_dir": "/var/tmp"}, amcheck=False)
    drill = run_verify(path)
    assert drill["result"] == "passed", drill["failed"]
    checks = {(c["kind"], c["name"]): c for c in drill["checks"]}
    stale = checks[("matview", "public.big_orders")]
    assert stale["status"] == "pass" and stale["expected"]["rows"] == 3 and stale["actual"]["rows"] == 5
    assert "row count changed from 3 to 5" in stale["detail"]
    assert checks[("matview", "public.never_filled")]["actual"] == {"populated": False, "rows": None}


def test_a_manifest_from_before_properties_and_v2_checksums_still_restores_and_verifies(
        tmp_path: Path, database: str, file_store: Store, target_server: LocalPostgres) -> None:
    execute(database, "CREATE TABLE public.items (z text, a int); INSERT INTO public.items VALUES ('x', 1), ('y', 2);"
                         "SELECT lo_from_bytea(0, 'blob')")
    path, backup_id = backed_up(tmp_path, database, file_store, None)
    old = content_stats(database, method=CHECKSUM_V1)
    old_tables = {s.table.qualified_name: s for s in old.tables}

    def as_an_older_archiver_wrote_it(document: dict[str, Any]) -> None:
        document["content"]["method"] = CHECKSUM_V1
        for entry in document["content"]["tables"]:
            entry["checksum"] = old_tables[f"{entry['schema']}.{entry['name']}"].checksum
        document["content"]["large_objects"]["checksum"] = old.large_objects.checksum
        del document["content"]["materialized_views"]
        del document["database"]["properties"], document["database"]["extension_schemas"]
    document = rewrite_manifest(file_store, backup_id, as_an_older_archiver_wrote_it)
    assert document["content"]["tables"][0]["checksum"] != content_stats(database).tables[0].checksum

    name = fresh_name()
    result = restore(path, target_server.dsn(name), "--yes", "--checksums")
    assert result.code == 0, result.output
    assert "row counts and checksums: all 1 tables match the manifest" in result.stdout
    assert "the backup records no database properties" in result.stderr  # the plan

    add_verify_section(path, scratch={"work_dir": "/var/tmp"}, amcheck=False)
    drill = run_verify(path)
    assert drill["result"] == "passed", drill["failed"]
    checks = {(c["kind"], c["name"]): c for c in drill["checks"]}
    assert checks[("table", "public.items")]["actual"]["checksum"] == old_tables["public.items"].checksum
    assert checks[("large_objects", "pg_largeobject")]["actual"]["checksum"] == old.large_objects.checksum
    assert not any(kind == "database" for kind, _ in checks)
    assert read_json(file_store, verification_key(backup_id))["result"] == "passed"
