"""The import rules of docs/architecture.md, read from the code's own imports (scripts/check-layers.py)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from tests.helpers import PROJECT


def check_layers() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_layers", PROJECT / "scripts" / "check-layers.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_code_keeps_the_import_rules() -> None:
    assert check_layers().check(PROJECT) == []


def test_each_kind_of_violation_is_reported(tmp_path: Path) -> None:
    shutil.copytree(PROJECT / "archiver", tmp_path / "archiver", ignore=shutil.ignore_patterns("__pycache__"))
    broken = {
        "archiver/storage/url.py": "from ..policy.schema import Policy\n",  # storage knows no policy; a cycle
        "archiver/coldtier/decisions.py": "import psycopg\nimport click\nimport yaml\n",
        "archiver/pg/quote.py": "from ..tasks import TASKS\n",  # a layer above
    }
    for path, line in broken.items():
        (tmp_path / path).write_text(line + (tmp_path / path).read_text())
    (tmp_path / "archiver" / "common" / "long.py").write_text("x = 1\n" * 401)
    problems = "\n".join(check_layers().check(tmp_path))
    assert "archiver/storage/url.py:1: storage imports archiver.policy.schema (storage knows no policy)" in problems
    assert "package cycle: policy -> storage" in problems
    assert "archiver/coldtier/decisions.py:1: imports psycopg (only archiver/pg/ imports database drivers)" in problems
    assert "archiver/coldtier/decisions.py:2: imports click (only archiver/cli/ does)" in problems
    assert "archiver/coldtier/decisions.py:3: imports yaml (only archiver/policy/load.py does)" in problems
    assert "archiver/pg/quote.py:1: pg imports archiver.tasks, a layer above it" in problems
    assert "archiver/common/long.py: 401 lines (at most 400)" in problems
    script = subprocess.run([sys.executable, str(PROJECT / "scripts" / "check-layers.py")], capture_output=True,
                            text=True)
    assert script.returncode == 0 and script.stdout.strip() == "check-layers: ok", script.stdout + script.stderr


def test_the_pure_modules_load_no_driver_yaml_scheduler_or_cloud_sdk() -> None:
    """The policy schema and the cold tier's decisions are importable without the heavy packages."""
    code = ("import sys, archiver.policy.schema, archiver.coldtier.decisions, archiver.storage.url, "
            "archiver.backup.rotation, archiver.pg.quote; "
            "print(sorted(m for m in ('psycopg', 'yaml', 'apscheduler', 'boto3', 'click', 'pyarrow') "
            "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


HEAVY = ("psycopg", "yaml", "apscheduler", "boto3", "botocore", "pyarrow", "prometheus_client", "zstandard", "tenacity",
         "adbc_driver_manager")


def test_the_command_line_loads_no_heavy_package_until_a_command_runs() -> None:
    """``archiver --help`` (and shell completion) read the commands and the task descriptors only: a driver,
    SDK or Parquet library is imported by the command that uses it (bench/startup_bench.py measures the time)."""
    code = f"import sys, archiver.cli; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    from archiver.cli.cold_cmd import FORMATS
    from archiver.coldtier.engines import FORMATS as ENGINES

    assert FORMATS == ENGINES, "cli/cold_cmd.FORMATS must list the formats coldtier/engines renders"
