"""What the cold tier's safety checks cost: late data, retention's full read-back, restore-archive.

Not a test: run it by hand (see bench/README.md). One database, one run, every figure next to a
baseline measured on the same data:

- archive, first export of N daily partitions (the baseline the others are divided by);
- archive after one late row went into each archived partition: each partition is compared row
  by row with its archive (download, stage, compare), then exported again;
- retention of the N partitions: every object read back in full (SHA-256, footer, embedded
  metadata), the rows proven under the lock, then dropped; against reading the same objects with
  ``sha256sum``;
- restore-archive of a quarter of one partition, and of all N, against ``COPY ... FROM`` of the
  same rows from a CSV file written by ``COPY ... TO``;
- archive after a partial restore-archive (nothing to export: the rows are recorded as brought
  back) and the retention that drops the range again.

Peak RSS comes from each run's JSON log. Native range partitions, so it runs without TimescaleDB.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from archiver.pg.connect import execute
from archiver.pg.scratch import LocalPostgres
from bench.common import run_archiver

SCHEMA = """
CREATE TABLE readings (time timestamptz NOT NULL, sensor_id uuid NOT NULL, temperature double precision,
                       humidity double precision, energy_kwh numeric(14,3), status text, extra jsonb)
PARTITION BY RANGE (time)
"""
DAY = """
INSERT INTO readings
SELECT (current_date - {age})::timestamptz + g * interval '1 second' * 86000 / {rows}, md5((g % 5000)::text)::uuid,
       15 + random() * 20, random() * 100, (random() * 100000)::numeric(14,3),
       (ARRAY['ok', 'ok', 'warn', 'fault'])[1 + g % 4],
       CASE WHEN g % 50 = 0 THEN jsonb_build_object('fw', '2.' || (g % 7)) END
FROM generate_series(0, {rows} - 1) AS g
"""


def policy(directory: Path, dsn: str, store: Path) -> Path:
    (directory / "bench.yaml").write_text(
        f"database: {{dsn: '{dsn}'}}\nstorage: {{url: 'file://{store}'}}\n"
        "archive:\n  schedule: '30 1 * * *'\n  tables:\n"
        "    - {table: public.readings, archive_after: 30d, drop_after: 50d}\n")
    return directory


def setup(dsn: str, days: int, rows: int) -> None:
    execute(dsn, SCHEMA)
    for index in range(days):
        age = 60 + index
        execute(dsn, f"CREATE TABLE readings_d{age} PARTITION OF readings FOR VALUES FROM "
                        f"((current_date - {age})::timestamptz) TO ((current_date - {age} + 1)::timestamptz)")
        execute(dsn, DAY.format(age=age, rows=rows))
    execute(dsn, "VACUUM ANALYZE readings")


def timed(label: str, policies: Path, *args: str, ok: tuple[int, ...] = (0,)) -> dict[str, float]:
    seconds, _, events = run_archiver(policies, *args, ok=ok)
    done = next((event for name, event in events.items() if name.endswith(".done")), {})
    rss = done.get("peak_rss_bytes") or (done.get("metrics") or {}).get("peak_rss_bytes") or 0
    print(f"  {label:<44} {seconds:8.2f} s   peak RSS {float(rss) / 2 ** 20:6.0f} MiB", flush=True)
    return {"seconds": seconds, "rss": float(rss)}


def copy_rows(dsn: str, statement: str, path: Path, *, out: bool) -> None:
    """Raw COPY (FORMAT binary) between the server and a local file: the baseline for loading rows."""
    import psycopg

    with psycopg.connect(dsn) as conn, conn.cursor() as cursor, cursor.copy(statement) as copy:
        if out:
            with open(path, "wb") as sink:
                for data in copy:
                    sink.write(data)
        else:
            with open(path, "rb") as source:
                while data := source.read(1 << 20):
                    copy.write(data)


def shell_seconds(command: list[str]) -> float:
    started = time.monotonic()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=8, help="archived partitions")
    parser.add_argument("--rows", type=int, default=250_000, help="rows per partition")
    options = parser.parse_args()
    with LocalPostgres() as instance, tempfile.TemporaryDirectory(prefix="archiver-bench-") as work:
        root = Path(work)
        os.chmod(root, 0o755)
        dsn = instance.create_database("bench")
        print(f"{options.days} partitions x {options.rows:,} rows (load {os.getloadavg()[0]:.1f})", flush=True)
        setup(dsn, options.days, options.rows)
        policies = policy(root, dsn, root / "store")
        first = timed("archive, first export", policies, "archive", "bench")
        for index in range(options.days):
            execute(dsn, f"INSERT INTO readings SELECT time + interval '1 ms', sensor_id, temperature, humidity, "
                            f"energy_kwh, status, extra FROM readings_d{60 + index} LIMIT 1")
        late = timed("archive, 1 late row per partition", policies, "archive", "bench")
        objects = sorted(str(path) for path in (root / "store" / "archive").rglob("*.parquet"))
        read = shell_seconds(["sha256sum", *objects])
        print(f"  {'baseline: sha256sum of the objects':<44} {read:8.2f} s", flush=True)
        export = root / "rows.bin"
        copy_rows(dsn, "COPY (SELECT * FROM readings) TO STDOUT (FORMAT binary)", export, out=True)
        retention = timed("retention, read back + prove + drop", policies, "retention", "bench")
        execute(dsn, "CREATE TABLE copy_baseline (LIKE readings)")
        started = time.monotonic()
        copy_rows(dsn, "COPY copy_baseline FROM STDIN (FORMAT binary)", export, out=False)
        copy_in = time.monotonic() - started
        print(f"  {'baseline: COPY FROM STDIN (binary), every row':<44} {copy_in:8.2f} s", flush=True)
        oldest = date.today() - timedelta(days=60 + options.days - 1)
        quarter = timed("restore-archive, a quarter of one partition", policies, "restore-archive", "bench",
                        "--table", "readings", "--from", f"{oldest}T00:00:00Z", "--to", f"{oldest}T06:00:00Z")
        after = timed("archive after a partial restore", policies, "archive", "bench")
        redrop = timed("retention drops it again", policies, "retention", "bench")
        whole = timed("restore-archive, every partition", policies, "restore-archive", "bench", "--table",
                      "readings", "--from", f"{oldest}", "--to", f"{date.today() - timedelta(days=59)}")
        rows = options.days * (options.rows + 1)
        print()
        print(f"late-data archive / first export       {late['seconds'] / first['seconds']:.2f}x")
        print(f"retention / first export               {retention['seconds'] / first['seconds']:.2f}x "
              f"(sha256sum alone {read / first['seconds']:.2f}x)")
        print(f"restore-archive of {rows:,} rows / raw COPY FROM   {whole['seconds'] / copy_in:.2f}x "
              f"({rows / whole['seconds']:,.0f} rows/s)")
        print(f"archive after a partial restore        {after['seconds']:.2f} s; re-drop {redrop['seconds']:.2f} s; "
              f"quarter restore {quarter['seconds']:.2f} s")


if __name__ == "__main__":
    main()
