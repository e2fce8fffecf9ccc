"""Start-up cost of the command line, and what a backup carries of it: wall time and peak RSS.

    .venv/bin/python bench/startup_bench.py                      # this checkout's archiver
    .venv/bin/python bench/startup_bench.py --archiver /other/checkout/.venv/bin/archiver --json out.json

Measured, each in a fresh process:
- ``archiver --help`` (and ``archiver run --help``, which loads the task list): wall time (median of
  ``--repeat`` runs) and peak RSS (GNU time's maximum resident set size; Debian package ``time``);
- the modules ``archiver --help`` imports (``-X importtime``): the heavy third-party ones by name;
- ``archiver run NAME backup --json`` of a small database (one table, 200 000 rows) into a file store:
  wall time and the backup's own peak RSS (VmHWM, the ``peak_rss_bytes`` metric of its result).

To compare before and after, run it twice, once with each checkout's ``archiver`` (the same machine, one
after the other); the figures go into the closing note of the change.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from archiver.pg.connect import execute
from archiver.pg.scratch import LocalPostgres

MiB = 1024 * 1024
HEAVY = ("pyarrow", "boto3", "botocore", "psycopg", "adbc_driver_manager", "adbc_driver_postgresql",
         "prometheus_client", "apscheduler", "zstandard", "yaml", "tenacity")


def measure(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, int, str]:
    """Wall seconds, peak RSS bytes and stdout of one run of ``argv``.

    The peak RSS comes from GNU time (``/usr/bin/time -f %M``): a child forked from this (larger) Python
    process would count this process's pages in its own ``ru_maxrss``."""
    with tempfile.NamedTemporaryFile("r") as usage, tempfile.TemporaryFile() as out:
        started = time.monotonic()
        code = subprocess.call(["/usr/bin/time", "-f", "%M", "-o", usage.name, *argv], stdout=out,
                               stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})})
        seconds = time.monotonic() - started
        if code != 0:
            raise SystemExit(f"{' '.join(argv)} exited {code}")
        out.seek(0)
        return seconds, int(usage.read().split()[-1]) * 1024, out.read().decode()


def startup(archiver: str, args: list[str], repeat: int) -> dict[str, Any]:
    measure([archiver, *args])  # warm the page cache
    runs = [measure([archiver, *args]) for _ in range(repeat)]
    return {"command": " ".join(["archiver", *args]), "wall_seconds_median": statistics.median(r[0] for r in runs),
            "wall_seconds_min": min(r[0] for r in runs), "peak_rss_bytes": max(r[1] for r in runs)}


def heavy_imports(archiver: str) -> list[str]:
    """Which heavy packages ``archiver --help`` imports (its console script's interpreter, -X importtime)."""
    python = Path(archiver).with_name("python")
    result = subprocess.run([str(python), "-I", "-X", "importtime", "-c",
                             "import sys; sys.argv = ['archiver', '--help']\n"
                             "from archiver.cli import main\n"
                             "try:\n    main()\nexcept SystemExit:\n    pass"],
                            capture_output=True, text=True, cwd="/")
    loaded = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines() if "|" in line}
    return sorted(name for name in HEAVY if name in loaded)


def backup_rss(archiver: str, workdir: Path) -> dict[str, Any]:
    with LocalPostgres(base_dir=str(workdir)) as server:
        dsn = server.create_database("bench")
        execute(dsn, "CREATE TABLE readings AS SELECT g AS id, now() - g * interval '1 second' AS at, "
                     "md5(g::text) AS payload FROM generate_series(1, 200000) AS g")
        policies = workdir / "policies"
        policies.mkdir()
        (policies / "bench.yaml").write_text(
            f"database: {{dsn: '{dsn}'}}\nstorage: {{url: 'file://{workdir}/store'}}\n"
            "backup: {schedule: '0 3 * * *'}\n")
        seconds, _, stdout = measure([archiver, "--policies", str(policies), "run", "bench", "backup", "--json"])
    document = json.loads(stdout.strip().splitlines()[-1])
    return {"wall_seconds": seconds, "peak_rss_bytes": int(document["metrics"]["peak_rss_bytes"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archiver", default=str(Path(sys.executable).with_name("archiver")),
                        help="the archiver console script to measure (default: this venv's)")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--workdir", default="/var/tmp", help="where the throw-away PostgreSQL lives")
    parser.add_argument("--json", dest="json_path", help="also write the figures here")
    options = parser.parse_args()
    figures: dict[str, Any] = {"archiver": options.archiver,
                               "startup": [startup(options.archiver, args, options.repeat)
                                           for args in (["--help"], ["run", "--help"])],
                               "help_imports": heavy_imports(options.archiver)}
    with tempfile.TemporaryDirectory(dir=options.workdir, prefix="archiver-startup-bench-") as workdir:
        os.chmod(workdir, 0o755)
        figures["backup"] = backup_rss(options.archiver, Path(workdir))
    for entry in figures["startup"]:
        print(f"{entry['command']:<22} wall {entry['wall_seconds_median']:.3f} s (median of {options.repeat}, "
              f"min {entry['wall_seconds_min']:.3f} s)  peak RSS {entry['peak_rss_bytes'] / MiB:.1f} MiB")
    print(f"heavy modules `archiver --help` imports: {', '.join(figures['help_imports']) or 'none'}")
    print(f"archiver run bench backup  wall {figures['backup']['wall_seconds']:.2f} s  "
          f"peak RSS {figures['backup']['peak_rss_bytes'] / MiB:.1f} MiB")
    if options.json_path:
        Path(options.json_path).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
