"""``plan`` on many chunks: runs of alike decisions are one line each, ``-v`` and ``--json`` every chunk."""

from __future__ import annotations

import json
import re
from pathlib import Path

from archiver.pg.connect import execute, query
from tests.coldtier.test_catalog_scale import one_row_partitions
from tests.helpers import run_cli


def utc_bound(dsn: str, days_ago: int) -> str:
    """The partition bound ``current_date - days_ago`` as the plan prints it (UTC)."""
    sql = (f"SELECT pg_catalog.to_char((current_date - {days_ago})::timestamptz AT TIME ZONE 'UTC', "
           "'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')")
    return str(query(dsn, sql)[0][0])


def test_plan_prints_runs_of_alike_chunks_as_one_line_and_every_chunk_on_request(tmp_path: Path, pg) -> None:  # type: ignore[no-untyped-def]
    dsn = pg.create_database("plan_summary")
    one_row_partitions(dsn, "metrics", 60)  # metrics_dN holds [current_date - N - 1, current_date - N)
    directory = tmp_path / "policies"
    directory.mkdir()
    (directory / "telemetry.yaml").write_text(
        f"database: {{dsn: '{dsn}'}}\nstorage: {{url: 'file://{tmp_path}/store'}}\n"
        "archive:\n  schedule: '30 1 * * *'\n  tables:\n"
        "    - {table: public.metrics, archive_after: 20d, drop_after: 40d}\n")
    cli = ["--policies", str(directory)]
    assert run_cli(*cli, "archive", "telemetry").code == 0  # metrics_d20 .. metrics_d59
    execute(dsn, "INSERT INTO public.metrics VALUES (current_date - 30 + interval '2 hours', -1)")  # late, in d29

    brief = run_cli(*cli, "plan", "telemetry")
    assert brief.code == 0, brief.stderr
    lines = [re.sub(r"\s+", " ", line.strip()) for line in brief.stdout.splitlines()]
    assert (f"archive skip 30 chunks from {utc_bound(dsn, 60)} to {utc_bound(dsn, 30)}: "
            "verified archive v1 still matches (1 rows)") in lines
    assert any(line.startswith("archive would export public.metrics_d29: 1 row(s) added") for line in lines), lines
    assert (f"archive skip 9 chunks from {utc_bound(dsn, 29)} to {utc_bound(dsn, 20)}: "
            "verified archive v1 still matches (1 rows)") in lines, "the late chunk splits the run in two"
    assert any(line.startswith("archive wait 20 chunk(s) not due yet") for line in lines), lines
    drops = [line for line in lines if line.startswith("retention would drop")]
    assert len(drops) == 1 and drops[0].startswith(
        f"retention would drop 20 chunks from {utc_bound(dsn, 60)} to {utc_bound(dsn, 40)}: verified archive v1 matches")
    assert drops[0].endswith("(and alike, with other numbers)"), "each reason names its own object"
    assert len(lines) == 7, lines  # the table, five decision lines, the summary

    every = run_cli(*cli, "-v", "plan", "telemetry")
    assert every.code == 0
    skipped = re.findall(r"skip\s+public\.metrics_d(\d+):", every.stdout)
    dropped = re.findall(r"would drop\s+public\.metrics_d(\d+):", every.stdout)
    assert sorted(map(int, skipped)) == [day for day in range(20, 60) if day != 29]
    assert sorted(map(int, dropped)) == list(range(40, 60))

    document = run_cli(*cli, "plan", "telemetry", "--json")
    assert document.code == 0, document.stderr
    decisions = json.loads(document.stdout)["data"]["decisions"]
    per_chunk = [d for d in decisions if d["subject"].startswith("public.metrics_d")]
    assert sorted((d["task"], d["subject"]) for d in per_chunk) == sorted(
        [("archive", f"public.metrics_d{day}") for day in range(20, 60)]
        + [("retention", f"public.metrics_d{day}") for day in range(40, 60)])
    assert all(d["start"] and d["end"] for d in per_chunk)
