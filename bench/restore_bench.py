"""Benchmark: ``archiver restore`` against raw ``pg_restore`` of a local dump file, and ``archiver verify``.

Builds a throw-away PostgreSQL (TimescaleDB when installed) holding a hypertable of sensor-like
rows with two indexes per chunk, grows it to ``--size`` GB, backs it up with ``archiver backup``
into a file store and into moto's S3 server (its own process), writes the same dump with
``pg_dump -Fc -Z0`` to a local file, then times, one after the other, each into a new database
on the same server:

- raw ``pg_restore`` of the local file: the baseline (for TimescaleDB with the documented steps
  around it: CREATE EXTENSION, timescaledb_pre_restore(), timescaledb_post_restore());
- the same with ``--single-transaction``, for reference;
- ``archiver restore`` from the file store and from the moto store (subprocesses: wall time, the
  restore's own duration from its ``restore.done`` event, its phases and peak RSS);
- ``archiver verify`` end to end (a scratch cluster, the restore, every check).

Nothing here is a test: it asserts nothing and is run by hand, see bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from common import (
    GB,
    MiB,
    MotoServer,
    create_sensor_database,
    database_size,
    grow_to,
    run_archiver,
    use_moto_credentials,
)

from archiver.pg.connect import connect, execute, query
from archiver.pg.dsn import dsn_env
from archiver.pg.scratch import LocalPostgres


@dataclass
class Measurement:
    variant: str
    seconds: float  # wall time of the whole command
    restore_seconds: float  # the restore itself (archiver: its RTO, without counting rows or starting Python)
    phases: dict[str, Any] = field(default_factory=dict)
    peak_rss_bytes: int | None = None
    time_ratio: float = 0.0
    restore_ratio: float = 0.0


def write_policies(directory: Path, dsn: str, file_root: Path, s3_url: str, scratch_dir: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for kind, storage in (("file", {"url": f"file://{file_root}"}),
                          ("s3", {"url": "s3://bench-restore/run", "endpoint_url": s3_url, "region": "us-east-1"})):
        document = {"database": {"dsn": dsn}, "storage": storage,
                    "backup": {"schedule": "0 3 * * 0", "compression": {"codec": "zstd", "level": 3}},
                    "verify": {"schedule": "0 5 * * 1", "scratch": {"kind": "local", "work_dir": str(scratch_dir)},
                               "checks": [{"name": "readings present", "sql": "SELECT count(*) FROM sensor_readings",
                                           "expect": "> 0"}]}}
        (directory / f"bench-{kind}.yaml").write_text(yaml.safe_dump(document))


def pg_dump_to_file(instance: LocalPostgres, dbname: str, path: Path) -> float:
    env = {**os.environ, **dsn_env(instance.dsn(dbname))}
    started = time.monotonic()
    subprocess.run([str(instance.bindir / "pg_dump"), "-Fc", "-Z0", "--no-password", "-f", str(path)], env=env,
                   check=True, stderr=subprocess.DEVNULL)
    return time.monotonic() - started


def raw_restore(instance: LocalPostgres, dbname: str, dump_file: Path, tsdb: str | None, *extra: str) -> Measurement:
    """CREATE DATABASE, [TimescaleDB pre-steps], pg_restore -d of the file, [post_restore]: what a DBA types."""
    started = time.monotonic()
    dsn = instance.create_database(dbname)
    if tsdb:
        with connect(dsn) as conn:
            conn.execute(f"CREATE EXTENSION timescaledb VERSION '{tsdb}'")
            conn.execute("SELECT timescaledb_pre_restore()")
    env = {**os.environ, **dsn_env(dsn)}
    pg_restore_started = time.monotonic()
    subprocess.run([str(instance.bindir / "pg_restore"), "--no-password", "--exit-on-error", "-d", dbname, *extra,
                    str(dump_file)], env=env, check=True, stderr=subprocess.DEVNULL)
    pg_restore_seconds = time.monotonic() - pg_restore_started
    if tsdb:
        execute(dsn, "SELECT timescaledb_post_restore()")
    seconds = time.monotonic() - started
    label = "raw pg_restore of a local file" + (" " + " ".join(extra) if extra else " (baseline)")
    return Measurement(label, seconds, seconds, {"pg_restore": round(pg_restore_seconds, 1)})


def archiver_restore(instance: LocalPostgres, policies: Path, policy: str, dbname: str, label: str) -> Measurement:
    seconds, _, events = run_archiver(policies, "restore", policy, "--target", instance.dsn(dbname), "--yes")
    done = events["restore.done"]
    phases = {key: round(value, 1) for key, value in done["durations"].items() if key != "restore"}
    phases["count rows"] = round(done["metrics"]["count_seconds"], 1)
    return Measurement(label, seconds, float(done["metrics"]["duration_seconds"]), phases,
                       int(done["metrics"]["peak_rss_bytes"]))


def archiver_verify(policies: Path, policy: str) -> Measurement:
    seconds, result, events = run_archiver(policies, "verify", policy, "--json")
    record = json.loads(result.stdout)
    if record["result"] != "passed":
        raise SystemExit(f"the drill failed: {record['failed']}")
    done = events["verify.done"]
    phases = {key: round(value, 1) for key, value in record["durations"].items() if key != "total"}
    return Measurement(f"archiver verify {policy} (whole drill)", seconds, float(done["metrics"]["restore_seconds"]),
                       phases, int(done["metrics"]["peak_rss_bytes"]))


def median(items: list[Measurement]) -> Measurement:
    """The run with the median restore time (its wall time and phases come with it)."""
    ordered = sorted(items, key=lambda item: item.restore_seconds)
    chosen = ordered[(len(ordered) - 1) // 2]
    if len(items) > 1:
        chosen.variant += f" (median of {len(items)})"
        chosen.phases["samples"] = [round(item.restore_seconds, 1) for item in items]
    return chosen


def drop(instance: LocalPostgres, dbname: str) -> None:
    instance.psql(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


def render(results: list[Measurement], size: int, load: list[float]) -> str:
    header = f"{'variant':62} {'wall s':>7} {'x raw':>6} {'restore s':>9} {'x raw':>6} {'peak RSS':>9}  phases (s)"
    lines = [f"database {size / GB:.2f} GB; load average before/after: {load[0]:.2f} / {load[1]:.2f}", header,
             "-" * len(header)]
    for item in results:
        rss = f"{item.peak_rss_bytes / MiB:.0f} MiB" if item.peak_rss_bytes else "-"
        phases = ", ".join(f"{key} {value}" for key, value in item.phases.items())
        lines.append(f"{item.variant:62} {item.seconds:7.1f} {item.time_ratio:6.2f} {item.restore_seconds:9.1f} "
                     f"{item.restore_ratio:6.2f} {rss:>9}  {phases}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=float, default=1.0, help="database size in GB (default 1)")
    parser.add_argument("--workdir", default="/var/tmp", help="where the clusters, stores and dump file live "
                                                               "(must be traversable by the postgres user)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of the four restores, interleaved; the "
                                                                 "median of each is reported (default 3)")
    parser.add_argument("--json", dest="json_out", help="also write the measurements to this JSON file")
    args = parser.parse_args()
    use_moto_credentials()
    work = Path(tempfile.mkdtemp(prefix="archiver-restore-bench-", dir=args.workdir))
    work.chmod(0o755)  # the servers (user postgres) live below it
    (work / "scratch").mkdir(mode=0o755)
    moto = MotoServer()
    results: list[Measurement] = []
    try:
        moto.client().create_bucket(Bucket="bench-restore")
        settings = {"shared_buffers": "'256MB'", "max_locks_per_transaction": "1024"}
        with LocalPostgres(base_dir=str(work), settings=settings) as instance:
            dsn = create_sensor_database(instance, "telemetry", device_index=True)
            tsdb = query(dsn, "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
            version = tsdb[0][0] if tsdb else None
            print(f"PostgreSQL {instance.major}, TimescaleDB {version or 'no'}, {os.cpu_count()} CPUs, workdir {work}",
                  flush=True)
            grow_to(dsn, int(args.size * GB), 0)
            size = database_size(dsn)
            policies = work / "policies"
            write_policies(policies, dsn, work / "store", moto.url, work / "scratch")
            for policy in ("bench-file", "bench-s3"):
                seconds, _, _ = run_archiver(policies, "backup", policy)
                print(f"  archiver backup {policy}: {seconds:.1f}s", flush=True)
            dump_file = work / "raw.pgdump"
            print(f"  pg_dump -Fc -Z0 to a file: {pg_dump_to_file(instance, 'telemetry', dump_file):.1f}s, "
                  f"{dump_file.stat().st_size / MiB:.0f} MiB", flush=True)
            load_before = os.getloadavg()[0]
            runs = [
                ("raw", lambda: raw_restore(instance, "raw", dump_file, version)),
                ("raw1", lambda: raw_restore(instance, "raw1", dump_file, version, "--single-transaction")),
                ("from_file", lambda: archiver_restore(instance, policies, "bench-file", "from_file",
                                                       "archiver restore from the file store")),
                ("from_s3", lambda: archiver_restore(instance, policies, "bench-s3", "from_s3",
                                                     "archiver restore from the moto S3 store")),
            ]
            samples: dict[str, list[Measurement]] = {}
            for round_number in range(1, args.repeat + 1):  # interleaved, so a busy minute hits every variant
                for dbname, run in runs:
                    item = run()
                    samples.setdefault(dbname, []).append(item)
                    print(f"  round {round_number}: {item.variant}: {item.seconds:.1f}s "
                          f"(restore {item.restore_seconds:.1f}s) {item.phases}", flush=True)
                    drop(instance, dbname)
            results = [median(items) for items in samples.values()]
            dump_file.unlink()
            item = archiver_verify(policies, "bench-file")
            results.append(item)
            print(f"  {item.variant}: {item.seconds:.1f}s {item.phases}", flush=True)
            load_after = os.getloadavg()[0]
    finally:
        moto.stop()
        shutil.rmtree(work, ignore_errors=True)
    baseline = results[0]
    for item in results:
        item.time_ratio = item.seconds / baseline.seconds
        item.restore_ratio = item.restore_seconds / baseline.restore_seconds
    print("\n" + render(results, size, [load_before, load_after]))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"database_bytes": size, "results": [asdict(r) for r in results]},
                                                  indent=2))


if __name__ == "__main__":
    main()
