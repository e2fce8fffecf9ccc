"""The restored database against its manifest: row counts and, on request, content checksums."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..pg.stats import CHECKSUM_METHOD, TableRef
from ..pg.target import content_stats, missing_tables
from .select import Source

# -- comparing with the manifest ------------------------------------------------------------------

@dataclass(frozen=True)
class TableCheck:
    table: str
    expected_rows: int
    rows: int | None  # None: the table is missing
    expected_checksum: str | None = None
    checksum: str | None = None

    @property
    def ok(self) -> bool:
        return self.rows == self.expected_rows and (self.expected_checksum is None or
                                                    self.checksum == self.expected_checksum)

    def describe(self) -> str:
        if self.rows is None:
            return f"{self.table}: missing (the manifest has {self.expected_rows:,} rows)"
        text = f"{self.table}: {self.rows:,} rows (manifest {self.expected_rows:,})"
        if self.expected_checksum is not None:
            text += ", checksum " + ("matches" if self.checksum == self.expected_checksum else
                                     f"{self.checksum} (manifest {self.expected_checksum})")
        return text

    def to_json(self) -> dict[str, Any]:
        return {"table": self.table, "ok": self.ok, "expected_rows": self.expected_rows, "rows": self.rows,
                "expected_checksum": self.expected_checksum, "checksum": self.checksum}


def compare_tables(dsn: str, source: Source, *, checksums: bool,
                   on_table: Callable[[], None] | None = None) -> list[TableCheck]:
    """Every table of the manifest, counted in the restored database (and checksummed, if asked and recorded);
    ``on_table`` is called as each table is counted (progress)."""
    refs = {f"{t['schema']}.{t['name']}": (TableRef.from_json(t), t) for t in source.tables}
    missing = {ref.qualified_name for ref in missing_tables(dsn, [ref for ref, _ in refs.values()])}
    method = source.checksum_method
    use_checksums = checksums and method is not None
    present = [ref for name, (ref, _) in refs.items() if name not in missing]
    stats = {item.table.qualified_name: item for item in content_stats(
        dsn, checksums=use_checksums, tables=present, method=method or CHECKSUM_METHOD, on_table=on_table).tables}
    results = []
    for name, (_, recorded) in refs.items():
        counted = stats.get(name)
        expected_checksum = recorded.get("checksum") if use_checksums else None
        results.append(TableCheck(name, int(recorded.get("rows", 0)), counted.rows if counted else None,
                                  expected_checksum, counted.checksum if counted and use_checksums else None))
    return results
