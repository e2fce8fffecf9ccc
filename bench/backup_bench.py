"""Benchmark: ``archiver backup`` against ``pg_dump -Fc``, measured side by side in one run.

Builds a throw-away PostgreSQL (TimescaleDB when installed) holding a hypertable of sensor-like
rows, grows it through the requested sizes and, at each size, times:

- ``pg_dump -Fc`` (pg_dump's own gzip) into a byte counter: the baseline;
- ``pg_dump -Fc -Z0`` likewise: the speed of the dump itself, for reference;
- ``archiver backup`` into a file store and into an S3 store (moto_server in its own process),
  each with table checksums on and off, and each with age encryption (``encryption.recipients``,
  checksums on): the encrypted backup's wall against the unencrypted one's (target <= 1.15x) and
  its peak RSS (target: within 20 MiB). ``--encryption-only`` measures just those four.

It prints wall time and output size as ratios to the baseline, and the archiver process's peak
RSS (VmHWM, as reported in its ``backup.done`` log event). Nothing here is a test: it asserts
nothing and is run by hand, see bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

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

from archiver.pg.dsn import dsn_env
from archiver.pg.scratch import LocalPostgres


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


def timed_pg_dump(instance: LocalPostgres, dbname: str, extra: list[str]) -> tuple[float, int]:
    """pg_dump -Fc [extra] to a byte counter (wc -c), the way a pipe to /dev/null would run."""
    env = {**os.environ, **dsn_env(instance.dsn(dbname))}
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
    seconds, _, events = run_archiver(policies, "backup", name)
    done = events["backup.done"]
    return seconds, int(done["metrics"]["bytes"]), int(done["metrics"]["peak_rss_bytes"])


def write_policies(directory: Path, dsn: str, file_root: Path, s3_url: str) -> None:
    import pyrage

    directory.mkdir(parents=True, exist_ok=True)
    recipient = str(pyrage.x25519.Identity.generate().to_public())  # a writer needs only the public key
    for kind, storage in (("file", {"url": f"file://{file_root}-age"}),
                          ("s3", {"url": "s3://bench-backups/age", "endpoint_url": s3_url, "region": "us-east-1"})):
        document = {"database": {"dsn": dsn}, "storage": storage, "encryption": {"recipients": [recipient]},
                    "backup": {"schedule": "0 3 * * 0", "compression": {"codec": "zstd", "level": 3}}}
        (directory / f"bench-{kind}-age.yaml").write_text(yaml.safe_dump(document))
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
    for suffix in ("", "-nochecksums", "-age"):
        shutil.rmtree(f"{file_root}{suffix}", ignore_errors=True)
    client = moto.client()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket="bench-backups"):
        for item in page.get("Contents", []):
            client.delete_object(Bucket="bench-backups", Key=item["Key"])


PLAIN_VARIANTS = (("bench-file", "archiver -> file, checksums"),
                  ("bench-file-nochecksums", "archiver -> file, no checksums"),
                  ("bench-s3", "archiver -> moto S3, checksums"),
                  ("bench-s3-nochecksums", "archiver -> moto S3, no checksums"))
AGE_VARIANTS = (("bench-file-age", "archiver -> file, checksums, age"),
                ("bench-s3-age", "archiver -> moto S3, checksums, age"))
# encrypted variant -> the unencrypted one it is compared with
AGE_PAIRS = {"archiver -> file, checksums, age": "archiver -> file, checksums",
             "archiver -> moto S3, checksums, age": "archiver -> moto S3, checksums"}


def measure(instance: LocalPostgres, dbname: str, label: str, policies: Path, file_root: Path,
            moto: MotoServer, *, encryption_only: bool = False) -> list[Measurement]:
    dsn = instance.dsn(dbname)
    size = database_size(dsn)
    results: list[Measurement] = []
    print(f"\n== {label}: database {size / GB:.2f} GB (load average {os.getloadavg()[0]:.2f})", flush=True)
    seconds, output = timed_pg_dump(instance, dbname, [])
    results.append(Measurement(label, size, "pg_dump -Fc (baseline)", seconds, output))
    print(f"  pg_dump -Fc: {seconds:.1f}s {output / MiB:.0f} MiB", flush=True)
    if not encryption_only:
        seconds, output = timed_pg_dump(instance, dbname, ["-Z0"])
        results.append(Measurement(label, size, "pg_dump -Fc -Z0 (reference)", seconds, output))
        print(f"  pg_dump -Fc -Z0: {seconds:.1f}s {output / MiB:.0f} MiB", flush=True)
    # each encrypted variant right after its unencrypted pair, so that a change of load hits both alike
    file_plain, file_bare, s3_plain, s3_bare = PLAIN_VARIANTS
    order = [file_plain, AGE_VARIANTS[0], s3_plain, AGE_VARIANTS[1]]
    if not encryption_only:
        order += [file_bare, s3_bare]
    for name, variant in order:
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
    by_key = {(item.size_label, item.variant): item for item in results}
    for item in results:
        base = by_key.get((item.size_label, AGE_PAIRS.get(item.variant, "")))
        if base is not None and item.peak_rss_bytes and base.peak_rss_bytes:
            lines.append(f"{item.size_label}: {item.variant} vs without age: wall {item.seconds / base.seconds:.2f}x "
                         f"(target <= 1.15x), peak RSS {(item.peak_rss_bytes - base.peak_rss_bytes) / MiB:+.1f} MiB "
                         "(target within 20 MiB)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="0.25,1.0", help="database sizes in GB, ascending (default 0.25,1.0)")
    parser.add_argument("--workdir", default="/var/tmp", help="where the scratch cluster and file store live "
                                                               "(must be traversable by the postgres user)")
    parser.add_argument("--json", dest="json_out", help="also write the measurements to this JSON file")
    parser.add_argument("--encryption-only", action="store_true",
                        help="only pg_dump -Fc and archiver with and without age encryption (checksums on)")
    args = parser.parse_args()
    sizes = sorted(float(s) for s in args.sizes.split(","))
    use_moto_credentials()
    work = Path(tempfile.mkdtemp(prefix="archiver-bench-", dir=args.workdir))
    work.chmod(0o755)  # the server (user postgres) lives below it
    moto = MotoServer()
    results: list[Measurement] = []
    try:
        moto.client().create_bucket(Bucket="bench-backups")
        with LocalPostgres(base_dir=str(work), settings={"shared_buffers": "'256MB'"}) as instance:
            dsn = create_sensor_database(instance, "telemetry")
            print(f"PostgreSQL {instance.major}, TimescaleDB {'yes' if instance.timescaledb else 'no'}, "
                  f"{os.cpu_count()} CPUs, workdir {work}", flush=True)
            write_policies(work / "policies", dsn, work / "store", moto.url)
            batches = 0
            for size in sizes:
                batches = grow_to(dsn, int(size * GB), batches)
                results += measure(instance, "telemetry", f"{size:g} GB", work / "policies", work / "store", moto,
                                   encryption_only=args.encryption_only)
    finally:
        moto.stop()
        shutil.rmtree(work, ignore_errors=True)
    print("\n" + render(results))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps([asdict(item) for item in results], indent=2))


if __name__ == "__main__":
    main()
