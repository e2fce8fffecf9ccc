"""Nasty passwords in DSNs: no fragment of them reaches any output, whatever the DSN's form
and whichever path reads it (policy load, policy show, a failed connection, a restore target).

libpq ends a URL's password at the first '@': ``postgresql://u:p@ss:w0rd@host/db`` has the
password ``p``, the host ``ss`` and the port ``w0rd@host``, and a '/' in the password hides the
'@' altogether. Such URLs are refused (exit 2) with a message that quotes none of them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import quote

import pytest

from archiver.errors import UsageError
from archiver.pg.dsn import parse_dsn, redact_dsn
from archiver.pg.scratch import LocalPostgres
from tests.helpers import run_cli

PASSWORDS = [
    "Qj7@Kp:w0/Rz",         # @ : /
    "Vb%4Nq Hx'Tm\"Ly",     # % (not an escape), a space, both quotes
    "Wf@@Gt::Yp//Ue%%",     # doubled separators
    "Dk o@r:Xs/%zz Mn",     # all of them
]
ROLE = "nosuchrole_zq"  # does not exist: the server refuses the login at once (no retries)
POLICY = """\
database: {dsn: "${APP_DSN}"}
storage: {url: "file://STORE"}
backup: {schedule: "0 2 * * *"}
"""


def kv_quoted(password: str, port: int) -> str:
    escaped = password.replace("\\", "\\\\").replace("'", "\\'")
    return f"host=127.0.0.1 port={port} user={ROLE} dbname=postgres password='{escaped}'"


def kv_unquoted(password: str, port: int) -> str:
    return f"host=127.0.0.1 port={port} user={ROLE} dbname=postgres password={password}"


def url_encoded(password: str, port: int) -> str:
    return f"postgresql://{ROLE}:{quote(password, safe='')}@127.0.0.1:{port}/postgres"


def url_raw(password: str, port: int) -> str:
    return f"postgresql://{ROLE}:{password}@127.0.0.1:{port}/postgres"


FORMS = {"kv_quoted": kv_quoted, "kv_unquoted": kv_unquoted, "url_encoded": url_encoded, "url_raw": url_raw}


def fragments(secret: str) -> set[str]:
    """Every substring of four characters or more, as written and as JSON logs escape it."""
    parts = {secret[i:j] for i in range(len(secret)) for j in range(i + 4, len(secret) + 1)}
    return parts | {json.dumps(part)[1:-1] for part in parts}


def assert_no_fragment(output: str, *secrets: str) -> None:
    for secret in secrets:
        leaked = sorted(part for part in fragments(secret) if part in output)
        assert not leaked, f"fragments of the password in the output: {leaked}\n{output}"


def parses(dsn: str) -> bool:
    try:
        parse_dsn(dsn)
    except UsageError:
        return False
    return True


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("password", PASSWORDS)
def test_no_fragment_of_a_password_reaches_any_output(pg: LocalPostgres, tmp_path: Path, form: str,
                                                      password: str) -> None:
    dsn = FORMS[form](password, pg.port or 0)
    secrets = [password, quote(password, safe="")]
    well_formed = parses(dsn)
    if form in ("kv_quoted", "url_encoded"):
        assert well_formed and parse_dsn(dsn)["password"] == password
    if form == "url_raw":
        assert not well_formed  # every one of these passwords holds an '@', a '/' or a bad '%'
    (tmp_path / "policies").mkdir()
    policy = tmp_path / "policies" / "app.yaml"
    policy.write_text(POLICY.replace("STORE", str(tmp_path / "store")))
    env = {**os.environ, "APP_DSN": dsn}
    policies = ("--policies", str(tmp_path / "policies"))

    validate = run_cli(*policies, "policy", "validate", "--check-env", env=env)
    show = run_cli(*policies, "policy", "show", "app", env=env)
    backup = run_cli(*policies, "backup", "app", env=env)
    restore = run_cli(*policies, "restore", "app", "--yes", env={**env, "ARCHIVER_RESTORE_TARGET": dsn})
    typed = run_cli(*policies, "restore", "app", "--yes", "--target", dsn, env=env)
    for result in (validate, show, backup, restore, typed):
        assert "Traceback" not in result.output
        assert_no_fragment(result.output, *secrets)

    if well_formed:
        assert validate.code == 0, validate.output
        assert show.code == 0 and "password=********" in show.stdout, show.output
        assert backup.code == 1 and f'role "{ROLE}" does not exist' in backup.stderr, backup.output
        assert "password=********" in backup.stderr
        assert restore.code == 2 and "no backups in" in restore.stderr, restore.output  # the target was accepted
        assert typed.code == 2 and "--target holds a password" in typed.stderr, typed.output
    else:
        assert validate.code == 2 and f"{policy}:1:17  database.dsn: not a valid PostgreSQL connection" \
            in validate.stdout, validate.output
        assert show.code == 2 and f"{policy}:1:17  database.dsn: not a valid PostgreSQL" in show.stderr
        assert backup.code == 2 and "database.dsn: not a valid PostgreSQL" in backup.stderr
        assert restore.code == 2 and "error: ARCHIVER_RESTORE_TARGET (for --target): not a valid PostgreSQL" \
            in restore.stderr, restore.output
        assert typed.code == 2 and "error: --target: not a valid PostgreSQL" in typed.stderr, typed.output


def test_an_unescaped_at_in_a_url_is_refused_and_the_fix_is_named() -> None:
    for dsn in ("postgresql://app:p@ss:w0rd@db.internal/app", "postgresql://app:pa/ss@db.internal/app",
                "postgres://app:x@y@db.internal:5432/app?sslmode=require"):
        with pytest.raises(UsageError) as caught:
            parse_dsn(dsn, source="--target")
        assert str(caught.value) == (
            "--target: not a valid PostgreSQL connection URL: an '@' is not percent-encoded (a user or password "
            "holding '@', '/' or ':' must write them as %40, %2F and %3A, or use the key=value form: password='...')")
        assert redact_dsn(dsn) == "<unparseable dsn>"
    assert parse_dsn("postgresql://app:p%40ss%2Fw@db.internal/app?user=x@corp")["password"] == "p@ss/w"


def test_a_dsn_that_holds_no_password_keeps_libpq_words_naming_the_option() -> None:
    with pytest.raises(UsageError, match='^--target: not a valid PostgreSQL connection string: invalid connection '
                                         'option "hots"$'):
        parse_dsn("hots=db dbname=app", source="--target")
    with pytest.raises(UsageError) as caught:
        parse_dsn("hots=db dbname=app password=Zr8kLm")
    assert str(caught.value) == ("not a valid PostgreSQL connection string: an unknown connection option (or a value "
                                 "holding spaces without quotes: write key='a b')")


def test_a_dsn_file_is_checked_when_read(tmp_path: Path) -> None:
    secret = tmp_path / "dsn"
    secret.write_text("postgresql://app:Pw@9x/Tq@db.internal/app\n")
    secret.chmod(0o600)
    (tmp_path / "app.yaml").write_text(f"database: {{dsn_file: {secret}}}\nstorage: {{url: 'file:///srv/app'}}\n"
                                       "backup: {schedule: '0 2 * * *'}\n")
    result = run_cli("--policies", str(tmp_path), "backup", "app")
    assert result.code == 2, result.output
    assert f"error: database.dsn_file {secret}: not a valid PostgreSQL connection URL" in result.stderr
    assert_no_fragment(result.output, "Pw@9x/Tq")
