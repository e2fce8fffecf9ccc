"""Policy rules of encryption and Object Lock: recipients checked with file:line, a private key on a writer
warned about, retention that deletes before a lock ends refused (always) or warned about (sometimes)."""

from __future__ import annotations

import json
import textwrap
from datetime import timedelta
from pathlib import Path

import pyrage

from archiver.policy.files import load
from archiver.policy.protect_rules import kept_for
from archiver.policy.schema import RetentionConfig
from tests.helpers import run_cli

RECIPIENT = str(pyrage.x25519.Identity.generate().to_public())


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def validate(path: Path) -> tuple[int, list[str], list[str]]:
    result = run_cli("policy", "validate", str(path), "--json")
    document = json.loads(result.stdout)
    show = lambda items: [f"{i['line']}:{i['column']} {i['key']}: {i['message']}" for i in items]  # noqa: E731
    return result.code, show(document["errors"]), show(document["warnings"])


def test_a_bad_recipient_is_an_error_at_its_line_and_a_writer_is_warned_about_its_private_key(tmp_path: Path) -> None:
    bad = write(tmp_path, "app.yaml", f"""\
        database: {{dsn: "host=db dbname=app"}}
        storage: {{url: "s3://bucket/app"}}
        backup: {{schedule: "0 2 * * *", retention: {{keep_last: 3}}}}
        encryption:
          recipients:
            - {RECIPIENT}
            - age1notakey
        """)
    code, errors, _ = validate(bad)
    assert code == 2
    assert len(errors) == 1 and errors[0].startswith("7:7 encryption.recipients[1]: not a valid age recipient")
    assert "allowed an age public key age1... or an ssh-ed25519/ssh-rsa public key" in errors[0]

    writer = write(tmp_path, "app.yaml", f"""\
        database: {{dsn: "host=db dbname=app"}}
        storage: {{url: "s3://bucket/app"}}
        backup: {{schedule: "0 2 * * *", retention: {{keep_last: 3}}}}
        encryption:
          recipients: [{RECIPIENT}]
          identities: /etc/archiver/age-key.txt
        """)
    code, errors, warnings = validate(writer)
    assert (code, errors) == (0, [])
    assert len(warnings) == 1 and warnings[0].startswith("6:15 encryption.identities: is set on a policy whose tasks only write")
    text = run_cli("policy", "validate", str(writer))
    assert "app.yaml:6:15  encryption.identities: warning: is set on a policy whose tasks only write" in text.stderr

    reader = write(tmp_path, "app.yaml", writer.read_text() + 'verify: {schedule: "0 5 * * 1"}\n')
    assert validate(reader) == (0, [], [])
    plaintext_archive = write(tmp_path, "app.yaml", """\
        database: {dsn: "host=db dbname=app"}
        storage: {url: "s3://bucket/app"}
        archive: {schedule: "0 1 * * *", encrypt: true, tables: [{table: public.m, archive_after: 7d}]}
        """)
    code, errors, _ = validate(plaintext_archive)
    assert code == 2 and errors == ["3:43 archive.encrypt: needs an encryption section with recipients (got "
                                    "archive.encrypt: true and no encryption:)"]


def test_identities_take_a_path_or_a_list_and_an_empty_variable_means_none(tmp_path: Path) -> None:
    path = write(tmp_path, "app.yaml", f"""\
        database: {{dsn: "host=db dbname=app"}}
        storage: {{url: "s3://bucket/app"}}
        encryption: {{recipients: [{RECIPIENT}], identities: [/keys/old.txt, "${{NEW_KEY}}"]}}
        """)
    loaded = load([path], environ={"NEW_KEY": "/keys/new.txt"})
    assert loaded.issues == []
    assert loaded.policies[0].encryption.identity_paths() == ["/keys/old.txt", "/keys/new.txt"]
    path.write_text(path.read_text().replace('[/keys/old.txt, "${NEW_KEY}"]', '"${ARCHIVER_AGE_IDENTITY_FILE:-}"'))
    loaded = load([path], environ={})
    assert loaded.issues == [] and loaded.policies[0].encryption.identity_paths() == []


