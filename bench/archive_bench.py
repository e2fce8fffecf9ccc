"""Cold-tier export benchmark: `archiver archive` against raw COPY and a psycopg baseline.

Not a test: run it by hand (see bench/README.md). Everything is measured in the same run on the
same data, so the ratios stay meaningful on a busy machine; the load average is printed too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from archiver.pg.arrow import arrow_batches
from archiver.pg.catalog import relation_sizes
from archiver.pg.connect import session
from archiver.pg.dsn import dsn_env
from archiver.pg.scratch import LocalPostgres, free_port

TABLE = "sensor_readings"
SCHEMA = f"""
CREATE TABLE {TABLE} (
    time timestamptz NOT NULL,
    sensor_id uuid NOT NULL,
    temperature double precision,
    humidity double precision,
    pressure double precision,
    voltage double precision,
    energy_kwh numeric(14,3),
    status text,
    extra jsonb
)"""
DAY_ROWS = """
INSERT INTO {table}
SELECT day + (g::bigint * {step_us}) * interval '1 microsecond',
       md5((g % 5000)::text)::uuid,
       15 + random() * 20, random() * 100, 950 + random() * 100, 229 + random() * 2,
       (random() * 100000)::numeric(14,3),
       (ARRAY['ok', 'ok', 'ok', 'warn', 'fault'])[1 + g % 5],
       CASE WHEN g % 50 = 0 THEN jsonb_build_object('fw', '2.' || (g % 7), 'err', g % 13) END
