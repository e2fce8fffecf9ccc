#!/usr/bin/env python3
"""Check archiver's import rules from the code's own imports; exit 1 naming every violation.

The rules (docs/architecture.md explains them):

- packages import only downward, in the order of ``LAYERS`` (same-rank packages may import each
  other, but no two packages may import each other: no package cycle);
- only ``archiver/pg/`` imports the database drivers (psycopg, ADBC);
- nothing outside ``archiver/cli/`` imports click;
- only ``archiver/policy/load.py`` imports YAML;
- ``archiver/storage/`` knows no policy;
- no module is over ``MAX_LINES`` lines.

Every import counts, including those inside functions and under ``TYPE_CHECKING``.
Run it from anywhere: ``python3 scripts/check-layers.py`` (it reads the checkout it sits in).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "archiver"
MAX_LINES = 400

# Top to bottom: a unit may import units of its own rank or below, never above. A unit is a
# subpackage of archiver (cli, ops, ...) or a top-level module (tasks, errors).
LAYERS: list[set[str]] = [
    {"__main__"},
    {"cli"},
    {"ops"},
    {"tasks"},
    {"restore"},
    {"coldtier", "backup", "pitr"},
    {"policy"},
    {"pg", "storage"},
    {"common"},
    {"errors", "__init__"},
]
DRIVERS = ("psycopg", "psycopg_binary", "psycopg_pool", "adbc_driver_manager", "adbc_driver_postgresql")


def rank(unit: str) -> int:
    for index, layer in enumerate(LAYERS):
        if unit in layer:
            return index
    raise SystemExit(f"check-layers: {unit!r} is in no layer: add it to LAYERS in {Path(__file__).name}")


def modules(root: Path) -> Iterator[tuple[Path, str]]:
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        yield path, ".".join(parts)


def imported(path: Path, module: str) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    if path.name == "__init__.py":
        package = module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield node.lineno, target
            for alias in node.names:  # `from archiver import tasks` imports the module archiver.tasks
                yield node.lineno, f"{target}.{alias.name}"


def unit_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def check(root: Path = ROOT) -> list[str]:
    problems: list[str] = []
    edges: dict[tuple[str, str], str] = {}
    known = {module for _, module in modules(root)}
    for path, module in modules(root):
        where = path.relative_to(root)
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES:
            problems.append(f"{where}: {lines} lines (at most {MAX_LINES})")
        unit = unit_of(module.removesuffix(".__init__"))
        assert unit is not None
        for line, target in imported(path, module):
            top = target.split(".")[0]
            if top in DRIVERS and unit != "pg":
                problems.append(f"{where}:{line}: imports {target} (only archiver/pg/ imports database drivers)")
            if top == "click" and unit != "cli":
                problems.append(f"{where}:{line}: imports click (only archiver/cli/ does)")
            if top == "yaml" and module != "archiver.policy.load":
                problems.append(f"{where}:{line}: imports yaml (only archiver/policy/load.py does)")
            other = unit_of(target)
            if other is None or other == unit:
                continue
            if target not in known and f"{target}.__init__" not in known:
                continue  # `from archiver.x import name`: the module was counted on its own line
            if unit == "storage" and other == "policy":
                problems.append(f"{where}:{line}: storage imports {target} (storage knows no policy)")
            if rank(other) < rank(unit):
                problems.append(f"{where}:{line}: {unit} imports {target}, a layer above it "
                                f"({' > '.join('/'.join(sorted(layer)) for layer in LAYERS[1:-1])})")
            edges.setdefault((unit, other), f"{where}:{line}")
    for (a, b), where in sorted(edges.items()):
        if (b, a) in edges and a < b:
            problems.append(f"package cycle: {a} -> {b} ({where}) and {b} -> {a} ({edges[(b, a)]})")
    return problems


def main() -> int:
    problems = check()
    for problem in problems:
        print(problem)
    if problems:
        print(f"check-layers: {len(problems)} violation(s)", file=sys.stderr)
        return 1
    print("check-layers: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
