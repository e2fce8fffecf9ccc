"""``archiver demo``: the whole cycle on an embedded default, for a first look.

A local PostgreSQL cluster (TimescaleDB when installed) with three databases shaped like the
shipped policies (identity, app, telemetry with months of time-series data), a local file
store, and policies pointing at them; then backup, archive, retention and a verify drill for
each, through the same code path as ``archiver run``.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..common.result import TaskResult
from ..errors import UsageError
from ..pg.connect import execute_script, query
from ..pg.scratch import LocalPostgres
from ..policy.files import get_policy
from ..policy.load import dump_yaml
from ..tasks import ARCHIVE, BACKUP, RETENTION, VERIFY, Task
from .runner import run_task
from .status import PolicyStatus, all_status

MARKER = ".archiver-demo"
DAYS = 100

IDENTITY_SQL = """
CREATE TABLE users (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), email text UNIQUE NOT NULL,
                    display_name text, roles text[] NOT NULL DEFAULT '{}', created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE api_keys (id bigserial PRIMARY KEY, user_id uuid NOT NULL REFERENCES users(id), key_hash bytea NOT NULL,
                       scopes text[] NOT NULL, expires_at timestamptz);
CREATE TABLE audit_logs (id bigserial PRIMARY KEY, user_id uuid, action text NOT NULL, details jsonb,
                         at timestamptz NOT NULL DEFAULT now());
INSERT INTO users (email, display_name, roles)
  SELECT 'user' || g || '@example.org', 'User ' || g, CASE WHEN g % 10 = 0 THEN '{admin}'::text[] ELSE '{viewer}' END
  FROM generate_series(1, 250) g;
INSERT INTO api_keys (user_id, key_hash, scopes, expires_at)
  SELECT id, sha256(convert_to(email, 'UTF8')), '{read,write}', now() + interval '90 days' FROM users WHERE random() < 0.4;
INSERT INTO audit_logs (user_id, action, details, at)
  SELECT u.id, (ARRAY['login','logout','key.create','role.grant'])[1 + g % 4],
         jsonb_build_object('ip', '10.0.' || (g % 255) || '.' || (g % 97)), now() - (g || ' minutes')::interval
  FROM users u CROSS JOIN generate_series(1, 20) g;
"""

APP_SQL = """
CREATE TABLE energy_communities (id serial PRIMARY KEY, name text NOT NULL, country char(2) NOT NULL);
CREATE TABLE devices (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), tenant_id int NOT NULL, serial_number text UNIQUE,
                      kind text NOT NULL, metadata jsonb NOT NULL DEFAULT '{}', last_seen_at timestamptz);
CREATE TABLE assets (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), community_id int REFERENCES energy_communities(id),
                     name text NOT NULL, capacity_kw numeric(10,2), location point);
CREATE TABLE asset_mappings (asset_id uuid NOT NULL REFERENCES assets(id), device_id uuid NOT NULL REFERENCES devices(id),
                             data_point text NOT NULL, PRIMARY KEY (asset_id, device_id, data_point));
CREATE TABLE processed_messages (message_id uuid PRIMARY KEY, processed_at timestamptz NOT NULL DEFAULT now());
INSERT INTO energy_communities (name, country) VALUES ('Sonnenfeld', 'DE'), ('Zonnedorp', 'NL'), ('Solbyen', 'DK');
INSERT INTO devices (tenant_id, serial_number, kind, metadata, last_seen_at)
  SELECT 1 + g % 3, 'SN-' || lpad(g::text, 6, '0'), (ARRAY['inverter','meter','battery'])[1 + g % 3],
         jsonb_build_object('firmware', '1.' || (g % 7)), now() - (g || ' seconds')::interval
  FROM generate_series(1, 120) g;
INSERT INTO assets (community_id, name, capacity_kw, location)
  SELECT 1 + g % 3, 'asset-' || g, (g * 7.5)::numeric(10,2), point(g, g * 2) FROM generate_series(1, 40) g;
