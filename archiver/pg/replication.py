"""What point-in-time recovery asks the server: its WAL settings and identity, replication slots, the
WAL position, whether it is still recovering. Catalog and function names are schema-qualified;
every session pins the safe search_path (:mod:`archiver.pg.connect`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..errors import DatabaseError
from .connect import Session, session

_SETTINGS_SQL = """
SELECT name, setting FROM pg_catalog.pg_settings
WHERE name IN ('wal_level', 'archive_mode', 'archive_command', 'archive_timeout', 'wal_segment_size',
               'max_wal_senders', 'data_checksums')
"""
_ROLE_SQL = "SELECT r.rolreplication OR r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = pg_catalog.current_user()"
_TABLESPACES_SQL = """
SELECT t.spcname, pg_catalog.pg_tablespace_location(t.oid) FROM pg_catalog.pg_tablespace t
WHERE t.spcname NOT IN ('pg_default', 'pg_global') ORDER BY t.spcname
"""
_EXTENSIONS_SQL = "SELECT e.extname, e.extversion FROM pg_catalog.pg_extension e ORDER BY e.extname"
_SLOT_SQL = """
SELECT s.slot_type, s.active, s.restart_lsn::text,
       pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), s.restart_lsn)::bigint
FROM pg_catalog.pg_replication_slots s WHERE s.slot_name = %s
"""
DUPLICATE_OBJECT = "42710"


@dataclass(frozen=True)
class ServerFacts:
    """A server as a base backup records it (and as the checks before one need it)."""

    database: str
    server_version: str
    server_version_num: int
    system_identifier: str | None  # None when the role may not call pg_control_system()
    clock: datetime
    settings: dict[str, str]
    can_replicate: bool
    in_recovery: bool
    extensions: dict[str, str] = field(default_factory=dict)
    tablespaces: list[tuple[str, str]] = field(default_factory=list)

    @property
    def wal_segment_size(self) -> int:
        return int(self.settings.get("wal_segment_size") or 16 * 1024 * 1024)


def _system_identifier(current: Session) -> str | None:
    try:
        return str(current.scalar("SELECT system_identifier::text FROM pg_catalog.pg_control_system()"))
    except DatabaseError:
        return None  # not granted to this role: the manifest goes without it


def server_facts(dsn: str, *, connect_timeout: int = 10) -> ServerFacts:
    with session(dsn, application_name="archiver basebackup", connect_timeout=connect_timeout) as current:
        row = current.query("SELECT pg_catalog.current_database(), pg_catalog.current_setting('server_version'), "
                            "pg_catalog.current_setting('server_version_num')::int, pg_catalog.clock_timestamp(), "
                            "pg_catalog.pg_is_in_recovery()")[0]
        settings = {str(name): str(value) for name, value in current.query(_SETTINGS_SQL)}
        return ServerFacts(
            database=str(row[0]), server_version=str(row[1]), server_version_num=int(row[2]),
            system_identifier=_system_identifier(current), clock=row[3], settings=settings,
            can_replicate=bool(current.scalar(_ROLE_SQL)), in_recovery=bool(row[4]),
            extensions={str(name): str(version) for name, version in current.query(_EXTENSIONS_SQL)},
            tablespaces=[(str(name), str(location)) for name, location in current.query(_TABLESPACES_SQL)])


def server_clock(dsn: str, *, connect_timeout: int = 10) -> datetime:
    """The server's own clock (a base backup's stop time is on the clock its WAL timestamps use)."""
    with session(dsn, application_name="archiver basebackup", connect_timeout=connect_timeout) as current:
        moment: datetime = current.scalar("SELECT pg_catalog.clock_timestamp()")
        return moment


@dataclass(frozen=True)
class SlotState:
    exists: bool
    physical: bool = True
    active: bool = False
    restart_lsn: str | None = None
    retained_bytes: int | None = None  # WAL the slot holds back on the server


def slot_state(dsn: str, slot: str, *, connect_timeout: int = 10) -> SlotState:
    with session(dsn, application_name="archiver wal-receive", connect_timeout=connect_timeout) as current:
        rows = current.query(_SLOT_SQL, (slot,))
    if not rows:
        return SlotState(exists=False)
    kind, active, restart_lsn, retained = rows[0]
    return SlotState(True, kind == "physical", bool(active), restart_lsn, None if retained is None else int(retained))


def ensure_physical_slot(dsn: str, slot: str, *, connect_timeout: int = 10) -> bool:
    """Create the physical slot ``slot`` (reserving WAL at once) unless it exists; True when created.

    A logical slot of that name is refused: pg_receivewal needs a physical one.
    """
    state = slot_state(dsn, slot, connect_timeout=connect_timeout)
    if state.exists:
        if not state.physical:
            raise DatabaseError(f"replication slot {slot!r} exists but is a logical slot; pg_receivewal needs a "
                                "physical one (choose another pitr.wal.slot)")
        return False
    with session(dsn, application_name="archiver wal-receive", connect_timeout=connect_timeout) as current:
        try:
            current.execute("SELECT pg_catalog.pg_create_physical_replication_slot(%s, true)", (slot,))
        except DatabaseError as exc:
            if DUPLICATE_OBJECT in str(exc) or "already exists" in str(exc):
                return False  # created by another receiver at the same moment
            raise
    return True


def drop_slot(dsn: str, slot: str) -> None:
    with session(dsn, application_name="archiver") as current:
        current.execute("SELECT pg_catalog.pg_drop_replication_slot(%s)", (slot,))


def switch_wal(dsn: str) -> str:
    """Close the current WAL segment (``pg_switch_wal()``), so it is archived now; its end LSN."""
    with session(dsn, application_name="archiver") as current:
        return str(current.scalar("SELECT pg_catalog.pg_switch_wal()::text"))


def current_wal_lsn(dsn: str) -> str:
    with session(dsn, application_name="archiver") as current:
        return str(current.scalar("SELECT pg_catalog.pg_current_wal_lsn()::text"))


def in_recovery(dsn: str, *, connect_timeout: int = 5) -> bool:
    with session(dsn, application_name="archiver restore", connect_timeout=connect_timeout) as current:
        return bool(current.scalar("SELECT pg_catalog.pg_is_in_recovery()"))


def recovery_facts(dsn: str) -> dict[str, Any]:
    """Where a server that has left recovery stands: its timeline and WAL position."""
    with session(dsn, application_name="archiver restore") as current:
        row = current.query("SELECT c.timeline_id, pg_catalog.pg_current_wal_lsn()::text "
                            "FROM pg_catalog.pg_control_checkpoint() c")[0]
    return {"checkpoint_timeline": int(row[0]), "current_lsn": str(row[1])}
