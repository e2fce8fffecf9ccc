"""Catalog scale: every task on a database with thousands of chunks or partitions.

Not a test: run it by hand (see bench/README.md). For each size it builds a database of
one-row chunks (a TimescaleDB hypertable with one-hour chunks, or native daily partitions), then
times, as subprocesses, with each process's peak RSS (VmHWM, polled):

- ``archiver plan`` and ``retention --dry-run`` (their decisions over every chunk);
- ``archiver archive`` of 500 due chunks: the per-chunk overhead is its wall / 500;
- ``archiver backup`` against ``pg_dump -Fc -Z0 | zstd -T0`` of the same database;
- ``archiver status``;
and prints how each figure grows from the small size to the large one.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from archiver.pg.binaries import find
from archiver.pg.connect import execute
from archiver.pg.dsn import dsn_env
from archiver.pg.scratch import LocalPostgres

DUE = 500  # chunks archive exports in the per-chunk measurement


@dataclass
class Figure:
    seconds: float
    rss_mib: float


def measured(argv: list[str], env: dict[str, str] | None = None, ok: tuple[int, ...] = (0, 5)) -> Figure:
    """Run ``argv``; wall time and peak RSS (VmHWM polled every 10 ms, the last value before exit)."""
    started = time.monotonic()
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=PROJECT,
                               env={**os.environ, **(env or {})})
    peak = 0
    while process.poll() is None:
        try:
            with open(f"/proc/{process.pid}/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]))
        except OSError:
            pass
        time.sleep(0.01)
    stderr = process.stderr.read() if process.stderr else ""
    if process.returncode not in ok:
        raise SystemExit(f"{' '.join(argv[:6])} failed (exit {process.returncode}):\n{stderr[-3000:]}")
    return Figure(time.monotonic() - started, peak / 1024)


def archiver(policies: Path, *args: str) -> Figure:
    return measured([sys.executable, "-m", "archiver", "--policies", str(policies), "--log-format", "json", *args])


def build(instance: LocalPostgres, kind: str, chunks: int) -> str:
    dsn = instance.create_database(f"{kind}_{chunks}")
    if kind == "timescaledb":
        execute(dsn, "CREATE EXTENSION timescaledb SCHEMA public")
        execute(dsn, "CREATE TABLE public.metrics (time timestamptz NOT NULL, device int, value float8)")
        execute(dsn, "SELECT public.create_hypertable('public.metrics', 'time', chunk_time_interval => interval '1 hour')")
        execute(dsn, f"INSERT INTO public.metrics SELECT date_trunc('hour', now()) - g * interval '1 hour' "
                     f"+ interval '1 minute', g % 10, g FROM generate_series(1, {chunks}) g")
    else:
        execute(dsn, "CREATE TABLE public.metrics (time timestamptz NOT NULL, device int, value float8) "
                     "PARTITION BY RANGE (time)")
        for start in range(0, chunks, 500):
            execute(dsn, "".join(
                f"CREATE TABLE public.metrics_d{day} PARTITION OF public.metrics FOR VALUES FROM "
                f"(current_date - {day + 1}) TO (current_date - {day});" for day in range(start, min(start + 500, chunks))))
        execute(dsn, f"INSERT INTO public.metrics SELECT current_date - g + interval '1 minute', g % 10, g "
                     f"FROM generate_series(1, {chunks}) g")
    execute(dsn, "VACUUM ANALYZE public.metrics")
    return dsn


def policy(directory: Path, dsn: str, kind: str, chunks: int) -> Path:
    unit = "h" if kind == "timescaledb" else "d"
    keep = chunks - DUE  # the newest chunks stay; the DUE oldest are due
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "scale.yaml").write_text(
        f"database: {{dsn: '{dsn}'}}\nstorage: {{url: 'file://{directory}/store'}}\n"
        "backup: {schedule: '0 3 * * *'}\n"
        "archive:\n  schedule: '30 1 * * *'\n  tables:\n"
        f"    - {{table: public.metrics, archive_after: {keep}{unit}, drop_after: {keep}{unit}}}\n")
    return directory


def raw_dump_seconds(dsn: str, directory: Path, major: int) -> float:
    pg_dump = find("pg_dump", server_major=major)
    started = time.monotonic()
    subprocess.run(f"'{pg_dump}' -Fc -Z0 2>/dev/null | zstd -q -T0 -o '{directory}/raw.dump.zst' -f", shell=True,
                   check=True, env={**os.environ, **dsn_env(dsn)})
    return time.monotonic() - started


def run_size(instance: LocalPostgres, root: Path, kind: str, chunks: int) -> dict[str, float]:
    dsn = build(instance, kind, chunks)
    policies = policy(root / f"{kind}_{chunks}", dsn, kind, chunks)
    figures: dict[str, float] = {}

    def record(name: str, figure: Figure) -> None:
        figures[name] = figure.seconds
        figures[f"{name}_rss"] = figure.rss_mib
        print(f"  {kind:<11} {chunks:>6}  {name:<18} {figure.seconds:8.2f} s  {figure.rss_mib:6.0f} MiB", flush=True)

    record("plan", archiver(policies, "plan", "scale"))
    record("retention_dry_run", archiver(policies, "retention", "scale", "--dry-run"))
    record("archive_500", archiver(policies, "archive", "scale"))
    figures["archive_per_chunk_ms"] = figures["archive_500"] / DUE * 1000
    record("status", archiver(policies, "status"))
    raw = raw_dump_seconds(dsn, policies, 15)
    record("backup", archiver(policies, "backup", "scale"))
    figures["backup_ratio"] = figures["backup"] / raw
    print(f"  {kind:<11} {chunks:>6}  pg_dump | zstd     {raw:8.2f} s   backup ratio {figures['backup_ratio']:.2f}x; "
          f"archive {figures['archive_per_chunk_ms']:.0f} ms/chunk", flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hypertable", type=int, nargs="*", default=[1000, 10000], help="chunk counts")
    parser.add_argument("--native", type=int, nargs="*", default=[300, 3000], help="partition counts")
    options = parser.parse_args()
    with LocalPostgres(settings={"max_locks_per_transaction": "512"}) as instance, \
            tempfile.TemporaryDirectory(prefix="archiver-catalog-bench-") as work:
        root = Path(work)
        os.chmod(root, 0o755)
        print(f"load {os.getloadavg()[0]:.1f}; TimescaleDB {'yes' if instance.timescaledb else 'no'}", flush=True)
        results = {}
        for kind, sizes in (("timescaledb", options.hypertable if instance.timescaledb else []),
                            ("native", options.native)):
            for chunks in sizes:
                results[(kind, chunks)] = run_size(instance, root, kind, chunks)
        for kind, sizes in (("timescaledb", options.hypertable), ("native", options.native)):
            if len(sizes) == 2 and all((kind, size) in results for size in sizes):
                small, large = (results[(kind, size)] for size in sizes)
                growth = ", ".join(f"{name} x{large[name] / small[name]:.1f}" for name in
                                   ("plan", "retention_dry_run", "archive_per_chunk_ms", "status", "backup")
                                   if small[name])
                print(f"{kind}: {sizes[0]} -> {sizes[1]} chunks ({sizes[1] / sizes[0]:.0f}x): {growth}")


if __name__ == "__main__":
    main()
