"""The cold tier as a data lake, read by real readers (issue 13, items 2, 3 and 5).

pyarrow.dataset (``partitioning="hive"``, default ``ignore_prefixes``), DuckDB
(``read_parquet('.../**/*.parquet', hive_partitioning=true)`` and the view ``archiver cold NAME
schema`` prints) and polars (``scan_parquet(..., hive_partitioning=True)``) each read the whole
archived table, and every value is compared with the source database. The tables have columns
named ``date``, ``day``, ``year`` and ``month`` (which must come back with their own values), ranges
that span several UTC days (one file per day; filtering on the partition key for day X gives
exactly the rows of day X), a hypertable with compressed and uncompressed chunks and space
partitions, native partitions by timestamptz, timestamp, date and integer time, in a database
whose time zone is not UTC.
"""

from __future__ import annotations

import collections
import json
import uuid
from datetime import UTC, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from archiver.coldtier.archive import run_archive
from archiver.coldtier.engines import render
from archiver.coldtier.lake import lake_tables
from archiver.coldtier.retention import run_retention
from archiver.errors import UsageError
from archiver.policy.schema import ParquetConfig, StorageConfig
from archiver.restore.archive import run_restore_archive
from archiver.storage.backends import open_store
from tests.coldtier_helpers import make_policy, manifests, sql, table
from tests.helpers import run_cli

SHADOWING = '"date" date, "day" int, "year" int, "month" text'
VALUES = "value double precision, price numeric(12,3), tag uuid, note text, flag bool, at_time time, meta jsonb"


def _setup(dsn: str) -> None:
    dbname = dsn.split("dbname=")[1].split()[0]
    sql(dsn, f"ALTER DATABASE {dbname} SET timezone = 'Asia/Kolkata'")


HYPERTABLE = f"""
CREATE EXTENSION IF NOT EXISTS timescaledb;
CREATE TABLE lake_metrics (ts timestamptz NOT NULL, device int NOT NULL, {SHADOWING}, {VALUES});
SELECT create_hypertable('lake_metrics', 'ts', chunk_time_interval => interval '3 days');
SELECT add_dimension('lake_metrics', 'device', number_partitions => 2);
INSERT INTO lake_metrics
SELECT t, g % 4, (t AT TIME ZONE 'UTC')::date + 3, g % 28 + 1, 2000 + g % 30, 'm' || (g % 12), g * 0.5, g * 1.125,
       md5(g::text)::uuid, CASE WHEN g % 7 = 0 THEN NULL ELSE 'note ' || g END, g % 2 = 0,
       make_time(g % 24, g % 60, 1.5), CASE WHEN g % 5 = 0 THEN jsonb_build_object('g', g) END
FROM generate_series(1, 40 * 24 * 60 / 97) AS g, LATERAL (SELECT now() - g * interval '97 minutes' AS t) AS x;
ALTER TABLE lake_metrics SET (timescaledb.compress, timescaledb.compress_segmentby = 'device');
SELECT count(compress_chunk(c)) FROM show_chunks('lake_metrics', older_than => now() - interval '25 days') AS c;
"""

