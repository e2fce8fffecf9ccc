"""The distribution: its name and metadata in a real wheel, the example policies it carries, the lock file
of the image's dependencies."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

from tests.helpers import PROJECT, run_cli

KINDS = ("identity", "app", "telemetry")


def test_examples_in_the_package_are_the_repository_policies() -> None:
    examples = PROJECT / "archiver" / "policy" / "examples"
    assert sorted(path.name for path in examples.glob("*.yaml")) == [f"{kind}.yaml" for kind in sorted(KINDS)]
    for kind in KINDS:
        assert (examples / f"{kind}.yaml").read_text() == (PROJECT / "policies" / f"{kind}.yaml").read_text(), \
            f"archiver/policy/examples/{kind}.yaml differs from policies/{kind}.yaml: copy it over"


def test_policy_init_writes_the_example_for_a_new_database_and_it_validates(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    for kind in KINDS:
        same = run_cli("policy", "init", kind, "--kind", kind, "-o", "-")
        assert same.code == 0 and same.stdout == (PROJECT / "policies" / f"{kind}.yaml").read_text()
    result = run_cli("--policies", str(policies), "policy", "init", "billing-eu", "--kind", "telemetry")
    assert result.code == 0, result.stderr
    text = (policies / "billing-eu.yaml").read_text()
    assert text.startswith("# billing-eu: ") and "dsn: ${BILLING_EU_DSN}\n" in text
    assert "url: s3://acme-db-backups/billing-eu\n" in text and "TELEMETRY" not in text
    checked = run_cli("policy", "validate", "--check-env", str(policies), env={"BILLING_EU_DSN": "dbname=billing"})
    assert checked.code == 0 and "1 policy valid: billing-eu" in checked.output, checked.output
    again = run_cli("--policies", str(policies), "policy", "init", "billing-eu", "--kind", "app")
    assert again.code == 2 and "billing-eu.yaml exists; refusing to replace it" in again.stderr
    assert (policies / "billing-eu.yaml").read_text() == text, "nothing replaced"
    assert run_cli("--policies", str(policies), "policy", "init", "billing-eu", "--kind", "app", "--force").code == 0
    bad = run_cli("--policies", str(policies), "policy", "init", "Billing EU", "--kind", "app")
    assert bad.code == 2 and "NAME: 'Billing EU' is not a policy name" in bad.stderr


def test_the_wheel_is_pg_archiver_with_the_archiver_command_metadata_and_examples(tmp_path: Path) -> None:
    """A real wheel build (pip, in an isolated build environment with setuptools from the package index)."""
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(PROJECT)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("pg_archiver-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata_name = next(name for name in names if name.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(archive.read(metadata_name).decode())
        entry_points = archive.read(metadata_name.replace("METADATA", "entry_points.txt")).decode()
    assert metadata["Name"] == "pg-archiver"
    assert metadata["License-Expression"] == "Apache-2.0"
    classifiers = metadata.get_all("Classifier") or []
    assert "Topic :: System :: Archiving :: Backup" in classifiers and "Programming Language :: Python :: 3.11" in classifiers
    assert {url.split(",")[0] for url in metadata.get_all("Project-URL") or []} >= {"Homepage", "Source", "Issues"}
    assert "archiver = archiver.cli:main" in entry_points
    assert {f"archiver/policy/examples/{kind}.yaml" for kind in KINDS} <= set(names)
    assert all(name.startswith(("archiver/", "pg_archiver-")) for name in names), "only the archiver package"


def test_the_lock_pins_every_dependency_with_hashes() -> None:
    project = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]
    lock = (PROJECT / "requirements.lock").read_text()
    pins = dict(re.findall(r"^([a-z0-9][a-z0-9._-]*)==([^\s\\]+)", lock, re.M))
    for requirement in project["dependencies"]:
        name = re.split(r"[\[<>=!~ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        assert name in pins, f"{name} is not in requirements.lock: regenerate it (README, Packaging)"
    assert "psycopg-binary" in pins, "psycopg[binary]'s extra is locked too"
    blocks = re.findall(r"^([a-z0-9][a-z0-9._-]*)==\S+ \\\n((?:    .*\n)+)", lock, re.M)
    assert {name for name, _ in blocks} == set(pins)
    for name, block in blocks:
        assert "--hash=sha256:" in block, f"{name} has no hash"
    assert "pip-compile" in lock.splitlines()[1], "made by pip-compile (pip-tools)"
