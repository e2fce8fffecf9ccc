-- The trial's three databases, shaped like a real platform's (see README, "docker-compose trial"):
--   identity   users, api_keys, audit_logs                               plain PostgreSQL
--   app        energy_communities, devices, assets, asset_mappings,
--              processed_messages                                        plain PostgreSQL
--   telemetry  asset_metrics, market_prices, interconnection_flows       TimescaleDB hypertables
-- Run once by the timescaledb image's entrypoint (psql, as postgres). Telemetry holds 30 days in
-- daily chunks, so the trial policies (archive after 7 days, drop after 14) have work at once.
-- Asset ids are the same in app and telemetry (derived from the asset number), as the services
-- that join them in application code expect.

\set ON_ERROR_STOP on

-- template0: the image installed TimescaleDB into template1; identity and app do not use it.
CREATE DATABASE identity TEMPLATE template0;
CREATE DATABASE app TEMPLATE template0;
CREATE DATABASE telemetry TEMPLATE template0;

\connect identity

CREATE TABLE users (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email        text NOT NULL UNIQUE,
    display_name text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    disabled_at  timestamptz
);

CREATE TABLE api_keys (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         text NOT NULL,
    key_hash     bytea NOT NULL,
    scopes       text[] NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX api_keys_user_id_idx ON api_keys (user_id);

CREATE TABLE audit_logs (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id     uuid REFERENCES users (id) ON DELETE SET NULL,
    action      text NOT NULL,
    details     jsonb NOT NULL DEFAULT '{}',
    ip          inet,
    occurred_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_logs_occurred_at_idx ON audit_logs (occurred_at);

INSERT INTO users (email, display_name, created_at)
SELECT format('user%s@example.com', n), format('User %s', n), now() - make_interval(days => 400 - n)
FROM generate_series(1, 50) AS n;

INSERT INTO api_keys (user_id, name, key_hash, scopes, created_at, last_used_at)
SELECT u.id, format('key %s', k), sha256(convert_to(u.email || k, 'UTF8')),
       CASE WHEN k = 1 THEN ARRAY['metrics:read'] ELSE ARRAY['metrics:read', 'assets:write'] END,
       u.created_at + interval '1 day', now() - make_interval(hours => k)
FROM users u CROSS JOIN generate_series(1, 2) AS k;

INSERT INTO audit_logs (user_id, action, details, ip, occurred_at)
SELECT u.id, (ARRAY['login', 'logout', 'api_key.created', 'password.changed'])[1 + n % 4],
       jsonb_build_object('user_agent', 'trial', 'n', n), '192.0.2.1'::inet + (n % 200),
       now() - make_interval(mins => n * 7)
FROM generate_series(1, 2000) AS n
JOIN LATERAL (SELECT id FROM users ORDER BY email OFFSET n % 50 LIMIT 1) AS u ON true;

\connect app

CREATE TABLE energy_communities (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name       text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE devices (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id     uuid NOT NULL,
    device_id     text NOT NULL UNIQUE,
    name          text NOT NULL,
    serial_number text NOT NULL,
    metadata      jsonb NOT NULL DEFAULT '{}',
    last_seen_at  timestamptz
);

CREATE TABLE assets (
    id           uuid PRIMARY KEY,
    tenant_id    uuid NOT NULL,
    community_id uuid REFERENCES energy_communities (id),
    user_id      uuid,  -- identity's users.id: no foreign key across databases
    name         text NOT NULL,
    type         text NOT NULL CHECK (type IN ('pv', 'battery', 'heat_pump', 'meter')),
    capacity_kw  numeric(10, 2),
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE asset_mappings (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    asset_id   uuid NOT NULL REFERENCES assets (id) ON DELETE CASCADE,
    device_id  uuid NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    data_point text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (asset_id, device_id, data_point)
);

-- Idempotency keys of the ingestion service: the policy backs up their definition, not their rows.
CREATE TABLE processed_messages (
    message_id   text PRIMARY KEY,
    processed_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO energy_communities (name)
SELECT format('Community %s', n) FROM generate_series(1, 3) AS n;

INSERT INTO devices (tenant_id, device_id, name, serial_number, metadata, last_seen_at)
SELECT '00000000-0000-4000-8000-000000000001', format('dev-%s', n), format('Gateway %s', n),
       format('SN-%s', 10000 + n), jsonb_build_object('firmware', '1.4.' || n % 3), now()
FROM generate_series(1, 20) AS n;

INSERT INTO assets (id, tenant_id, community_id, name, type, capacity_kw)
SELECT md5('asset-' || n)::uuid, '00000000-0000-4000-8000-000000000001',
       (SELECT id FROM energy_communities ORDER BY name OFFSET n % 3 LIMIT 1),
       format('Asset %s', n), (ARRAY['pv', 'battery', 'heat_pump', 'meter'])[1 + n % 4], 5 + n
FROM generate_series(1, 20) AS n;

INSERT INTO asset_mappings (asset_id, device_id, data_point)
SELECT md5('asset-' || n)::uuid, d.id, p
FROM generate_series(1, 20) AS n
JOIN devices d ON d.device_id = format('dev-%s', n)
CROSS JOIN unnest(ARRAY['power_kw', 'energy_kwh']) AS p;

INSERT INTO processed_messages (message_id)
SELECT format('msg-%s', n) FROM generate_series(1, 500) AS n;

\connect telemetry

CREATE EXTENSION IF NOT EXISTS timescaledb;

CREATE TABLE asset_metrics (
    time     timestamptz NOT NULL,
    asset_id uuid NOT NULL,
    metric   text NOT NULL,
    value    double precision NOT NULL,
    quality  smallint NOT NULL DEFAULT 0
);
SELECT create_hypertable('asset_metrics', 'time', chunk_time_interval => INTERVAL '1 day');
CREATE INDEX asset_metrics_asset_time_idx ON asset_metrics (asset_id, time DESC);

CREATE TABLE market_prices (
    time          timestamptz NOT NULL,
    market        text NOT NULL,
    zone          text NOT NULL,
    price_eur_mwh numeric(10, 2) NOT NULL
);
SELECT create_hypertable('market_prices', 'time', chunk_time_interval => INTERVAL '1 day');

CREATE TABLE interconnection_flows (
    time      timestamptz NOT NULL,
    from_zone text NOT NULL,
    to_zone   text NOT NULL,
    flow_mw   double precision NOT NULL
);
SELECT create_hypertable('interconnection_flows', 'time', chunk_time_interval => INTERVAL '1 day');

-- 20 assets x 2 metrics every 15 minutes for 30 days.
INSERT INTO asset_metrics (time, asset_id, metric, value)
SELECT t, md5('asset-' || n)::uuid, m,
       CASE m WHEN 'power_kw' THEN greatest(0, 5 * sin(extract(epoch FROM t) / 13751.0) + n % 3)
              ELSE extract(epoch FROM t - date_trunc('day', t)) / 3600.0 * (1 + n % 5) END
FROM generate_series(date_trunc('hour', now()) - interval '30 days', now(), interval '15 minutes') AS t
CROSS JOIN generate_series(1, 20) AS n
CROSS JOIN unnest(ARRAY['power_kw', 'energy_kwh']) AS m;

INSERT INTO market_prices (time, market, zone, price_eur_mwh)
SELECT t, market, zone, round((60 + 40 * sin(extract(epoch FROM t) / 43200.0) + length(zone))::numeric, 2)
FROM generate_series(date_trunc('hour', now()) - interval '30 days', now(), interval '1 hour') AS t
CROSS JOIN (VALUES ('EPEX', 'DE-LU'), ('EPEX', 'AT'), ('NORDPOOL', 'SE3')) AS z (market, zone);

INSERT INTO interconnection_flows (time, from_zone, to_zone, flow_mw)
SELECT t, f, tz, 500 * cos(extract(epoch FROM t) / 21600.0)
FROM generate_series(date_trunc('hour', now()) - interval '30 days', now(), interval '1 hour') AS t
CROSS JOIN (VALUES ('DE-LU', 'AT'), ('DE-LU', 'SE3')) AS p (f, tz);
