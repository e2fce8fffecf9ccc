"""Nothing trusted: functions, operators and casts a non-superuser planted are never run by archiver.

A role that owns a schema ``evil`` and can CREATE in ``public`` plants look-alikes of what
archiver calls (hash functions, count/sum/min/max, octet_length, now(), =, casts of its own
types) and puts its schema first on the database's and the role's search_path, with
pg_catalog after it, so that even an identical signature would win. Each planted function logs
its call: into ``evil.calls`` where it may write, and as a file in a log directory inside a
read-only transaction (a backup's snapshot, a check), where it can only leave a trace by
COPY ... TO, which it may do since it runs with the caller's (a superuser's) privileges.

Then backup, verify (local scratch, pg_amcheck, one SQL check), restore into a new database,
archive, retention (--dry-run and real) and status run through the real CLI. The only planted
call allowed is the one the policy's SQL check makes itself: that check is the operator's own
SQL and runs with the role's search_path, in a session of its own (application_name
``archiver check``). Archive and retention are exercised on a small range-partitioned table
with varchar, domain and enum columns; their logic is not what is tested here.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from archiver.pg.arrow import arrow_batches
from archiver.pg.connect import connect, execute, query, safe_options
from archiver.pg.dsn import dsn_with, parse_dsn
from archiver.pg.scratch import LocalPostgres
from tests.helpers import run_cli

TABLES = ("things", "base", "base_child", "docs")

PLANT = """
CREATE SCHEMA evil AUTHORIZATION {evil};
GRANT CREATE ON SCHEMA public TO {evil};
SET ROLE {evil};
CREATE TABLE evil.calls (fn text, app text);
GRANT INSERT, SELECT ON evil.calls TO PUBLIC;
CREATE FUNCTION evil.log_call(fn text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO evil.calls VALUES (fn, pg_catalog.current_setting('application_name'));
EXCEPTION WHEN OTHERS THEN  -- a read-only transaction: leave a file instead
    EXECUTE pg_catalog.format('COPY (SELECT 1) TO %L', pg_catalog.concat('{log_dir}/', fn, ' @ ',
        pg_catalog.current_setting('application_name'), ' ', pg_catalog.gen_random_uuid()));
END $$;

CREATE TYPE evil.mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN evil.positive AS numeric CHECK (VALUE > 0);
CREATE TABLE public.things (id int PRIMARY KEY, name varchar(40), mood evil.mood, amount evil.positive,
                            created timestamptz);
CREATE TABLE public.base (id int, label varchar(20));
CREATE TABLE public.base_child (extra int) INHERITS (public.base);
ALTER TABLE public.base ADD COLUMN added date;
CREATE TABLE public.docs (id int, doc json);
CREATE TABLE public.readings (recorded_at timestamptz NOT NULL, name varchar(20), amount evil.positive,
                              mood evil.mood) PARTITION BY RANGE (recorded_at);
CREATE MATERIALIZED VIEW public.moods AS SELECT mood, pg_catalog.count(*) AS n FROM public.things GROUP BY mood;

-- hash functions: for each table's row type, and the exact signatures
CREATE FUNCTION evil.hash_record_extended(record, bigint) RETURNS bigint LANGUAGE plpgsql AS
    $$ BEGIN PERFORM evil.log_call('hash_record_extended(record)'); RETURN 0; END $$;
{row_type_hashes}
CREATE FUNCTION evil.hashtextextended(text, bigint) RETURNS bigint LANGUAGE plpgsql AS
    $$ BEGIN PERFORM evil.log_call('hashtextextended(text, bigint)'); RETURN 0; END $$;
CREATE FUNCTION evil.hashtextextended(text, integer) RETURNS bigint LANGUAGE plpgsql AS
    $$ BEGIN PERFORM evil.log_call('hashtextextended(text, integer)'); RETURN 0; END $$;
CREATE FUNCTION evil.octet_length(varchar) RETURNS integer LANGUAGE plpgsql AS
    $$ BEGIN PERFORM evil.log_call('octet_length(varchar)'); RETURN 0; END $$;
CREATE FUNCTION evil.octet_length(text) RETURNS integer LANGUAGE plpgsql AS
    $$ BEGIN PERFORM evil.log_call('octet_length(text)'); RETURN 0; END $$;
CREATE FUNCTION evil.md5(bytea) RETURNS text LANGUAGE plpgsql AS
    $$ BEGIN PERFORM evil.log_call('md5(bytea)'); RETURN ''; END $$;
CREATE FUNCTION evil.now() RETURNS timestamptz LANGUAGE plpgsql AS
    $$ BEGIN PERFORM evil.log_call('now()'); RETURN pg_catalog.clock_timestamp(); END $$;
CREATE FUNCTION evil.current_database() RETURNS name LANGUAGE plpgsql AS
    $$ BEGIN PERFORM evil.log_call('current_database()'); RETURN pg_catalog.current_database(); END $$;

-- aggregates
CREATE FUNCTION evil.count_step(bigint) RETURNS bigint LANGUAGE plpgsql AS
    $$ BEGIN PERFORM evil.log_call('count'); RETURN pg_catalog.int8inc($1); END $$;
CREATE FUNCTION evil.count_any_step(bigint, anyelement) RETURNS bigint LANGUAGE plpgsql AS
    $$ BEGIN PERFORM evil.log_call('count(any)'); RETURN pg_catalog.int8inc($1); END $$;
CREATE AGGREGATE evil.count(*) (SFUNC = evil.count_step, STYPE = bigint, INITCOND = '0');
CREATE AGGREGATE evil.count(anyelement) (SFUNC = evil.count_any_step, STYPE = bigint, INITCOND = '0');
CREATE FUNCTION evil.sum_step(numeric, numeric) RETURNS numeric LANGUAGE plpgsql AS
    $$ BEGIN PERFORM evil.log_call('sum(numeric)'); RETURN pg_catalog.numeric_add(COALESCE($1, 0), $2); END $$;
CREATE AGGREGATE evil.sum(numeric) (SFUNC = evil.sum_step, STYPE = numeric);
CREATE FUNCTION evil.sum_bigint_step(numeric, bigint) RETURNS numeric LANGUAGE plpgsql AS
    $$ BEGIN PERFORM evil.log_call('sum(bigint)'); RETURN 0; END $$;
CREATE AGGREGATE evil.sum(bigint) (SFUNC = evil.sum_bigint_step, STYPE = numeric);
CREATE FUNCTION evil.max_step(timestamptz, timestamptz) RETURNS timestamptz LANGUAGE plpgsql AS
    $$ BEGIN PERFORM evil.log_call('max(timestamptz)'); RETURN $2; END $$;
CREATE AGGREGATE evil.max(timestamptz) (SFUNC = evil.max_step, STYPE = timestamptz);
CREATE AGGREGATE evil.min(timestamptz) (SFUNC = evil.max_step, STYPE = timestamptz);

-- operators
CREATE FUNCTION evil.varchar_eq(varchar, varchar) RETURNS boolean LANGUAGE plpgsql AS
    $$ BEGIN PERFORM evil.log_call('=(varchar, varchar)'); RETURN pg_catalog.texteq($1, $2); END $$;
CREATE OPERATOR evil.= (FUNCTION = evil.varchar_eq, LEFTARG = varchar, RIGHTARG = varchar);
CREATE FUNCTION evil.name_text_eq(name, text) RETURNS boolean LANGUAGE plpgsql AS
    $$ BEGIN PERFORM evil.log_call('=(name, text)'); RETURN pg_catalog.nameeqtext($1, $2); END $$;
CREATE OPERATOR evil.= (FUNCTION = evil.name_text_eq, LEFTARG = name, RIGHTARG = text);
CREATE FUNCTION evil.oid_int_eq(oid, integer) RETURNS boolean LANGUAGE plpgsql AS
    $$ BEGIN PERFORM evil.log_call('=(oid, integer)'); RETURN pg_catalog.oideq($1, $2::oid); END $$;
CREATE OPERATOR evil.= (FUNCTION = evil.oid_int_eq, LEFTARG = oid, RIGHTARG = integer);

-- casts of the role's own types (casts are no schema objects: no search_path keeps them out)
CREATE FUNCTION evil.mood_text(evil.mood) RETURNS text LANGUAGE plpgsql AS
    $$ BEGIN PERFORM evil.log_call('cast(mood AS text)'); RETURN 'ok'; END $$;
CREATE CAST (evil.mood AS text) WITH FUNCTION evil.mood_text(evil.mood);
CREATE FUNCTION evil.things_text(public.things) RETURNS text LANGUAGE plpgsql AS
    $$ BEGIN PERFORM evil.log_call('cast(things AS text)'); RETURN ''; END $$;
CREATE CAST (public.things AS text) WITH FUNCTION evil.things_text(public.things);
RESET ROLE;
"""

DATA = """
INSERT INTO public.things SELECT i, 'thing ' || i, (ARRAY['sad', 'ok', 'happy'])[i % 3 + 1]::evil.mood, i * 1.5,
    '2026-01-01'::timestamptz + i * interval '1 hour' FROM generate_series(1, 30) AS i;
INSERT INTO public.base VALUES (1, 'parent', '2026-01-01');
INSERT INTO public.base_child (id, label, extra, added) SELECT i, 'child', i, DATE '2026-01-01' + i
    FROM generate_series(1, 20) AS i;
INSERT INTO public.docs SELECT i, json_build_object('n', i) FROM generate_series(1, 10) AS i;
REFRESH MATERIALIZED VIEW public.moods;
SELECT lo_from_bytea(0, 'a large object');
"""


def readings_sql(evil: str) -> str:
    """Day partitions 100, 80, 40 and 5 days old (owned by the planting role), with rows."""
    statements = [f"SET ROLE {evil}"]
    for age in (100, 80, 40, 5):
        statements.append(f"CREATE TABLE public.readings_d{age} PARTITION OF public.readings FOR VALUES FROM "
                          f"((current_date - {age})::timestamptz) TO ((current_date - {age} + 1)::timestamptz)")
        statements.append(f"INSERT INTO public.readings SELECT (current_date - {age})::timestamptz + i * interval "
                          f"'1 hour', 'r' || i, i + 1, 'happy' FROM generate_series(0, 9) AS i")
    statements.append("RESET ROLE")
    return ";\n".join(statements)


@pytest.fixture
def log_dir() -> Iterator[Path]:
    """Where a planted function called in a read-only transaction leaves its trace (the server's user writes it)."""
    path = Path(tempfile.mkdtemp(prefix="archiver-planted-", dir="/var/tmp"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def hostile(pg: LocalPostgres, log_dir: Path) -> Iterator[tuple[str, str]]:
    """A database where a non-superuser planted look-alikes and put its schema first; (dsn, database name)."""
    suffix = uuid.uuid4().hex[:8]
    name, evil = f"hostile_{suffix}", f"evil_{suffix}"
    admin = pg.dsn()
    execute(admin, f"CREATE ROLE {evil} NOLOGIN")
    dsn = pg.create_database(name)
    row_type_hashes = "\n".join(
        f"CREATE FUNCTION evil.hash_record_extended(public.{table}, integer) RETURNS bigint LANGUAGE plpgsql AS "
        f"$$ BEGIN PERFORM evil.log_call('hash_record_extended({table})'); RETURN 0; END $$;" for table in TABLES)
    plant = PLANT.replace("{evil}", evil).replace("{log_dir}", str(log_dir))
    before, after = plant.split("-- hash functions", 1)
    execute(dsn, before + "-- hash functions" + after.replace("{row_type_hashes}", row_type_hashes))
    execute(dsn, DATA + readings_sql(evil))
    path = "evil, pg_catalog, public"
    execute(admin, f"ALTER DATABASE {name} SET search_path = {path}")
    execute(admin, f"ALTER ROLE postgres IN DATABASE {name} SET search_path = {path}")
    assert _planted_calls_visible(dsn), "the planted functions must win for a session with the role's search_path"
    yield dsn, name
    execute(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _planted_calls_visible(dsn: str) -> bool:
    """A session with the role's own search_path reaches the planted count(*): the trap is armed."""
    query(dsn, "SELECT count(*) FROM public.things")
    with connect(dsn) as conn:
        found = conn.execute("SELECT pg_catalog.count(*) FROM evil.calls").fetchone()
        conn.execute("TRUNCATE evil.calls")
    return bool(found and found[0])


def calls(dsn: str) -> list[tuple[str, str]]:
    with connect(dsn) as conn:
        return [(str(fn), str(app)) for fn, app in conn.execute("SELECT fn, app FROM evil.calls").fetchall()]


def write_policy(tmp_path: Path, dsn: str) -> Path:
    directory = tmp_path / "policies"
    directory.mkdir()
    document = {
        "database": {"dsn": dsn},
        "storage": {"url": f"file://{tmp_path}/store"},
        "backup": {"schedule": "0 2 * * *", "retention": {"keep_last": 3}},
        "verify": {"schedule": "0 5 * * 1", "scratch": {"work_dir": "/var/tmp"},
                   "checks": [{"name": "things", "sql": "SELECT count(*) FROM things", "expect": "== 30"}]},
        "archive": {"schedule": "30 1 * * *", "tables": [{"table": "public.readings", "archive_after": "30d",
                                                          "drop_after": "50d"}]},
    }
    (directory / "app.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    return directory


def test_no_planted_function_operator_or_cast_is_ever_called(
        tmp_path: Path, pg: LocalPostgres, hostile: tuple[str, str], log_dir: Path) -> None:
    source, name = hostile
    policies = str(write_policy(tmp_path, source))

    backup = run_cli("--policies", policies, "backup", "app")
    assert backup.code == 0, backup.output
    drill = run_cli("--policies", policies, "verify", "app")
    assert drill.code == 0, drill.output
    assert "PASS  amcheck       pg_amcheck" in drill.stdout and "PASS  sql           things: 30" in drill.stdout
    assert "PASS  database" in drill.stdout  # the restored database has the hostile search_path setting too

    target = pg.dsn(f"restored_{uuid.uuid4().hex[:8]}")
    restored = run_cli("--policies", policies, "restore", "app", "--target", target, "--yes", "--checksums")
    assert restored.code == 0, restored.output
    assert "row counts and checksums: all 9 tables match the manifest" in restored.stdout
    assert query(target, "SELECT pg_catalog.current_setting('search_path')") == [("evil, pg_catalog, public",)]

    for argv in (["archive", "app"], ["retention", "app", "--dry-run"], ["retention", "app"], ["status"]):
        result = run_cli("--policies", policies, *argv)
        assert result.code == 0, (argv, result.output)
    with connect(source) as conn:
        left = conn.execute("SELECT pg_catalog.count(*) FROM ONLY public.readings_d5").fetchone()
        gone = conn.execute("SELECT pg_catalog.to_regclass('public.readings_d100') IS NULL").fetchone()
    assert left == (10,) and gone == (True,)  # archive and retention did their work

    assert calls(source) == []
    assert calls(target) == []
    traces = sorted(os.listdir(log_dir))
    # the policy's own check ran with the role's search_path: its count(*) is the planted one
    assert traces and all(trace.startswith("count @ archiver check ") for trace in traces), traces


def test_adbc_sessions_get_the_safe_search_path_and_keep_the_dsns_own_options(
        database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    execute(database, "ALTER ROLE postgres IN DATABASE " + parse_dsn(database)["dbname"]
               + " SET search_path = public")
    with_options = dsn_with(database, options="-c statement_timeout=5s")
    assert safe_options(with_options) == "-c statement_timeout=5s -c search_path=pg_catalog,pg_temp"
    sql = "SELECT current_setting('search_path') AS path, current_setting('statement_timeout') AS timeout"
    rows = [batch.to_pylist() for batch in arrow_batches(with_options, sql)]
    assert rows == [[{"path": "pg_catalog, pg_temp", "timeout": "5s"}]]

    monkeypatch.setenv("PGOPTIONS", "-c lock_timeout=7s")
    assert safe_options(database) == "-c lock_timeout=7s -c search_path=pg_catalog,pg_temp"
    sql = "SELECT current_setting('search_path') AS path, current_setting('lock_timeout') AS timeout"
    assert [batch.to_pylist() for batch in arrow_batches(database, sql)] == [[{"path": "pg_catalog, pg_temp",
                                                                                 "timeout": "7s"}]]
    with connect(database) as conn:  # psycopg sessions: pinned after connecting, PGOPTIONS untouched
        assert conn.execute(sql).fetchone() == ("pg_catalog, pg_temp", "7s")
    assert query(database, "SELECT current_setting('search_path')") == [("public",)]  # the operator's own SQL
