"""A restore plan: what will be restored where, and how; made read-only by :mod:`archiver.restore.plan`.

Everything after planning (the properties, the version checks, execution) reads this one object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from ..backup.globals import RolesPlan
from ..common.timeutil import format_bytes, format_duration, utcnow
from ..pg import properties as dbprops
from ..pg.binaries import Tool
from ..pg.dsn import parse_dsn, redact_dsn
from ..pg.target import TargetFacts
from ..storage.agekeys import Keyring
from .select import Source

# -- the plan ------------------------------------------------------------------------------------

Mode = Literal["stream", "spool"]
Clean = Literal["none", "pg_restore", "drop_all"]


@dataclass
class RestorePlan:
    policy: str
    source: Source
    target_dsn: str
    target: TargetFacts
    pg_restore: Tool
    create_database: bool = False
    mode: Mode = "stream"
    clean: Clean = "none"
    jobs: int = 1
    work_dir: Path | None = None
    space_needed: int = 0
    create_extension: bool = False
    roles: RolesPlan | None = None
    no_tablespaces: bool = False
    kept_tables: list[str] = field(default_factory=list)  # with --clean: target tables the backup lacks
    clean_requested: bool = False  # --clean was given (``clean`` says what it means for this target)
    notes: list[str] = field(default_factory=list)
    globals_script: bytes = b""
    properties: dbprops.DatabaseProperties | None = None  # the source database's, when the manifest records them
    database_options: str = ""  # CREATE DATABASE clauses: the source's encoding and locale
    properties_plan: dbprops.PropertiesPlan | None = None  # run once pg_restore has committed
    keyring: Keyring | None = field(default=None, repr=False)  # identities for encrypted objects

    @property
    def target_name(self) -> str:
        return parse_dsn(self.target_dsn).get("dbname", "")

    @property
    def single_transaction(self) -> bool:
        return self.jobs == 1

    def steps(self) -> list[str]:
        steps: list[str] = []
        if self.mode == "spool":
            steps.append(f"download the dump to {self.work_dir} and check it in full ({format_bytes(self.space_needed)} "
                         "of space) before anything touches the target")
        if self.create_database:
            steps.append(f"CREATE DATABASE {self.target_name}" + (f" ({self.properties.locale_text()})"
                                                                   if self.properties and self.database_options else ""))
        if self.clean == "drop_all":
            steps.append("drop everything in the target database (schemas, extensions, large objects)")
        if self.roles and self.roles.create:
            steps.append(f"create {len(self.roles.create)} role(s) the target lacks")
        if self.source.timescaledb:
            if self.create_extension:
                steps.append(f"CREATE EXTENSION timescaledb VERSION '{self.source.timescaledb}'")
            steps.append("SELECT timescaledb_pre_restore()")
        how = ("in one transaction, committed only after the dump's SHA-256 matched the manifest"
               if self.mode == "stream" else "in one transaction" if self.single_transaction
               else f"with {self.jobs} jobs (not one transaction)")
        clean = ", --clean --if-exists" if self.clean == "pg_restore" else ""
        steps.append(f"{self.pg_restore.version}{clean}, {how}")
        if self.source.timescaledb:
            steps.append("SELECT timescaledb_post_restore()")
        if self.properties_plan is not None and self.properties_plan.statements:
            steps.append(f"give {self.target_name} the source database's owner, settings, comment and privileges "
                         f"({len(self.properties_plan.statements)} statements)")
        steps.append("count rows on a new connection and compare with the manifest")
        return steps

    def lines(self, now: datetime | None = None) -> list[str]:
        entry, source = self.source.entry, self.source
        age = format_duration((now or utcnow()) - entry.time)
        drill = {"yes": "passed", "failed": "FAILED", "no": "never run"}[entry.verified]
        dump_entry = source.dump
        lines = [
            f"backup   {entry.id}  taken {entry.time:%Y-%m-%d %H:%M:%S} UTC ({age} ago), "
            f"{format_bytes(entry.size)} stored ({format_bytes(int(dump_entry.get('uncompressed_size', 0)))} dump, "
            f"{dump_entry.get('codec', 'none')}), restore drill: {drill}",
            f"source   {source.describe()}",
        ]
        state = "does not exist: it will be created" if self.create_database else (
            "empty" if self.clean == "none" else f"NOT EMPTY: {self.target.contents.describe()}")
        lines.append(f"target   {redact_dsn(self.target_dsn)}: PostgreSQL {self.target.server_version}, {state}")
        if self.clean == "pg_restore":
            kept = ", ".join(self.kept_tables[:10]) + (f" and {len(self.kept_tables) - 10} more"
                                                       if len(self.kept_tables) > 10 else "")
            lines.append("clean    pg_restore --clean drops and re-creates the backup's objects in the same transaction "
                         "(all or nothing)" + (f"; kept, not in the backup: {kept}" if kept else ""))
        elif self.clean == "drop_all":
            lines.append(f"clean    DROPS EVERYTHING in {self.target_name} ({self.target.contents.describe()}) once the "
                         "dump is proven; if pg_restore then fails, the database stays empty")
        if self.roles is not None:
            created = ", ".join(self.roles.create) or "none"
            lines.append(f"roles    creates {len(self.roles.create)} the target lacks: {created}; "
                         f"{len(self.roles.existing)} exist already and are left as they are")
        if self.properties is not None:
            lines += [f"database {text}" for text in self.properties.describe()]
        lines += [f"step     {step}" for step in self.steps()]
        lines += [f"note     {note}" for note in self.notes]
        return lines

    def to_json(self) -> dict[str, Any]:
        return {"backup": self.source.entry.id, "target": redact_dsn(self.target_dsn),
                "create_database": self.create_database, "mode": self.mode, "clean": self.clean, "jobs": self.jobs,
                "steps": self.steps(), "notes": self.notes, "roles": self.roles.to_json() if self.roles else None,
                "database_properties": self.properties.to_json() if self.properties else None,
                "database_statements": self.properties_plan.to_json() if self.properties_plan else None}
