"""Benchmark: point-in-time recovery against PostgreSQL's own programs, measured side by side in one run.

On a throw-away PostgreSQL grown to the benchmark's sensor database (plus a pgbench database), at
each size:

- **base backup**: ``archiver basebackup`` (into a file store, zstd level 3) against
  ``pg_basebackup -D - -Ft -X none | zstd -3 -T0`` into a file beside it; wall ratio and peak RSS;
- **restore to a time**: ``archiver restore --pitr --to-time T --start`` (checked unpack,
  pg_verifybackup, recovery with WAL fetched and checked by ``archiver wal-fetch``) against the raw
  way: ``zstd -dc | tar -x``, then recovery of the same WAL with ``restore_command = 'cp ...'`` from
  uncompressed segments on local disk; wall ratio and peak RSS (flat across sizes?).

At the last size, in addition:

- **WAL lag under load**: ``pgbench`` writes for ``--load-seconds`` (60) while ``archiver
  wal-receive`` streams; per segment, seconds from its completion to stored (p50/p99, from the
  receiver's ``wal.pushed`` events); target p99 < 10 s;
- **wal-push throughput**: segments per second that ``archiver wal-push`` sustains, one process per
  segment (as archive_command runs it), against the rate pgbench produced WAL at.

Run by hand (see bench/README.md); asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from common import GB, MiB, create_sensor_database, database_size, grow_to, run_archiver

from archiver.common.timeutil import parse_timestamp
from archiver.pg.connect import query
from archiver.pg.dsn import dsn_env
from archiver.pg.recovery import RecoveryServer, chown_tree
from archiver.pg.scratch import LocalPostgres, free_port
from archiver.pitr.catalog import scan_base_backups
from archiver.pitr.settings import quote_setting
from archiver.pitr.walstore import fetch_wal_version, scan_wal
from archiver.storage.local import LocalStore

RESULTS: dict[str, Any] = {"sizes": []}


def archiver_for_server(directory: Path) -> str:
    """A command the postgres user can run that is this checkout's archiver (see tests/pitr_helpers.py)."""
    own = Path(sys.executable).with_name("archiver")
    site = sysconfig.get_paths()["purelib"]
    wrapper = directory / "archiver-for-server"
    wrapper.write_text(f"#!/bin/sh\nexec /usr/bin/python3 -c 'import site, sys; site.addsitedir({json.dumps(site)}); "
                       "sys.argv[0] = \"archiver\"; from archiver.cli import main; main()' \"$@\"\n")
    wrapper.chmod(0o755)
    if os.geteuid() != 0:
        return str(own)
    entry = pwd.getpwnam("postgres")
    try:
        subprocess.run([str(own), "--version"], capture_output=True, user=entry.pw_uid, group=entry.pw_gid,
                       extra_groups=[], check=True)
        return str(own)
    except (OSError, subprocess.CalledProcessError):
        return str(wrapper)


def write_policy(path: Path, dsn: str, store: Path, spool: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({
        "database": {"dsn": dsn}, "storage": {"url": f"file://{store}"},
        "pitr": {"wal": {"method": "stream", "slot": "bench", "spool_dir": str(spool)},
                 "base_backup": {"schedule": "0 1 * * *", "compression": {"codec": "zstd", "level": 3}}}}))
    path.chmod(0o644)
    path.parent.chmod(0o755)


def base_backup_baseline(instance: LocalPostgres, out: Path) -> float:
    env = {**os.environ, **dsn_env(instance.dsn("postgres"))}
    started = time.monotonic()
    backup = subprocess.Popen([str(instance.bindir / "pg_basebackup"), "-D", "-", "-Ft", "-X", "none", "-c", "fast",
                               "--no-password"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    subprocess.run(["zstd", "-3", "-T0", "-q", "-f", "-o", str(out)], stdin=backup.stdout, check=True)
    assert backup.stdout is not None
    backup.stdout.close()
    if backup.wait() != 0:
        raise SystemExit("pg_basebackup failed")
    return time.monotonic() - started


def cli_start_up() -> float:
    """Wall time of ``archiver --help``: the fixed cost of starting the CLI (interpreter, imports)."""
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "archiver", "--help"], capture_output=True, check=True)
    return time.monotonic() - started


def measure_base_backup(instance: LocalPostgres, policy: Path, work: Path) -> dict[str, Any]:
    baseline = base_backup_baseline(instance, work / "baseline.tar.zst")
    baseline_bytes = (work / "baseline.tar.zst").stat().st_size
    (work / "baseline.tar.zst").unlink()
    seconds, result, events = run_archiver(policy, "basebackup", "bench")
    done = events["basebackup.done"]["metrics"]
    start_up = cli_start_up()
    return {"baseline_s": baseline, "baseline_bytes": baseline_bytes, "archiver_s": seconds, "cli_start_up_s": start_up,
            "ratio_without_start_up": (seconds - start_up) / baseline,
            "archiver_bytes": int(done["bytes"]), "ratio": seconds / baseline, "peak_rss": int(done["peak_rss_bytes"]),
            "base_id": result.stdout.strip()}


