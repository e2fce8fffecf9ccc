"""Which pg_restore a dump needs, and whether the target server can take it (majors, minors, extensions)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .planned import RestorePlan

from ..errors import ExternalCommandFailed
from ..pg.binaries import Tool, find_tool
from ..pg.target import TargetFacts
from .props import TargetUnsuitable
from .select import Source


def pg_restore_tool(source: Source, target: TargetFacts, pg_bin_dir: str | None) -> Tool:
    tool = find_tool("pg_restore", target.server_version_num, pg_bin_dir)
    dumped_by = source.pg_dump_major
    if dumped_by is not None and tool.major < dumped_by:
        raise TargetUnsuitable(f"{tool.path} is PostgreSQL {tool.major}; the dump was written by pg_dump {dumped_by}, "
                               "whose archive format an older pg_restore cannot read",
                               hint=f"install postgresql-client-{dumped_by} (Debian/Ubuntu) or postgresql{dumped_by} "
                                    "(RHEL), or point database.pg_bin_dir at its bin directory")
    return tool


def check_versions(plan: RestorePlan) -> None:
    source, target = plan.source, plan.target
    target_major = target.server_version_num // 10000
    if target_major < source.major:
        raise TargetUnsuitable(
            f"the target runs PostgreSQL {target.server_version}, older than the backup's source "
            f"(PostgreSQL {source.database.get('server_version', source.major)}): a dump does not restore into an "
            "older major version", hint=f"restore into a PostgreSQL {source.major} (or newer) server")
    version = source.timescaledb
    if version:
        available = target.available.get("timescaledb", [])
        if version not in available:
            have = f"available there: {', '.join(available)}" if available else "TimescaleDB is not installed there"
            raise TargetUnsuitable(
                f"the target server cannot create TimescaleDB {version}, the version the backup was taken with ({have})",
                hint=f"install timescaledb {version} for PostgreSQL {target_major} (package "
                     f"timescaledb-2-postgresql-{target_major}={version}* on Debian/Ubuntu, "
                     f"timescaledb-2-postgresql-{target_major}-{version} on RHEL), then restart the server")
        if "timescaledb" not in target.preload_libraries:
            raise TargetUnsuitable(
                "the target server does not preload TimescaleDB (shared_preload_libraries = "
                f"'{','.join(target.preload_libraries)}')",
                hint="add timescaledb to shared_preload_libraries in postgresql.conf and restart the server")
    missing = [name for name in sorted(source.extensions) if name not in ("plpgsql", "timescaledb")
               and name not in target.available]
    if missing:
        raise TargetUnsuitable(f"the target server cannot create extension(s) the backup uses: {', '.join(missing)}",
                               hint=f"install them for PostgreSQL {target_major} (contrib modules come with the "
                                    f"postgresql-contrib package), then retry")
    if (older := older_minor_release(plan)) is not None:
        plan.notes.append(older)


UNRECOGNIZED_PARAMETER = "unrecognized configuration parameter"


def older_minor_release(plan: RestorePlan) -> str | None:
    """Why a target on an older minor release of the source's major may fail, or None.

    Minor releases keep the dump format, so this is a warning and not a refusal (at 3 a.m. the
    replica at hand may be a few minors behind, and the single-transaction restore leaves the
    target as it was if it fails); but a newer minor can know settings an older one does not
    (pg_restore then stops on "unrecognized configuration parameter").
    """
    source, target = plan.source, plan.target
    if target.server_version_num // 10000 != source.major or target.server_version_num >= source.server_version_num:
        return None
    dumped_by = str(source.document.get("tools", {}).get("pg_dump", {}).get("version", "")).strip()
    return (f"the target runs PostgreSQL {_minor_version_text(target.server_version_num)}, an older minor release "
            f"than the backup's source (PostgreSQL {_minor_version_text(source.server_version_num)}"
            + (f", dumped by {dumped_by}" if dumped_by else "") + "): a setting only the newer release knows makes "
            f"pg_restore fail with \"{UNRECOGNIZED_PARAMETER}\"; update the target to "
            f"{_minor_version_text(source.server_version_num)} or later to be sure")


def likely_cause(plan: RestorePlan, exc: BaseException) -> str | None:
    """A known cause of a pg_restore failure, for the error message: an older minor release."""
    if isinstance(exc, ExternalCommandFailed) and UNRECOGNIZED_PARAMETER in exc.stderr_tail:
        older = older_minor_release(plan)
        return f"likely cause: {older}" if older else None
    return None


def _minor_version_text(version_num: int) -> str:
    return f"{version_num // 10000}.{version_num % 10000}"