NATIVE = f"""
CREATE TABLE lake_events (ts timestamptz NOT NULL, id bigint, {SHADOWING}, {VALUES}) PARTITION BY RANGE (ts);
DO $$
DECLARE d date;
BEGIN
  FOR d IN SELECT generate_series(current_date - 40, current_date + 1, interval '1 day')::date LOOP
    EXECUTE format('CREATE TABLE lake_events_p%s PARTITION OF lake_events FOR VALUES FROM (%L) TO (%L)',
                   to_char(d, 'YYYYMMDD'), d::timestamptz, (d + 1)::timestamptz);  -- Asia/Kolkata days
  END LOOP;
END $$;
INSERT INTO lake_events
SELECT t, g, (t AT TIME ZONE 'UTC')::date - 1, g % 31, 1990 + g % 40, to_char(t, 'Mon'), g * 0.25, g * 2.5,
       md5('e' || g)::uuid, 'event ' || g, g % 3 = 0, make_time(g % 24, 30, 0), jsonb_build_object('e', g)
FROM generate_series(1, 40 * 24 * 60 / 53) AS g, LATERAL (SELECT now() - g * interval '53 minutes' AS t) AS x;
CREATE TABLE lake_local (at timestamp NOT NULL, id int, "day" int) PARTITION BY RANGE (at);
CREATE TABLE lake_dates (d date NOT NULL, id int, "month" int) PARTITION BY RANGE (d);
CREATE TABLE lake_ticks (t bigint NOT NULL, id int, "year" int) PARTITION BY RANGE (t);
DO $$
DECLARE k int;
BEGIN
  FOR k IN 0..20 LOOP
    EXECUTE format('CREATE TABLE lake_local_%s PARTITION OF lake_local FOR VALUES FROM (%L) TO (%L)', k,
                   date_trunc('day', localtimestamp) - (42 - 2 * k) * interval '1 day' + interval '18 hours',
                   date_trunc('day', localtimestamp) - (40 - 2 * k) * interval '1 day' + interval '18 hours');
    EXECUTE format('CREATE TABLE lake_dates_%s PARTITION OF lake_dates FOR VALUES FROM (%L) TO (%L)', k,
                   current_date - 147 + 7 * k, current_date - 140 + 7 * k);
    EXECUTE format('CREATE TABLE lake_ticks_%s PARTITION OF lake_ticks FOR VALUES FROM (%s) TO (%s)', k,
                   extract(epoch FROM now())::bigint / 86400 * 86400 - (42 - 2 * k) * 86400 + 43200,
                   extract(epoch FROM now())::bigint / 86400 * 86400 - (40 - 2 * k) * 86400 + 43200);
  END LOOP;
END $$;
INSERT INTO lake_local SELECT date_trunc('day', localtimestamp) - interval '41 days' + g * interval '71 minutes', g, g % 31
  FROM generate_series(1, 38 * 24 * 60 / 71) AS g;
INSERT INTO lake_dates SELECT current_date - 146 + g / 3, g, g % 12 FROM generate_series(1, 400) AS g;
INSERT INTO lake_ticks SELECT extract(epoch FROM now())::bigint / 86400 * 86400 - 41 * 86400 + g * 3001, g, g % 50
  FROM generate_series(1, 38 * 86400 / 3001) AS g;
"""

# table -> (time column, the day a row belongs to, in SQL)
DAYS = {"public.lake_metrics": "(ts AT TIME ZONE 'UTC')::date", "public.lake_events": "(ts AT TIME ZONE 'UTC')::date",
        "public.lake_local": "at::date", "public.lake_dates": "d",
        "public.lake_ticks": "(DATE '1970-01-01' + (t / 86400)::int)"}


