"""Benchmark: ``archiver backup`` against ``pg_dump -Fc``, measured side by side in one run.

Builds a throw-away PostgreSQL (TimescaleDB when installed) holding a hypertable of sensor-like
rows, grows it through the requested sizes and, at each size, times:

- ``pg_dump -Fc`` (pg_dump's own gzip) into a byte counter: the baseline;
- ``pg_dump -Fc -Z0`` likewise: the speed of the dump itself, for reference;
- ``archiver backup`` into a file store and into an S3 store (moto_server in its own process),
  each with table checksums on and off.

It prints wall time and output size as ratios to the baseline, and the archiver process's peak
RSS (VmHWM, as reported in its ``backup.done`` log event). Nothing here is a test: it asserts
nothing and is run by hand, see bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import boto3
import yaml

from archiver import db
from archiver.scratch import LocalPostgres, free_port

PROJECT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024
GB = 1000 ** 3

SCHEMA = """
CREATE TABLE sensor_readings (
    time        timestamptz      NOT NULL,
    device_id   uuid             NOT NULL,
    temperature double precision,
    humidity    double precision,
    pressure    double precision,
    voltage     double precision,
    energy_kwh  numeric(12, 3),
    status      text,
    attrs       jsonb
);
"""

# One batch: 10 days of readings, one per device every 5 minutes (1000 devices -> 2.88 M rows).
BATCH = """
INSERT INTO sensor_readings
SELECT ts, md5(d::text)::uuid,
       20 + 10 * sin(extract(epoch FROM ts) / 3600 + d) + random(),
       40 + 20 * random(), 1013 + 5 * random(), 230 + random() * 4,
       round((random() * 1000)::numeric, 3),
       (ARRAY['ok', 'ok', 'ok', 'degraded', 'offline'])[1 + (d + extract(minute FROM ts)::int) %% 5],
       CASE WHEN random() < 0.05 THEN jsonb_build_object('fw', '1.' || (d %% 9), 'alarm', random() < 0.5) END
FROM generate_series(%(start)s::timestamptz, %(start)s::timestamptz + interval '10 days' - interval '5 minutes',
                     interval '5 minutes') AS ts,
     generate_series(1, 1000) AS d
