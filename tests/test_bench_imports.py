"""The benchmark scripts still import: they are run by hand, so a renamed function would otherwise
only show when someone needs the figures (archive_bench.py imported a function issue 12 had
replaced)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
SCRIPTS = sorted(path.stem for path in BENCH.glob("*_bench.py"))


def test_every_bench_script_is_listed_in_the_bench_readme() -> None:
    readme = (BENCH / "README.md").read_text()
    assert SCRIPTS and [name for name in SCRIPTS if f"{name}.py" not in readme] == []


@pytest.mark.parametrize("name", SCRIPTS)
def test_bench_script_imports_and_has_a_main(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.delitem(sys.modules, name, raising=False)
    module = importlib.import_module(name)
    assert callable(getattr(module, "main", None)), f"bench/{name}.py has no main()"