FROM (SELECT date_trunc('day', now()) - interval '{age} days' AS day) d, generate_series(0, {rows} - 1) AS g
"""


@dataclass
class Measure:
    name: str
    rows: int
    seconds: float
    peak_rss_bytes: int | None = None
    output_bytes: int | None = None
    load: float | None = None

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def load_average() -> float:
    return os.getloadavg()[0]


def create_data(pg: LocalPostgres, dsn: str, rows: int, days: int) -> tuple[str, list[str], int]:
    with session(dsn) as current:
        # the bench's own fresh database: its generator SQL names its objects unqualified
        current.execute("SET search_path = public, pg_catalog")
        timescale = pg.timescaledb
        if timescale:
            current.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        current.execute(SCHEMA if timescale else SCHEMA + " PARTITION BY RANGE (time)")
        if timescale:
            current.execute(f"SELECT create_hypertable('{TABLE}', by_range('time', INTERVAL '1 day'))")
        per_day = rows // days
        step_us = 86_400_000_000 // per_day
        for index in range(days):
            age = days + 1 - index  # the newest chunk ends a day ago: every chunk is due
            if not timescale:
                current.execute(f"CREATE TABLE {TABLE}_{index} PARTITION OF {TABLE} FOR VALUES FROM "
                                f"(date_trunc('day', now()) - interval '{age} days') TO "
                                f"(date_trunc('day', now()) - interval '{age - 1} days')")
            started = time.monotonic()
            current.execute(DAY_ROWS.format(table=TABLE, step_us=step_us, age=age, rows=per_day))
            print(f"  day {index + 1}/{days}: {per_day:,} rows in {time.monotonic() - started:.1f} s", flush=True)
        current.execute(f"VACUUM ANALYZE {TABLE}")
        if timescale:
            chunks = [f"{r[0]}.{r[1]}" for r in current.query(
                "SELECT chunk_schema, chunk_name FROM timescaledb_information.chunks WHERE hypertable_name = %s "
                "ORDER BY range_start", (TABLE,))]
        else:
            chunks = [f"public.{TABLE}_{index}" for index in range(days)]
        size = sum(relation_sizes(current, [tuple(chunk.split(".", 1)) for chunk in chunks]).values())
    return ("TimescaleDB hypertable" if timescale else "native range partitions"), chunks, size


def raw_copy(pg: LocalPostgres, dsn: str, chunks: list[str], rows: int) -> Measure:
    argv = [str(pg.bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1"]
    for chunk in chunks:
        argv += ["-c", f"COPY (SELECT * FROM {chunk}) TO STDOUT (FORMAT binary)"]
    load = load_average()
    started = time.monotonic()
    with open(os.devnull, "wb") as sink:
        subprocess.run(argv, stdout=sink, check=True, env={**os.environ, **dsn_env(dsn)})
    return Measure("raw COPY binary -> /dev/null (psql)", rows, time.monotonic() - started, load=load)


def psycopg_fetchmany(dsn: str, chunks: list[str], limit: int) -> Measure:
    """A plain Python export loop: a server-side cursor, fetchmany(10000), rows as Python objects."""
    import psycopg

    rows = 0
    load = load_average()
    started = time.monotonic()
    with psycopg.connect(dsn) as conn:
        for chunk in chunks:
            with conn.cursor(name="bench") as cursor:
                cursor.execute(f"SELECT * FROM {chunk}")
                while batch := cursor.fetchmany(10_000):
                    rows += len(batch)
            conn.commit()
            if rows >= limit:
                break
    return Measure("psycopg fetchmany(10000) (baseline)", rows, time.monotonic() - started, load=load)


def adbc_read(dsn: str, chunks: list[str]) -> Measure:
    rows = 0
    load = load_average()
    started = time.monotonic()
    for chunk in chunks:
        for batch in arrow_batches(dsn, f"SELECT * FROM {chunk}"):
            rows += batch.num_rows
    return Measure("ADBC read alone (reference)", rows, time.monotonic() - started, load=load)


class MotoServer:
    """moto's S3 server as a separate process, so its memory and CPU are not archiver's."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        binary = Path(sys.executable).parent / "moto_server"
        self.process = subprocess.Popen([str(binary), "-H", "127.0.0.1", "-p", str(self.port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                urllib.request.urlopen(self.url, timeout=1)
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("moto_server did not start")

    def create_bucket(self, name: str) -> None:
        import boto3

        boto3.client("s3", endpoint_url=self.url, region_name="us-east-1", aws_access_key_id="bench",
                     aws_secret_access_key="bench").create_bucket(Bucket=name)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def archive_run(workdir: Path, dsn: str, label: str, storage: str, parallel: int) -> Measure:
    policies = workdir / f"policies-{label}"
    policies.mkdir()
    (policies / "bench.yaml").write_text(
        "database: {dsn: \"${BENCH_DSN}\"}\n"
        f"storage: {storage}\n"
        "archive:\n"
        "  schedule: \"0 1 * * *\"\n"
        f"  tables: [{{table: public.{TABLE}, archive_after: 1d}}]\n"
        f"  parallel: {parallel}\n")
    env = {**os.environ, "BENCH_DSN": dsn, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_DEFAULT_REGION": "us-east-1"}
    load = load_average()
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "archiver", "--policies", str(policies), "--log-format", "json",
                           "archive", "bench"], capture_output=True, text=True, env=env, cwd=PROJECT)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(f"archive {label} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    done = next(json.loads(line) for line in proc.stderr.splitlines() if '"archive.done"' in line)
    print(f"  {label}: task {done['duration_seconds']:.1f} s, wall {wall:.1f} s, {done['chunks_archived']} chunks", flush=True)
    return Measure(f"archiver archive -> {label}", int(done["rows"]), float(done["duration_seconds"]),
                   peak_rss_bytes=int(done["peak_rss_bytes"]), output_bytes=int(done["bytes"]), load=load)


def report(kind: str, rows: int, days: int, chunk_bytes: int, measures: list[Measure]) -> list[str]:
    copy = max((m for m in measures if m.name.startswith("raw COPY")), key=lambda m: m.rows_per_second)
    baseline = max((m for m in measures if m.name.startswith("psycopg")), key=lambda m: m.rows_per_second)
    lines = [f"{rows:,} rows in {days} daily chunks ({kind}); chunks on disk {chunk_bytes / 2**20:,.0f} MiB; "
             f"{os.cpu_count()} CPUs", "",
             f"{'measure':<44} {'rows/s':>10} {'x COPY':>7} {'x psycopg':>9} {'peak RSS':>9} {'Parquet':>9} "
             f"{'vs disk':>7} {'load':>5}"]
    for m in measures:
        rss = f"{m.peak_rss_bytes / 2**20:.0f} MiB" if m.peak_rss_bytes else ""
        out = f"{m.output_bytes / 2**20:.0f} MiB" if m.output_bytes else ""
        ratio = f"{m.output_bytes / chunk_bytes:.2f}" if m.output_bytes else ""
        lines.append(f"{m.name:<44} {m.rows_per_second:>10,.0f} {m.rows_per_second / copy.rows_per_second:>7.2f} "
                     f"{m.rows_per_second / baseline.rows_per_second:>9.2f} {rss:>9} {out:>9} {ratio:>7} "
                     f"{m.load or 0:>5.2f}")
    lines += ["", "ratios are against the faster of the two baseline measurements (before and after the runs)",
              "targets: >= 3x psycopg; >= 0.3x raw COPY (one export), >= 0.45x (two in parallel); "
              "peak RSS < 300 MiB"]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=10, help="daily chunks the rows are spread over")
    parser.add_argument("--psycopg-rows", type=int, default=2_000_000,
                        help="stop the (slow) psycopg baseline after this many rows")
    parser.add_argument("--workdir", default="/var/tmp", help="must be traversable by the postgres user")
    parser.add_argument("--skip-s3", action="store_true")
    parser.add_argument("--json", dest="json_path", help="also write the measures here")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="archiver-bench-", dir=args.workdir))
    workdir.chmod(0o755)
    moto: MotoServer | None = None
    try:
        with LocalPostgres(base_dir=args.workdir, settings={"shared_buffers": "512MB"}) as pg:
            dsn = pg.create_database("bench")
            print(f"generating {args.rows:,} rows over {args.days} days ...", flush=True)
            kind, chunks, chunk_bytes = create_data(pg, dsn, args.rows, args.days)
            rows = args.rows // args.days * args.days
            measures = [raw_copy(pg, dsn, chunks, rows)]
            measures.append(psycopg_fetchmany(dsn, chunks, args.psycopg_rows))
            measures.append(adbc_read(dsn, chunks))
            runs = [("file store", f"{{url: \"file://{workdir}/store-1\"}}", 1),
                    ("file store, 2 parallel", f"{{url: \"file://{workdir}/store-2\"}}", 2)]
            if not args.skip_s3:
                moto = MotoServer()
                for bucket in ("bench-1", "bench-2"):
                    moto.create_bucket(bucket)
                runs += [("moto S3", f"{{url: \"s3://bench-1/cold\", endpoint_url: \"{moto.url}\"}}", 1),
                         ("moto S3, 2 parallel", f"{{url: \"s3://bench-2/cold\", endpoint_url: \"{moto.url}\"}}", 2)]
            for label, storage, parallel in runs:
                measures.append(archive_run(workdir, dsn, label, storage, parallel))
            # the machine's load changes while the runs go on: measure the baselines again and
            # compare against the faster of the two measurements (the harder target)
            measures.append(raw_copy(pg, dsn, chunks, rows))
            measures.append(psycopg_fetchmany(dsn, chunks, args.psycopg_rows))
            lines = report(kind, rows, args.days, chunk_bytes, measures)
            print("\n" + "\n".join(lines))
            if args.json_path:
                Path(args.json_path).write_text(json.dumps({
                    "kind": kind, "rows": rows, "days": args.days, "chunk_bytes": chunk_bytes,
                    "measures": [{**asdict(m), "rows_per_second": m.rows_per_second} for m in measures]}, indent=2))
    finally:
        if moto is not None:
            moto.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
