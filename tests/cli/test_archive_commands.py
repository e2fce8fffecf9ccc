"""The cold-tier commands as operators run them: the real console entry point, exit codes, output."""

from __future__ import annotations

import json
from pathlib import Path

from tests.coldtier_helpers import create_readings, sql
from tests.helpers import run_cli


def write_policy(tmp_path: Path, dsn: str, extra: str = "") -> Path:
    directory = tmp_path / "policies"
    directory.mkdir(exist_ok=True)
    (directory / "telemetry.yaml").write_text(f"""\
database: {{dsn: "${{TELEMETRY_DSN}}"}}
storage: {{url: "file://{tmp_path}/store"}}
archive:
  schedule: "30 1 * * *"
  tables:
    - {{table: public.readings, archive_after: 30d, drop_after: 50d{extra}}}
  cold_retention: 2y
""")
    return directory


def test_plan_archive_retention_from_the_command_line(database: str, tmp_path: Path) -> None:
    create_readings(database)
    policies = str(write_policy(tmp_path, database))
    env = {"TELEMETRY_DSN": database}

    plan = run_cli("--policies", policies, "plan", "telemetry", env=env)
    assert plan.code == 5, plan.output  # nothing archived yet: drops would be held back
    assert plan.stdout.splitlines()[0] == "public.readings"
    assert plan.stdout.count("archive    would export") == 1 and plan.stdout.count("no archive of this range") == 1
    assert "archive    would export   4 chunks from " in plan.stdout, "a run of alike chunks is one line"
    every = run_cli("--policies", policies, "-v", "plan", "telemetry", env=env)
    assert every.stdout.count("archive    would export") == 4 and every.stdout.count("no archive of this range") == 4

    archived = run_cli("--policies", policies, "--log-format", "json", "archive", "telemetry", env=env)
    assert archived.code == 0, archived.output
    assert archived.stdout.count("exported") == 4
    assert "archived 4 chunk(s) (200 rows" in archived.stdout
    done = [json.loads(line) for line in archived.stderr.splitlines() if '"archive.done"' in line]
    assert done and done[0]["chunks_archived"] == 4 and done[0]["peak_rss_bytes"] > 0

    dry = run_cli("--policies", policies, "retention", "telemetry", "--dry-run", env=env)
    assert dry.code == 0 and "would drop     public.readings 4 chunks from " in dry.stdout, dry.output
    assert sql(database, "SELECT count(*) FROM readings")[0][0] == 200

    dropped = run_cli("--policies", policies, "retention", "telemetry", env=env)
    assert dropped.code == 0 and "dropped 4 chunk(s), held back 0" in dropped.stdout, dropped.output
    assert sql(database, "SELECT count(*) FROM readings")[0][0] == 0


def test_usage_errors_and_held_back_chunks_have_their_own_exit_codes(database: str, tmp_path: Path) -> None:
    create_readings(database)
    sql(database, "INSERT INTO readings VALUES ((current_date - 80)::timestamptz + interval '20 hours', 1, 1, 'NaN')")
    policies = str(write_policy(tmp_path, database))
    env = {"TELEMETRY_DSN": database}

    unknown = run_cli("--policies", policies, "archive", "telemetry", "--table", "public.nope", env=env)
    assert unknown.code == 2 and "table 'public.nope' is not in the policy's archive.tables" in unknown.stderr

    held = run_cli("--policies", policies, "archive", "telemetry", "--table", "readings", env=env)
    assert held.code == 5, held.output
    assert "hold" in held.stdout and "text_columns" in held.stdout

    missing = write_policy(tmp_path, database, extra=", text_columns: [nope]")
    refused = run_cli("--policies", str(missing), "archive", "telemetry", env=env)
    assert refused.code == 2 and "text_columns names columns that do not exist: nope" in refused.stderr

    sql(database, "CREATE TABLE plain (time timestamptz)")
    (Path(policies) / "telemetry.yaml").write_text((Path(policies) / "telemetry.yaml").read_text()
                                                   .replace("public.readings", "public.plain"))
    plain = run_cli("--policies", policies, "retention", "telemetry", env=env)
    assert plain.code == 2 and "neither a TimescaleDB hypertable nor a range-partitioned table" in plain.stderr


def test_a_policy_without_an_archive_section_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "app.yaml").write_text("database: {dsn: 'dbname=app'}\nstorage: {url: 'file:///srv/app'}\n")
    result = run_cli("--policies", str(tmp_path), "plan", "app")
    assert result.code == 2 and "policy 'app' has no archive section" in result.stderr
