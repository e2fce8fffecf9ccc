"""DSNs are parsed (libpq's parser) and redacted; no password reaches messages or logs."""

from __future__ import annotations

import io
import json
import logging

import pytest

from archiver.common import log
from archiver.errors import DatabaseError
from archiver.pg.connect import connect
from archiver.pg.dsn import dsn_env, parse_dsn, redact_dsn
from archiver.pg.scratch import free_port


@pytest.mark.parametrize("dsn, secret", [
    ("postgresql://app:p%40ss%3Aword@db.internal:5432/app", "p@ss:word"),
    ("host=db user=app password='we:ird@pass word' dbname=app", "we:ird@pass word"),
    ("postgres://u:simple@h/d?sslmode=require", "simple"),
])
def test_redaction_finds_passwords_with_special_characters(dsn: str, secret: str) -> None:
    redacted = redact_dsn(dsn)
    assert secret not in redacted
    assert "password=********" in redacted
    assert parse_dsn(dsn)["password"] == secret


def test_connection_errors_never_carry_the_password() -> None:
    dsn = f"host=127.0.0.1 port={free_port()} user=app password=TopSecret-42 dbname=app connect_timeout=2"
    with pytest.raises(DatabaseError) as caught:
        with connect(dsn):
            pass
    assert "TopSecret-42" not in str(caught.value)
    assert "cannot connect to" in str(caught.value) and "password=********" in str(caught.value)


def test_dsn_env_keeps_the_password_out_of_argv() -> None:
    env = dsn_env("postgresql://app:pw@db:6432/app?sslmode=require")
    assert env == {"PGUSER": "app", "PGPASSWORD": "pw", "PGHOST": "db", "PGPORT": "6432", "PGDATABASE": "app",
                   "PGSSLMODE": "require"}


def test_registered_secrets_are_scrubbed_from_json_logs() -> None:
    stream = io.StringIO()
    log.setup("json", 0, stream)
    log.register_secret("hunter2-secret")
    log.get_logger("test").info("connecting", extra=log.fields(policy="app", detail="password=hunter2-secret"))
    event = json.loads(stream.getvalue())
    assert event["event"] == "connecting" and event["policy"] == "app"
    assert "hunter2-secret" not in stream.getvalue()
    logging.getLogger("archiver").handlers.clear()
