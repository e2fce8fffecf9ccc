"""Pieces the benchmarks share: a sensor-data database grown to a size, moto's S3 server in its own
process, and running ``archiver`` as a subprocess with its JSON log events."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3

from archiver.pg.connect import connect, execute, query
from archiver.pg.scratch import LocalPostgres, free_port

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
INSERT INTO public.sensor_readings
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


def use_moto_credentials() -> None:
    """moto accepts any credentials; archiver subprocesses inherit these."""
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    os.environ.pop("AWS_PROFILE", None)


def database_size(dsn: str) -> int:
    return int(query(dsn, "SELECT pg_database_size(current_database())")[0][0])


def create_sensor_database(instance: LocalPostgres, name: str, *, device_index: bool = False) -> str:
    """The sensor_readings table (a hypertable with 1-day chunks when TimescaleDB is there); its DSN.

    ``device_index`` adds an index on (device_id, time), so that a restore rebuilds two indexes per chunk.
    """
    dsn = instance.create_database(name)
    execute(dsn, SCHEMA)
    if instance.timescaledb:
        execute(dsn, "CREATE EXTENSION timescaledb")
        execute(dsn, "SELECT create_hypertable('sensor_readings', 'time', chunk_time_interval => interval '1 day')")
    if device_index:
        execute(dsn, "CREATE INDEX ON sensor_readings (device_id, time DESC)")
    return dsn


def grow_to(dsn: str, target_bytes: int, batches_done: int) -> int:
    """Insert 10-day batches until the database is at least ``target_bytes``; returns batches done."""
    while database_size(dsn) < target_bytes:
        start = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=10 * batches_done)
        with connect(dsn, safe_search_path=False) as conn:  # our own SQL: unqualified names, as psql runs it
            conn.execute(BATCH, {"start": start})
        batches_done += 1
        print(f"  generated batch {batches_done}: database {database_size(dsn) / GB:.2f} GB", flush=True)
    execute(dsn, "VACUUM ANALYZE public.sensor_readings")
    return batches_done


def run_archiver(policies: Path, *args: str, env: dict[str, str] | None = None,
                 ok: tuple[int, ...] = (0,)) -> tuple[float, subprocess.CompletedProcess[str], dict[str, Any]]:
    """``archiver --log-format json ARGS`` as a subprocess: wall time, the process, its log events by name."""
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "archiver", "--policies", str(policies), "--log-format", "json",
                             *args], capture_output=True, text=True, cwd=PROJECT, env={**os.environ, **(env or {})})
    seconds = time.monotonic() - started
    if result.returncode not in ok:
        raise SystemExit(f"archiver {' '.join(args)} failed (exit {result.returncode}):\n{result.stderr[-4000:]}")
    events: dict[str, Any] = {}
    for line in result.stderr.splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            events[event.get("event", "")] = event
    return seconds, result, events


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