def normal(value: Any) -> Any:
    """One spelling per value whichever reader returned it."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes) and len(value) == 16:
        return str(uuid.UUID(bytes=value))
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, str) and value.startswith("{"):
        return json.dumps(json.loads(value), sort_keys=True)
    if isinstance(value, Decimal):
        return value.normalize()
    return value


def database_rows(dsn: str, name: str, columns: list[str], where: str) -> collections.Counter[tuple[Any, ...]]:
    listed = ", ".join(f'"{column}"' for column in columns)
    return collections.Counter(tuple(normal(v) for v in row) for row in sql(dsn, f"SELECT {listed} FROM {name} {where}"))


def reader_rows(records: list[dict[str, Any]], columns: list[str]) -> collections.Counter[tuple[Any, ...]]:
    return collections.Counter(tuple(normal(record[column]) for column in columns) for record in records)


@pytest.fixture
def lake(database: str, tmp_path: Path) -> tuple[str, StorageConfig, Path]:
    storage = StorageConfig(url=f"file://{tmp_path}/store")
    return database, storage, tmp_path / "store"


def columns_of(dsn: str, name: str) -> list[str]:
    schema, relation = name.split(".")
    return [row[0] for row in sql(dsn, "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
                                       "AND NOT attisdropped ORDER BY attnum", (f"{schema}.{relation}",))]


def check_readers(dsn: str, root: Path, name: str, archived_where: str) -> dict[str, int]:
    """Every reader sees exactly the archived rows of ``name``, every value as in the database, and
    the partition key of each row is its UTC day."""
    store = open_store(f"file://{root}")
    (entry,), _ = lake_tables(store, table=name)
    directory = Path(entry.location)
    columns = columns_of(dsn, name)
    expected = database_rows(dsn, name, columns, archived_where)
    seen: dict[str, collections.Counter[tuple[Any, ...]]] = {}
    seen["pyarrow"] = reader_rows(ds.dataset(str(directory), partitioning="hive").to_table().to_pylist(), columns)
    glob = f"{directory}/**/*.parquet"
    seen["duckdb"] = reader_rows(duckdb.sql(f"SELECT * FROM read_parquet('{glob}', hive_partitioning = true)")
                                 .to_arrow_table().to_pylist(), columns)
    seen["polars"] = reader_rows(pl.scan_parquet(glob, hive_partitioning=True).collect().to_dicts(), columns)
    connection = duckdb.connect()
    connection.execute(render(lake_tables(store, table=name, with_schema=True)[0], "duckdb"))
    seen["duckdb view"] = reader_rows(connection.sql(f"SELECT * FROM {name}").to_arrow_table().to_pylist(), columns)
    for reader, rows in seen.items():
        assert rows == expected, f"{reader} on {name}: {sum(rows.values())} rows, {sum(expected.values())} archived; " \
                                 f"differ: {list((rows - expected).items())[:2]} / {list((expected - rows).items())[:2]}"
    by_day = collections.Counter(row[0] for row in sql(dsn, f"SELECT {DAYS[name]} FROM {name} {archived_where}"))
    partitions = collections.Counter(connection.sql(f"SELECT dt FROM {name}").fetchall())
    assert {day: count for (day,), count in partitions.items()} == by_day, "dt is the rows' own UTC day"
    day = sorted(by_day)[len(by_day) // 2]
    filtered = ds.dataset(str(directory), partitioning="hive").to_table(filter=ds.field("dt") == day.isoformat())
    assert filtered.num_rows == by_day[day], f"WHERE dt = '{day}' gives exactly that day's rows"
    return {"files": len(entry.files), "rows": sum(expected.values()), "days": len(by_day)}


@pytest.mark.timescaledb
def test_every_reader_sees_every_archived_row_of_a_hypertable_with_its_own_columns(lake: Any) -> None:
    dsn, storage, root = lake
    _setup(dsn)
    sql(dsn, HYPERTABLE)
    policy = make_policy(dsn, storage, [table("public.lake_metrics", archive_after=10)])
    result = run_archive(policy)
    assert result.status == "ok" and result.metrics["chunks_archived"] >= 16, result.lines
    documents = manifests(open_store(storage)).values()
    assert {d["chunk"]["compressed"] for d in documents} == {True, False}
    assert max(len(d["objects"]) for d in documents) == 3, "a 3-day chunk is written as one file per UTC day"
    assert len({d["identity"]["stem"] for d in documents}) == len(documents) and any("_s" in d["identity"]["stem"]
                                                                                     for d in documents)
    boundary = max(d["range"]["end_utc"] for d in documents)
    found = check_readers(dsn, root, "public.lake_metrics", f"WHERE ts < '{boundary}'")
    assert found["files"] > len(documents)


def test_every_reader_sees_every_archived_row_of_native_partitions_by_each_time_type(lake: Any) -> None:
    dsn, storage, root = lake
    _setup(dsn)
    sql(dsn, NATIVE)
    tables = [table("public.lake_events", archive_after=5), table("public.lake_local", archive_after=5),
              table("public.lake_dates", archive_after=5), table("public.lake_ticks", archive_after=5, time_unit="s")]
    policy = make_policy(dsn, storage, tables)
    result = run_archive(policy)
    assert result.status == "ok", result.lines
    documents = list(manifests(open_store(storage)).values())
    for name in ("public.lake_events", "public.lake_local", "public.lake_dates", "public.lake_ticks"):
        mine = [d for d in documents if d["table"] == name]
        assert mine and all(len(d["objects"]) >= 2 for d in mine if d["rows"] > 200), f"{name}: ranges span days"
        ends = [d["range"]["end"] for d in mine]
        column = {"public.lake_events": "ts", "public.lake_local": "at", "public.lake_dates": "d",
                  "public.lake_ticks": "t"}[name]
        boundary = max(ends)
        check_readers(dsn, root, name, f'WHERE "{column}" < {boundary if isinstance(boundary, int) else repr(boundary)}')
    assert run_retention(policy).status == "ok"


def test_a_partition_key_that_is_a_column_name_is_refused_and_another_name_works(lake: Any, tmp_path: Path) -> None:
    dsn, storage, root = lake
    sql(dsn, "CREATE TABLE lake_clash (ts timestamptz NOT NULL, dt text, v int) PARTITION BY RANGE (ts)")
    sql(dsn, "CREATE TABLE lake_clash_old PARTITION OF lake_clash FOR VALUES FROM ('2020-01-01') TO ('2020-01-02')")
    sql(dsn, "INSERT INTO lake_clash VALUES ('2020-01-01 12:00+00', 'their own', 1)")
    with pytest.raises(UsageError, match="column 'dt' has the name of the cold tier's partition key") as raised:
        run_archive(make_policy(dsn, storage, [table("public.lake_clash", archive_after=5)]))
    assert "archive.tables[].partition_key" in (raised.value.hint or "")
    renamed = make_policy(dsn, storage, [table("public.lake_clash", archive_after=5, partition_key="archive_day")])
    assert run_archive(renamed).status == "ok"
    (key,) = [str(path.relative_to(root)) for path in root.rglob("*.parquet")]
    assert "/archive_day=2020-01-01/" in key
    read = ds.dataset(str(root / "archive"), partitioning="hive").to_table().to_pylist()
    assert [(row["dt"], row["archive_day"]) for row in read] == [("their own", "2020-01-01")]
    policy_file = tmp_path / "clash.yaml"
    policy_file.write_text("database: {dsn: 'host=x dbname=y'}\nstorage: {url: 'file:///tmp/x'}\narchive:\n"
                           "  schedule: '30 1 * * *'\n  tables:\n    - {table: public.t, archive_after: 7d, "
                           "time_column: day_key, partition_key: day_key}\n")
    checked = run_cli("policy", "validate", str(policy_file))
    assert checked.code == 2 and "archive.tables[0].partition_key" in checked.output
    assert "is the name of a column of public.t" in checked.output


PORTABLE = """
CREATE TYPE lake_mood AS ENUM ('calm', 'busy');
CREATE TABLE lake_portable (ts timestamptz NOT NULL, id int, tag uuid, at_time time, span interval, mood lake_mood,
                            tags uuid[], price numeric) PARTITION BY RANGE (ts);
