"""``archiver demo`` end to end: the README's first command, on the embedded default."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import run_cli


def test_demo_runs_the_whole_cycle_and_cleans_up_on_request(tmp_path: Path) -> None:
    directory = tmp_path / "demo"
    result = run_cli("-q", "demo", "--dir", str(directory))
    assert result.code == 0, result.output
    out = result.stdout
    for step in ("backup identity", "backup app", "backup telemetry", "archive telemetry", "retention telemetry"):
        assert f"{step} ..." in out
    assert out.count(": passed;") == 3  # three restore drills
    assert "archived 0 chunk" not in out and "dropped 0 chunk" not in out
    assert "PROBLEM" not in out and "archiver demo --clean" in out

    status = run_cli("--policies", str(directory / "policies"), "status", "--json", "--no-database")
    assert status.code == 0, status.output
    by_policy = {entry["policy"]: entry for entry in json.loads(status.stdout)["policies"]}
    assert set(by_policy) == {"identity", "app", "telemetry"}
    assert all(entry["newest_verified"] for entry in by_policy.values())
    metrics = by_policy["telemetry"]["archive"]["tables"]["public.asset_metrics"]
    assert metrics["archived"]["count"] > 80 and metrics["archived"]["rows"] > 0 and metrics["gaps"] == []
    listing = run_cli("--policies", str(directory / "policies"), "backups", "list", "--json")
    assert sorted(item["policy"] for item in json.loads(listing.stdout)["backups"]) == ["app", "identity", "telemetry"]
    assert all(item["verified"] is True for item in json.loads(listing.stdout)["backups"])

    assert run_cli("demo", "--clean", "--dir", str(directory)).code == 0
    assert not directory.exists()


def test_demo_refuses_to_delete_a_directory_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    result = run_cli("demo", "--clean", "--dir", str(tmp_path))
    assert result.code == 2 and "was not made by `archiver demo`" in result.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"
