"""The command contract: names, global options, exit codes."""

from __future__ import annotations

from tests.helpers import run_cli

COMMANDS = ["policy", "render", "backup", "backups", "prune", "archive", "retention", "plan", "restore", "restore-archive",
            "verify", "run", "worker", "status", "demo", "cold"]
COMMANDS += ["basebackup", "wal-push", "wal-fetch", "wal-receive"]  # point-in-time recovery


def test_every_command_of_the_contract_exists() -> None:
    result = run_cli("--help")
    assert result.code == 0
    listed = [line.split()[0] for line in result.stdout.split("Commands:")[1].splitlines() if line.strip()]
    assert sorted(listed) == sorted(COMMANDS)
    for option in ("--policies", "--log-format", "-v", "-q"):
        assert option in result.stdout


def test_unknown_policy_is_a_usage_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "app.yaml").write_text("database: {dsn: 'dbname=app'}\nstorage: {url: 'file:///srv/app'}\n")
    result = run_cli("--policies", str(tmp_path), "policy", "show", "nope")
    assert result.code == 2
    assert "no valid policy named 'nope'" in result.stderr and "(valid: app)" in result.stderr


def test_bad_flag_is_exit_2() -> None:
    result = run_cli("policy", "validate", "--no-such-flag")
    assert result.code == 2 and "No such option" in result.stderr