CREATE TABLE lake_portable_a PARTITION OF lake_portable FOR VALUES FROM ('2020-01-01') TO ('2020-01-03');
INSERT INTO lake_portable
SELECT '2020-01-01 00:00+00'::timestamptz + g * interval '97 minutes', g, md5(g::text)::uuid,
       CASE WHEN g = 3 THEN '24:00:00'::time ELSE make_time(g % 24, g % 60, g % 60 + 0.25) END,
       CASE g % 4 WHEN 0 THEN NULL WHEN 1 THEN make_interval(years => 1, months => -2, days => 3, secs => -4.5)
                  ELSE make_interval(days => g, secs => g * 0.001) END,
       (ARRAY['calm', 'busy'])[1 + g % 2]::lake_mood, ARRAY[md5(g::text)::uuid, NULL], g * 0.001
FROM generate_series(1, 29) AS g;
"""


def test_the_portable_profile_has_no_uuid_or_time_types_and_restores_every_value(lake: Any) -> None:
    dsn, storage, root = lake
    sql(dsn, PORTABLE)
    before = sql(dsn, "SELECT ts, id, tag, at_time::text, span::text, mood::text, tags::text, price FROM lake_portable "
                      "ORDER BY id")
    entry = table("public.lake_portable", archive_after=5, drop_after=10, parquet=ParquetConfig(profile="portable"))
    policy = make_policy(dsn, storage, [entry])
    assert run_archive(policy).status == "ok"
    (document,) = manifests(open_store(storage)).values()
    assert document["parquet"]["profile"] == "portable" and len(document["objects"]) == 2
    assert {column["name"]: column.get("encoding") for column in document["parquet"]["columns"]} == {
        "ts": None, "id": None, "tag": "uuid_text", "at_time": "time_micros", "span": "interval_iso8601",
        "mood": "enum_text", "tags": "array_text", "price": None}
    for path in root.rglob("*.parquet"):
        schema = pq.ParquetFile(path).schema
        logical = {schema.column(i).name: str(schema.column(i).logical_type) for i in range(len(schema))}
        assert not any(text == "UUID" or text.startswith("Time(") for text in logical.values()), logical
    read = {row["id"]: row for row in ds.dataset(str(root / "archive"), partitioning="hive").to_table().to_pylist()}
    assert read[1]["tag"] == str(before[0][2]) and read[3]["at_time"] == 86_400_000_000
    assert read[1]["span"] == "P0Y10M3DT0H0M-4.5S" and read[2]["mood"] == "calm"
    assert read[5]["at_time"] == (time(5, 5, 5, 250000).hour * 3600 + 5 * 60 + 5.25) * 1_000_000
    assert run_retention(policy).metrics["chunks_dropped"] == 1
    sql(dsn, "CREATE TABLE lake_portable_a PARTITION OF lake_portable FOR VALUES FROM ('2020-01-01') TO ('2020-01-03')")
    back = run_restore_archive(policy, table="lake_portable", start="2020-01-01", end="2020-01-03")
    assert back.status == "ok" and back.metrics["rows"] == 29, back.lines
    after = sql(dsn, "SELECT ts, id, tag, at_time::text, span::text, mood::text, tags::text, price FROM lake_portable "
                     "ORDER BY id")
    assert after == before


def test_cold_files_and_schema_commands_list_exactly_the_current_objects(lake: Any, tmp_path: Path) -> None:
    dsn, storage, root = lake
    sql(dsn, PORTABLE.replace("lake_mood", "lake_mood2"))
    policy = make_policy(dsn, storage, [table("public.lake_portable", archive_after=5)])
    assert run_archive(policy).status == "ok"
    directory = tmp_path / "policies"
    directory.mkdir()
    (directory / "telemetry.yaml").write_text(
        "database: {dsn: '${NO_SUCH_DSN}'}\n"  # the store alone is read: no database variable is needed
        f"storage: {{url: '{storage.url}'}}\narchive:\n  schedule: '30 1 * * *'\n  tables:\n"
        "    - {table: public.lake_portable, archive_after: 5d}\n")
    listed = run_cli("--policies", str(directory), "cold", "telemetry", "files", "--json")
    assert listed.code == 0, listed.output
    files = json.loads(listed.stdout)["files"]
    assert sorted(item["url"] for item in files) == sorted(str(path) for path in root.rglob("*.parquet"))
    assert [item["day"] for item in files] == ["2020-01-01", "2020-01-02"] and sum(i["rows"] for i in files) == 29
    window = run_cli("--policies", str(directory), "cold", "telemetry", "files", "--from", "2020-01-02T06:00:00Z",
                     "--to", "2020-01-05")
    assert window.code == 0 and "dt=2020-01-02/" in window.stdout and "dt=2020-01-01/" not in window.stdout
    assert window.stdout.splitlines()[-1] == "1 file(s), 15 rows in 1 table(s)"
    for form in ("duckdb", "athena", "spark", "json"):
        printed = run_cli("--policies", str(directory), "cold", "telemetry", "schema", "--format", form)
        assert printed.code == 0, printed.output
    athena = run_cli("--policies", str(directory), "cold", "telemetry", "schema", "--format", "athena").stdout
    assert "PARTITIONED BY (`dt` date)" in athena and "`tag` binary" in athena and "not portable: tag" in athena
    assert "`span` struct<months:int,days:int,nanoseconds:bigint>" in athena
    spark = run_cli("--policies", str(directory), "cold", "telemetry", "schema", "--format", "spark").stdout
    assert "Spark rejects Parquet's UUID type" in spark and "`dt` DATE" in spark
    view = run_cli("--policies", str(directory), "cold", "telemetry", "schema").stdout
    connection = duckdb.connect()
    connection.execute(view)
    assert connection.sql("SELECT count(*), count(DISTINCT dt) FROM public.lake_portable").fetchall() == [(29, 2)]
    missing = run_cli("--policies", str(directory), "cold", "telemetry", "files", "--table", "public.nothing")
    assert missing.code == 2 and "no archives of public.nothing" in missing.output