INSERT INTO asset_mappings
  SELECT a.id, d.id, 'power' FROM (SELECT id, row_number() OVER (ORDER BY name) AS n FROM assets) a
  JOIN (SELECT id, row_number() OVER (ORDER BY serial_number) AS n FROM devices) d ON d.n = a.n;
INSERT INTO processed_messages (message_id) SELECT gen_random_uuid() FROM generate_series(1, 500);
"""

TELEMETRY_TABLES_SQL = """
CREATE TABLE asset_metrics (time timestamptz NOT NULL, asset_id int NOT NULL, power_kw double precision,
                            energy_kwh numeric(14,3), quality smallint, tags jsonb);
CREATE TABLE market_prices (time timestamptz NOT NULL, zone text NOT NULL, price_eur_mwh numeric(10,2));
"""

TELEMETRY_HYPERTABLES_SQL = """
CREATE EXTENSION IF NOT EXISTS timescaledb;
SELECT create_hypertable('asset_metrics', 'time', chunk_time_interval => interval '1 day');
SELECT create_hypertable('market_prices', 'time', chunk_time_interval => interval '7 days');
"""

TELEMETRY_DATA_SQL = f"""
INSERT INTO asset_metrics
  SELECT t, a, 50 + 40 * sin(extract(epoch FROM t) / 7200 + a), (a * 1000 + extract(epoch FROM t) / 900)::numeric(14,3),
         CASE WHEN random() < 0.01 THEN NULL ELSE 1 END,
         CASE WHEN random() < 0.02 THEN jsonb_build_object('alarm', 'overtemp') END
  FROM generate_series(date_trunc('day', now()) - interval '{DAYS} days', now(), interval '15 minutes') t,
       generate_series(1, 12) a;
INSERT INTO market_prices
  SELECT t, z, (60 + 30 * cos(extract(epoch FROM t) / 43200))::numeric(10,2)
  FROM generate_series(date_trunc('day', now()) - interval '{DAYS} days', now(), interval '1 hour') t,
       unnest(ARRAY['DE-LU','NL','DK1']) z;
"""


def _native_partitions_sql() -> str:
    """Without TimescaleDB: the pg_partman layout, daily range partitions created by a DO block."""
    return f"""
CREATE TABLE asset_metrics (time timestamptz NOT NULL, asset_id int NOT NULL, power_kw double precision,
                            energy_kwh numeric(14,3), quality smallint, tags jsonb) PARTITION BY RANGE (time);
CREATE TABLE market_prices (time timestamptz NOT NULL, zone text NOT NULL, price_eur_mwh numeric(10,2))
  PARTITION BY RANGE (time);
DO $$
DECLARE d date;
BEGIN
  FOR d IN SELECT generate_series(current_date - {DAYS + 1}, current_date + 1, interval '1 day')::date LOOP
    EXECUTE format('CREATE TABLE asset_metrics_p%s PARTITION OF asset_metrics FOR VALUES FROM (%L) TO (%L)',
                   to_char(d, 'YYYYMMDD'), d, d + 1);
    EXECUTE format('CREATE TABLE market_prices_p%s PARTITION OF market_prices FOR VALUES FROM (%L) TO (%L)',
                   to_char(d, 'YYYYMMDD'), d, d + 1);
  END LOOP;
END $$;
"""


@dataclass
class DemoReport:
    directory: Path
    timescaledb: bool
    results: list[TaskResult] = field(default_factory=list)
    statuses: list[PolicyStatus] = field(default_factory=list)


def clean(directory: Path) -> bool:
    """Remove a previous demo's directory (only one that the demo made)."""
    if not directory.exists():
        return False
    if not (directory / MARKER).exists():
        raise UsageError(f"{directory} exists and was not made by `archiver demo`; refusing to delete it",
                         hint="choose another --dir")
    shutil.rmtree(directory)
    return True


