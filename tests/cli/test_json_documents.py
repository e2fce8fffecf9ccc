"""Every ``--json`` document, from real runs (a real PostgreSQL, pg_dump, a file store, a restore drill),
validated against its JSON Schema under docs/schemas/, and held to the conventions every document
shares: a ``schema`` key, durations as ``*_seconds`` numbers, yes/no answers as booleans, times in
RFC 3339 UTC."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from tests.coldtier_helpers import create_readings
from tests.helpers import PROJECT, run_cli
from tests.ops_helpers import seeded

SCHEMAS = PROJECT / "docs" / "schemas"
BOOLEAN_KEYS = {"verified", "healthy", "stale", "valid", "dry_run", "failing", "interrupted"}
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}")


def conventions(value: Any, path: str = "") -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}"
            assert key not in ("duration", "seconds"), f"{where}: durations are *_seconds"
            if key.endswith("_seconds"):
                assert isinstance(item, int | float) and not isinstance(item, bool), where
            if key in BOOLEAN_KEYS:
                assert isinstance(item, bool), f"{where} = {item!r}: a boolean"
            conventions(item, where)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            conventions(item, f"{path}[{index}]")
    elif isinstance(value, str) and TIMESTAMP.match(value):
        assert value.endswith("Z"), f"{path} = {value!r}: times are UTC, with Z"


def checked(command: str, *args: str, env: dict[str, str] | None = None, codes: tuple[int, ...] = (0,)) -> dict[str, Any]:
    result = run_cli(*args, env=env)
    assert result.code in codes, result.output
    document = json.loads(result.stdout)
    assert document["schema"] == f"archiver.{command}/1"
    schema = json.loads((SCHEMAS / f"archiver.{command}.v1.json").read_text())
    jsonschema.validate(document, schema, cls=jsonschema.Draft202012Validator)
    conventions(document)
    return document


def test_every_json_document_matches_its_schema(database: str, pg, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    seeded(database)
    create_readings(database)
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "app.yaml").write_text(yaml.safe_dump({
        "database": {"dsn": "${APP_DSN}"},
        "storage": {"url": f"file://{tmp_path}/store"},
        "backup": {"schedule": "0 2 * * *", "retention": {"keep_last": 1}},
        "archive": {"schedule": "30 1 * * *", "tables": [{"table": "public.readings", "archive_after": "30d",
                                                          "drop_after": "50d"}]},
        "verify": {"schedule": "0 5 * * 1", "checks": [{"sql": "SELECT count(*) FROM devices", "expect": "> 0"}]},
    }))
    env = {"APP_DSN": database}
    base = ("--policies", str(policies))
    seen = set()

    def run(command: str, *args: str, codes: tuple[int, ...] = (0,)) -> dict[str, Any]:
        seen.add(command)
        return checked(command, *base, *args, env=env, codes=codes)

    assert run("policy-validate", "policy", "validate", "--json")["valid"] is True
    assert run("policy-show", "policy", "show", "app", "--json")["policy"]["backup"]["schedule"] == "0 2 * * *"
    assert run_cli(*base, "backup", "app", env=env).code == 0
    backup = run("run", "run", "app", "backup", "--json")
    assert backup["status"] == "ok" and backup["dry_run"] is False
    listed = run("backups-list", "backups", "list", "--json")
    assert len(listed["backups"]) == 2 and listed["errors"] == {}
    pruned = run("prune", "prune", "app", "--dry-run", "--json")
    assert pruned["dry_run"] is True and any("delete" in line for line in pruned["lines"]), pruned["lines"]
    plan = run("plan", "plan", "app", "--json", codes=(5,))  # retention would hold back what is not archived yet
    assert plan["lines"] and plan["dry_run"] is True
    assert run("archive", "archive", "app", "--dry-run", "--json")["dry_run"] is True
    archived = run("archive", "archive", "app", "--json")
    assert archived["metrics"]["chunks_archived"] > 0
    files = run("cold-files", "cold", "app", "files", "--json")["files"]
    assert sum(item["rows"] for item in files) == archived["metrics"]["rows"] and files[0]["day"]
    assert run("retention", "retention", "app", "--dry-run", "--json")["task"] == "retention"
    drill = run("verify", "verify", "app", "--json")
    assert drill["result"] == "passed" and drill["backup_id"] == backup["data"]["id"]
    status = run("status", "status", "--json", codes=(0, 1))
    (entry,) = status["policies"]
    assert entry["newest_backup"]["verified"] is True and entry["archive"]["tables"]["public.readings"]["lag_seconds"] == 0
    target = pg.dsn(f"t_{uuid.uuid4().hex[:12]}")
    restore = run("restore", "restore", "app", "--target", target, "--dry-run", "--json")
    assert restore["dry_run"] is True and restore["task"] == "restore"
    again = run("restore-archive", "restore-archive", "app", "--table", "public.readings", "--from", "2000-01-01",
                "--to", "2100-01-01", "--dry-run", "--json")
    assert again["dry_run"] is True
    assert seen == {path.name.removeprefix("archiver.").removesuffix(".v1.json") for path in SCHEMAS.glob("*.json")}, \
        "every schema is exercised by a real document"