"""


@dataclass
class Measurement:
    size_label: str
    database_bytes: int
    variant: str
    seconds: float
    output_bytes: int
    peak_rss_bytes: int | None = None
    time_ratio: float = 0.0
    size_ratio: float = 0.0


def database_size(dsn: str) -> int:
    return int(db.query(dsn, "SELECT pg_database_size(current_database())")[0][0])


def grow_to(dsn: str, target_bytes: int, batches_done: int) -> int:
    """Insert 10-day batches until the database is at least ``target_bytes``; returns batches done."""
    while database_size(dsn) < target_bytes:
        start = datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(days=10 * batches_done)
        with db.connect(dsn) as conn:
            conn.execute(BATCH, {"start": start})
        batches_done += 1
        print(f"  generated batch {batches_done}: database {database_size(dsn) / GB:.2f} GB", flush=True)
    db.execute(dsn, "VACUUM ANALYZE sensor_readings")
    return batches_done


def timed_pg_dump(instance: LocalPostgres, dbname: str, extra: list[str]) -> tuple[float, int]:
    """pg_dump -Fc [extra] to a byte counter (wc -c), the way a pipe to /dev/null would run."""
    env = {**os.environ, **db.dsn_env(instance.dsn(dbname))}
    started = time.monotonic()
    dump = subprocess.Popen([str(instance.bindir / "pg_dump"), "-Fc", "--no-password", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    count = subprocess.run(["wc", "-c"], stdin=dump.stdout, capture_output=True, text=True, check=True)
    assert dump.stdout is not None
    dump.stdout.close()
    if dump.wait() != 0:
        raise SystemExit(f"pg_dump {' '.join(extra)} failed")
    return time.monotonic() - started, int(count.stdout.split()[0])


def timed_backup(policies: Path, name: str) -> tuple[float, int, int]:
    """``archiver backup NAME`` as a subprocess: wall time, stored bytes, peak RSS (VmHWM)."""
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "archiver", "--policies", str(policies), "--log-format", "json",
                             "backup", name], capture_output=True, text=True, cwd=PROJECT)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"archiver backup {name} failed:\n{result.stderr}")
    done = next(json.loads(line) for line in result.stderr.splitlines()
                if line.startswith("{") and json.loads(line).get("event") == "backup.done")
    return seconds, int(done["metrics"]["bytes"]), int(done["metrics"]["peak_rss_bytes"])


class MotoServer:
    """moto's S3 server in its own process, so its memory and CPU are not the benchmark's."""

    def __init__(self) -> None:
        self.port = free_port()
        moto = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
        if not moto:
            raise SystemExit("moto_server not found: pip install 'moto[server]'")
        self.process = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(self.port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        raise SystemExit("moto_server did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> Any:
        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait()


def write_policies(directory: Path, dsn: str, file_root: Path, s3_url: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for checksums in (True, False):
        suffix = "" if checksums else "-nochecksums"
        for kind, storage in (("file", {"url": f"file://{file_root}{suffix}"}),
                              ("s3", {"url": f"s3://bench-backups/run{suffix}", "endpoint_url": s3_url,
                                      "region": "us-east-1"})):
            document = {"database": {"dsn": dsn}, "storage": storage,
                        "backup": {"schedule": "0 3 * * 0", "table_checksums": checksums,
                                   "compression": {"codec": "zstd", "level": 3}}}
            (directory / f"bench-{kind}{suffix}.yaml").write_text(yaml.safe_dump(document))


def empty_stores(file_root: Path, moto: MotoServer) -> None:
    for suffix in ("", "-nochecksums"):
        shutil.rmtree(f"{file_root}{suffix}", ignore_errors=True)
    client = moto.client()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket="bench-backups"):
        for item in page.get("Contents", []):
            client.delete_object(Bucket="bench-backups", Key=item["Key"])


def measure(instance: LocalPostgres, dbname: str, label: str, policies: Path, file_root: Path,
            moto: MotoServer) -> list[Measurement]:
    dsn = instance.dsn(dbname)
    size = database_size(dsn)
    results: list[Measurement] = []
    print(f"\n== {label}: database {size / GB:.2f} GB (load average {os.getloadavg()[0]:.2f})", flush=True)
    seconds, output = timed_pg_dump(instance, dbname, [])
    results.append(Measurement(label, size, "pg_dump -Fc (baseline)", seconds, output))
    print(f"  pg_dump -Fc: {seconds:.1f}s {output / MiB:.0f} MiB", flush=True)
    seconds, output = timed_pg_dump(instance, dbname, ["-Z0"])
    results.append(Measurement(label, size, "pg_dump -Fc -Z0 (reference)", seconds, output))
    print(f"  pg_dump -Fc -Z0: {seconds:.1f}s {output / MiB:.0f} MiB", flush=True)
    for name, variant in (("bench-file", "archiver -> file, checksums"),
                          ("bench-file-nochecksums", "archiver -> file, no checksums"),
                          ("bench-s3", "archiver -> moto S3, checksums"),
                          ("bench-s3-nochecksums", "archiver -> moto S3, no checksums")):
        seconds, output, rss = timed_backup(policies, name)
        results.append(Measurement(label, size, variant, seconds, output, rss))
        print(f"  {variant}: {seconds:.1f}s {output / MiB:.0f} MiB, peak RSS {rss / MiB:.0f} MiB", flush=True)
        empty_stores(file_root, moto)
    baseline = results[0]
    for item in results:
        item.time_ratio = item.seconds / baseline.seconds
        item.size_ratio = item.output_bytes / baseline.output_bytes
    return results


def render(results: list[Measurement]) -> str:
    header = f"{'size':>8}  {'variant':34} {'wall s':>7} {'x time':>7} {'MiB out':>8} {'x size':>7} {'peak RSS':>9}"
    lines = [header, "-" * len(header)]
    for item in results:
        rss = f"{item.peak_rss_bytes / MiB:.0f} MiB" if item.peak_rss_bytes else "-"
        lines.append(f"{item.database_bytes / GB:7.2f}G  {item.variant:34} {item.seconds:7.1f} {item.time_ratio:7.2f} "
                     f"{item.output_bytes / MiB:8.0f} {item.size_ratio:7.2f} {rss:>9}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="0.25,1.0", help="database sizes in GB, ascending (default 0.25,1.0)")
    parser.add_argument("--workdir", default="/var/tmp", help="where the scratch cluster and file store live "
                                                               "(must be traversable by the postgres user)")
    parser.add_argument("--json", dest="json_out", help="also write the measurements to this JSON file")
    args = parser.parse_args()
    sizes = sorted(float(s) for s in args.sizes.split(","))
    # moto accepts any credentials; the archiver subprocesses inherit these
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    os.environ.pop("AWS_PROFILE", None)
    work = Path(tempfile.mkdtemp(prefix="archiver-bench-", dir=args.workdir))
    work.chmod(0o755)  # the server (user postgres) lives below it
    moto = MotoServer()
    results: list[Measurement] = []
    try:
        moto.client().create_bucket(Bucket="bench-backups")
        with LocalPostgres(base_dir=str(work), settings={"shared_buffers": "'256MB'"}) as instance:
            dsn = instance.create_database("telemetry")
            db.execute(dsn, SCHEMA)
            if instance.timescaledb:
                db.execute(dsn, "CREATE EXTENSION timescaledb")
                db.execute(dsn, "SELECT create_hypertable('sensor_readings', 'time', chunk_time_interval => interval '1 day')")
            print(f"PostgreSQL {instance.major}, TimescaleDB {'yes' if instance.timescaledb else 'no'}, "
                  f"{os.cpu_count()} CPUs, workdir {work}", flush=True)
            write_policies(work / "policies", dsn, work / "store", moto.url)
            batches = 0
            for size in sizes:
                batches = grow_to(dsn, int(size * GB), batches)
                results += measure(instance, "telemetry", f"{size:g} GB", work / "policies", work / "store", moto)
    finally:
        moto.stop()
        shutil.rmtree(work, ignore_errors=True)
    print("\n" + render(results))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps([asdict(item) for item in results], indent=2))


if __name__ == "__main__":
    main()