def _policy_documents(instance: LocalPostgres, store_root: Path) -> dict[str, dict[str, Any]]:
    def base(name: str, schedule: str) -> dict[str, Any]:
        return {"database": {"dsn": instance.dsn(name)},
                "storage": {"url": f"file://{store_root / name}"},
                "backup": {"schedule": schedule, "retention": {"keep_last": 3, "keep_daily": 7, "keep_weekly": 4}},
                "verify": {"schedule": "0 6 * * 1", "scratch": {"kind": "local"}}}

    identity = base("identity", "0 2 * * *")
    identity["verify"]["checks"] = [{"name": "users exist", "sql": "SELECT count(*) FROM users", "expect": "> 0"}]
    app = base("app", "30 2 * * *")
    app["verify"]["checks"] = [{"name": "every mapping has an asset", "expect": "== 0",
                                "sql": "SELECT count(*) FROM asset_mappings m LEFT JOIN assets a ON a.id = m.asset_id "
                                       "WHERE a.id IS NULL"}]
    telemetry = base("telemetry", "0 3 * * 0")
    telemetry["backup"]["retention"] = {"keep_last": 2, "keep_weekly": 8}
    telemetry["archive"] = {"schedule": "30 1 * * *", "cold_retention": "2y", "tables": [
        {"table": "public.asset_metrics", "archive_after": "7d", "drop_after": "60d"},
        {"table": "public.market_prices", "archive_after": "7d", "drop_after": "60d"}]}
    telemetry["verify"]["checks"] = [{"name": "recent metrics present", "expect": "> 0",
                                      "sql": "SELECT count(*) FROM asset_metrics WHERE time > now() - interval '1 day'"}]
    return {"identity": identity, "app": app, "telemetry": telemetry}


def _create_databases(instance: LocalPostgres, say: Callable[[str], None]) -> None:
    for name, script in (("identity", IDENTITY_SQL), ("app", APP_SQL)):
        instance.create_database(name)
        execute_script(instance.dsn(name), script)
        tables = query(instance.dsn(name), "SELECT count(*) FROM pg_tables WHERE schemaname = %s", ("public",))[0][0]
        say(f"  {name}: {tables} tables")
    instance.create_database("telemetry")
    dsn = instance.dsn("telemetry")
    if instance.timescaledb:
        execute_script(dsn, TELEMETRY_TABLES_SQL + TELEMETRY_HYPERTABLES_SQL)
    else:
        execute_script(dsn, _native_partitions_sql())
    execute_script(dsn, TELEMETRY_DATA_SQL)
    rows = query(dsn, "SELECT count(*) FROM asset_metrics")[0][0]
    kind = "TimescaleDB hypertables" if instance.timescaledb else "native daily partitions"
    say(f"  telemetry: {rows:,} asset_metrics rows over {DAYS} days ({kind})")


def run_demo(directory: Path, say: Callable[[str], None]) -> DemoReport:
    clean(directory)
    directory.mkdir(parents=True)
    (directory / MARKER).write_text("made by `archiver demo`; `archiver demo --clean` removes this directory\n")
    store_root, policies_dir = directory / "store", directory / "policies"
    policies_dir.mkdir()
    say("starting a local PostgreSQL cluster ...")
    with LocalPostgres() as instance:
        report = DemoReport(directory, instance.timescaledb)
        say(f"  PostgreSQL {instance.major}" + (" with TimescaleDB" if instance.timescaledb else
                                                  " (TimescaleDB not installed: telemetry uses native partitions)"))
        say("creating the identity, app and telemetry databases ...")
        _create_databases(instance, say)
        for name, document in _policy_documents(instance, store_root).items():
            (policies_dir / f"{name}.yaml").write_text(dump_yaml(document))
        policies = {name: get_policy([policies_dir], name) for name in ("identity", "app", "telemetry")}
        steps: list[tuple[str, Task[Any]]] = [
            ("identity", BACKUP), ("app", BACKUP), ("telemetry", BACKUP), ("telemetry", ARCHIVE),
            ("telemetry", RETENTION), ("identity", VERIFY), ("app", VERIFY), ("telemetry", VERIFY)]
        for name, task in steps:
            say(f"{task.name} {name} ...")
            result = run_task(task, policies[name], task.options())
            report.results.append(result)
            say(f"  {result.summary}")
        report.statuses = all_status(list(policies.values()))
    return report