def test_object_lock_against_retention_refuses_always_and_warns_sometimes(tmp_path: Path) -> None:
    def policy(retention: str, lock: str = "{mode: governance, retain: 35d}", url: str = "s3://bucket/app",
               cold: str = "") -> Path:
        return write(tmp_path, "app.yaml", f"""\
            database: {{dsn: "host=db dbname=app"}}
            storage: {{url: "{url}", object_lock: {lock}}}
            backup: {{schedule: "0 2 * * *", retention: {retention}}}
            {cold}
            """)

    code, errors, _ = validate(policy("{keep_last: 7}"))
    assert code == 2 and errors == [
        "3:44 backup.retention: always deletes backups before their lock ends: no rule keeps a backup longer than 7d < "
        "object_lock.retain 35d (allowed: rules that keep backups at least 35d, or a shorter retain)"]
    code, errors, warnings = validate(policy("{keep_last: 7, keep_monthly: 6}"))
    assert (code, errors) == (0, [])
    assert warnings == ["3:44 backup.retention: sometimes deletes backups before their lock ends: backups no longer "
                        "rule keeps go after about 7d < object_lock.retain 35d; prune keeps them, reporting 'keep: "
                        "object locked until ...', until the lock ends"]
    assert validate(policy("{keep_daily: 40}")) == (0, [], [])
    code, errors, _ = validate(policy("{keep_last: 40}", url="file:///var/backups"))
    assert errors == ["2:52 storage.object_lock: applies to s3:// storage only (got 'file:///var/backups')"]
    code, errors, _ = validate(policy("{keep_daily: 40}", lock="{mode: sometimes}"))
    assert code == 2 and "storage.object_lock.mode: invalid value (got 'sometimes'; allowed governance, compliance)" in errors[0]
    code, errors, _ = validate(policy("{keep_daily: 40}", cold='archive: {schedule: "0 1 * * *", cold_retention: 10d, '
                                                            'tables: [{table: public.m, archive_after: 1d}]}'))
    assert code == 2 and any("archive.cold_retention: always expires cold files before their lock ends (got 10d < "
                             "object_lock.retain 35d)" in error for error in errors)


def test_kept_for_follows_the_rules_and_the_schedule() -> None:
    day = timedelta(days=1)
    assert kept_for(RetentionConfig(keep_last=3), day) == (3 * day, 3 * day)
    assert kept_for(RetentionConfig(keep_daily=7, keep_weekly=4), day) == (7 * day, 28 * day)
    assert kept_for(RetentionConfig(keep_weekly=4), day) == (day, 28 * day)  # the other days' backups go next day
    assert kept_for(RetentionConfig(keep_last=2, keep_monthly=12), 7 * day) == (14 * day, 372 * day)


def test_object_lock_against_base_backup_retention_refuses_always_and_warns_sometimes(tmp_path: Path) -> None:
    def policy(retention: str) -> Path:
        return write(tmp_path, "app.yaml", f"""\
            database: {{dsn: "host=db dbname=app"}}
            storage: {{url: "s3://bucket/app", object_lock: {{mode: governance, retain: 35d}}}}
            pitr:
              wal: {{method: archive_command}}
              base_backup: {{schedule: "0 1 * * *", retention: {retention}}}
            """)

    code, errors, _ = validate(policy("{keep_last: 2, keep_daily: 7}"))
    assert code == 2 and errors == [
        "5:51 pitr.base_backup.retention: always deletes base backups before their lock ends: no rule keeps a base "
        "backup longer than 7d < object_lock.retain 35d (allowed: rules that keep base backups at least 35d, or a "
        "shorter retain)"]
    code, errors, warnings = validate(policy("{keep_last: 2, keep_weekly: 8}"))
    assert (code, errors) == (0, [])
    assert warnings == ["5:51 pitr.base_backup.retention: sometimes deletes base backups before their lock ends: "
                        "base backups no longer rule keeps go after about 2d < object_lock.retain 35d; prune keeps "
                        "them, reporting 'keep: object locked until ...', until the lock ends"]
    assert validate(policy("{keep_daily: 40}")) == (0, [], [])