def pgbench(instance: LocalPostgres, seconds: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **dsn_env(instance.dsn("pgbench"))}
    return subprocess.run([str(instance.bindir / "pgbench"), "-n", "-c", "4", "-j", "2", "-T", str(seconds)],
                          capture_output=True, text=True, env=env, check=True)


def wait_archived(store: LocalStore, name: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not any(item.name == name for item in scan_wal(store)):
        if time.monotonic() > deadline:
            raise SystemExit(f"{name} was not archived within {timeout:.0f}s")
        time.sleep(0.5)


def switch(instance: LocalPostgres, store: LocalStore) -> None:
    (name,) = query(instance.dsn("postgres"), "SELECT pg_catalog.pg_walfile_name(pg_catalog.pg_switch_wal())")[0]
    wait_archived(store, name)


def raw_restore(instance: LocalPostgres, store: LocalStore, base_id: str, target: str, work: Path) -> float:
    """The baseline: untar the base backup, recover the same WAL from uncompressed local files with cp."""
    wal_dir = work / "raw-wal"
    wal_dir.mkdir(mode=0o755)
    for item in scan_wal(store):
        if item.file.kind == "segment":
            fetch_wal_version(store, item, wal_dir / item.name)  # prepared, not timed
    for path in wal_dir.iterdir():
        path.chmod(0o644)
    data = work / "raw-restore"
    (base,) = [entry for entry in scan_base_backups(store).backups if entry.id == base_id]
    tar = store.path_of(base.manifest["objects"]["base"]["key"])
    started = time.monotonic()
    data.mkdir(mode=0o700)
    subprocess.run(f"zstd -dc {tar} | tar -x -C {data}", shell=True, check=True)
    (data / "pg_wal" / "archive_status").mkdir(parents=True, exist_ok=True)
    with open(data / "postgresql.auto.conf", "a") as conf:
        conf.write(f"\nrestore_command = {quote_setting(f'cp {wal_dir}/%f %p')}\n"
                   f"recovery_target_time = {quote_setting(target)}\nrecovery_target_action = 'promote'\n"
                   "archive_mode = 'off'\nunix_socket_directories = '/tmp'\n")
    (data / "recovery.signal").touch()
    chown_tree(data)
    server = RecoveryServer(instance.bindir, data, work / "raw-restore.log", ["-p", str(free_port())])
    since = time.time()
    server.start()
    server.wait_until_promoted(since)
    seconds = time.monotonic() - started
    server.stop("immediate")
    shutil.rmtree(data)
    shutil.rmtree(wal_dir)
    return seconds


def measure_restore(instance: LocalPostgres, policy: Path, store: LocalStore, base_id: str, target: str,
                    work: Path) -> dict[str, Any]:
    data = work / "pitr-restore"
    seconds, result, events = run_archiver(policy, "restore", "bench", "--pitr", "--to-time", target, "--data-dir",
                                      str(data), "--start", "--port", str(free_port()), "--yes")
    metrics = events["restore.pitr_done"]["metrics"]
    RecoveryServer(instance.bindir, data, data.with_name("pitr-restore.recovery.log")).stop("immediate")
    shutil.rmtree(data)
    raw = raw_restore(instance, store, base_id, target, work)
    lines = [line for line in result.stdout.splitlines() if line.startswith(("rto", "wal "))]
    return {"archiver_s": seconds, "raw_s": raw, "ratio": seconds / raw, "peak_rss": int(metrics["peak_rss_bytes"]),
            "detail": lines,
            "wal_bytes": int(metrics.get("wal_bytes", 0)), "recovery_s": float(metrics.get("recovery_seconds", 0))}


def measure_lag_and_push(instance: LocalPostgres, policy: Path, store: LocalStore, seconds: int,
                         work: Path, *, push: bool) -> dict[str, Any]:
    before = {item.name for item in scan_wal(store)}
    started = time.monotonic()
    bench = pgbench(instance, seconds)
    elapsed = time.monotonic() - started
    ended = query(instance.dsn("postgres"), "SELECT (pg_catalog.clock_timestamp() - interval '5 seconds')::text")[0][0]
    switch(instance, store)
    produced = [item for item in scan_wal(store) if item.file.kind == "segment" and item.name not in before]
    tps = next((line for line in bench.stdout.splitlines() if line.startswith("tps")), "")
    result = {"load_seconds": elapsed, "segments_produced": len(produced), "produced_per_s": len(produced) / elapsed,
              "pgbench": tps, "target": ended}
    if not push:
        return result
    segments = work / "segments"
    segments.mkdir(parents=True)
    for item in produced[:30]:
        fetch_wal_version(store, item, segments / item.name)
    push_store = work / "push-store"
    push_policy = work / "push-policies" / "bench.yaml"
    write_policy(push_policy, instance.dsn("postgres"), push_store, work / "unused-spool")
    started = time.monotonic()
    for path in sorted(segments.iterdir()):
        run_archiver(push_policy, "wal-push", "bench", str(path))
    push_seconds = time.monotonic() - started
    count = len(list(segments.iterdir()))
    return {**result, "pushed": count, "push_per_s": count / push_seconds}


def receiver_lags(stderr_path: Path, since: float) -> list[float]:
    """Seconds from completion to stored of every segment the receiver pushed after ``since``."""
    lags = []
    for line in stderr_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if (event.get("event") == "wal.pushed" and event.get("new") and "partial" not in event.get("file", "")
                    and parse_timestamp(event["time"]).timestamp() >= since):
                lags.append(float(event["lag_seconds"]))
    return lags


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="0.25,1.0", help="database sizes in GB, ascending (default 0.25,1.0)")
    parser.add_argument("--load-seconds", type=int, default=60, help="pgbench run for the lag measurement")
    parser.add_argument("--workdir", default="/var/tmp", help="scratch cluster and file store (postgres must traverse)")
    parser.add_argument("--json", dest="json_out", help="also write the results to this JSON file")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="archiver-pitr-bench-", dir=args.workdir))
    work.chmod(0o755)
    os.environ["ARCHIVER_BIN"] = archiver_for_server(work)
    settings = {"shared_buffers": "'256MB'", "wal_level": "replica", "max_wal_senders": "5",
                "max_replication_slots": "5", "archive_timeout": "0", "max_wal_size": "'4GB'"}
    receiver = None
    try:
        with LocalPostgres(base_dir=str(work), timescaledb=False, settings=settings) as instance:
            dsn = create_sensor_database(instance, "telemetry")
            instance.psql("CREATE DATABASE pgbench")
            subprocess.run([str(instance.bindir / "pgbench"), "-i", "-q", "-s", "20"], check=True, capture_output=True,
                           env={**os.environ, **dsn_env(instance.dsn("pgbench"))})
            store_dir = work / "store"
            policy = work / "policies" / "bench.yaml"
            write_policy(policy, instance.dsn("postgres"), store_dir, work / "spool")
            store = LocalStore(store_dir)
            log_path = work / "receiver.log"
            log_file = open(log_path, "w")  # noqa: SIM115 - the receiver writes to it until stopped
            receiver = subprocess.Popen([sys.executable, "-m", "archiver", "--policies", str(policy), "--log-format",
                                         "json", "wal-receive", "bench"], stderr=log_file, stdout=subprocess.DEVNULL)
            print(f"PostgreSQL {instance.major}, {os.cpu_count()} CPUs, workdir {work}", flush=True)
            batches = 0
            sizes = sorted(float(size) for size in args.sizes.split(","))
            for index, size in enumerate(sizes):
                batches = grow_to(dsn, int(size * GB), batches)
                switch(instance, store)
                total = sum(database_size(instance.dsn(name)) for name in ("telemetry", "pgbench", "postgres"))
                load = os.getloadavg()[0]
                print(f"\n== cluster {total / GB:.2f} GB (load average {load:.2f})", flush=True)
                base = measure_base_backup(instance, policy, work)
                print(f"  base backup: archiver {base['archiver_s']:.1f}s vs pg_basebackup|zstd {base['baseline_s']:.1f}s "
                      f"= {base['ratio']:.2f}x ({base['ratio_without_start_up']:.2f}x without the CLI's start-up of "
                      f"{base['cli_start_up_s']:.1f}s); peak RSS {base['peak_rss'] / MiB:.0f} MiB", flush=True)
                last = index == len(sizes) - 1
                lag_since = time.time()
                load_seconds = args.load_seconds if last else 15
                push = measure_lag_and_push(instance, policy, store, load_seconds, work / f"push-{index}", push=last)
                lags = receiver_lags(log_path, lag_since)
                # 5 s before the end of the load: the WAL of the whole load after the base backup is replayed
                restore = measure_restore(instance, policy, store, base["base_id"], push["target"], work)
                print(f"  restore to a time: archiver {restore['archiver_s']:.1f}s vs untar + recovery "
                      f"{restore['raw_s']:.1f}s = {restore['ratio']:.2f}x; WAL {restore['wal_bytes'] / MiB:.0f} MiB; "
                      f"peak RSS {restore['peak_rss'] / MiB:.0f} MiB; {'; '.join(restore['detail'])}", flush=True)
                entry = {"cluster_bytes": total, "load_average": load, "base_backup": base, "restore": restore}
                if last:
                    entry.update(push=push, lag_p50=percentile(lags, 0.5), lag_p99=percentile(lags, 0.99),
                                 lag_count=len(lags), lag_max=max(lags) if lags else None)
                    print(f"  WAL lag under pgbench ({push['load_seconds']:.0f}s, {push['pgbench']}): "
                          f"{len(lags)} segments, p50 {entry['lag_p50']:.2f}s, p99 {entry['lag_p99']:.2f}s, "
                          f"max {entry['lag_max']:.2f}s", flush=True)
                    print(f"  wal-push: {push['push_per_s']:.2f} segments/s (one process each) vs "
                          f"{push['produced_per_s']:.2f} segments/s produced by pgbench", flush=True)
                RESULTS["sizes"].append(entry)
    finally:
        if receiver is not None:
            receiver.terminate()
            receiver.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)
    print("\n" + json.dumps(RESULTS, indent=2, default=str))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(RESULTS, indent=2, default=str))


if __name__ == "__main__":
    main()
