"""Finding PostgreSQL programs without PATH help, choosing the major version that fits.

Search order: an explicit directory (policy ``pg_bin_dir`` or ``$ARCHIVER_PG_BIN_DIR``), then
Debian/Ubuntu's ``/usr/lib/postgresql/<major>/bin``, Red Hat's ``/usr/pgsql-<major>/bin``, then
``pg_config --bindir`` and ``PATH``.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..errors import UsageError

_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


@lru_cache(maxsize=64)
def program_version(path: str) -> tuple[int, int]:
    """(major, minor) of a PostgreSQL program, from ``--version``."""
    try:
        output = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise UsageError(f"cannot run {path} --version: {exc}") from None
    match = _VERSION_RE.search(output)
    if not match:
        raise UsageError(f"cannot read the version of {path} (got {output.strip()!r})")
    return int(match.group(1)), int(match.group(2) or 0)


def _candidate_dirs() -> list[Path]:
    dirs = [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"))]
    dirs += [Path(p) for p in sorted(glob.glob("/usr/pgsql-*/bin"))]
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            bindir = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=30).stdout.strip()
            if bindir:
                dirs.append(Path(bindir))
        except (OSError, subprocess.SubprocessError):
            pass
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        if entry:
            dirs.append(Path(entry))
    unique: list[Path] = []
    for directory in dirs:
        if directory not in unique:
            unique.append(directory)
    return unique


def installed(program: str, configured: str | None = None) -> dict[int, Path]:
    """Every installed copy of ``program`` by major version (the first found per major wins)."""
    explicit = configured or os.environ.get("ARCHIVER_PG_BIN_DIR")
    dirs = [Path(explicit)] if explicit else _candidate_dirs()
    found: dict[int, Path] = {}
    for directory in dirs:
        path = directory / program
        if path.is_file() and os.access(path, os.X_OK):
            major, _ = program_version(str(path))
            found.setdefault(major, path)
    return found


def find(program: str, *, server_major: int | None = None, configured: str | None = None) -> Path:
    """The copy of ``program`` to use against a server of ``server_major``.

    The same major is preferred; otherwise the oldest newer one (client programs read older
    servers, never newer ones). With no server major, the newest installed copy.
    """
    copies = installed(program, configured)
    where = f"in {configured}" if configured else "(searched /usr/lib/postgresql/*/bin, /usr/pgsql-*/bin, pg_config, PATH)"
    if not copies:
        raise UsageError(f"{program} not found {where}",
                         hint="install the PostgreSQL client/server packages, or set pg_bin_dir / ARCHIVER_PG_BIN_DIR")
    if server_major is None:
        return copies[max(copies)]
    if server_major in copies:
        return copies[server_major]
    newer = sorted(major for major in copies if major > server_major)
    if newer:
        return copies[newer[0]]
    have = ", ".join(str(m) for m in sorted(copies))
    raise UsageError(f"{program} for PostgreSQL {server_major} not found {where}; installed majors: {have}",
                     hint=f"install postgresql-client-{server_major} (Debian/Ubuntu) or postgresql{server_major} (RHEL), "
                          "or point pg_bin_dir at its bin directory")


def sharedir(bindir: Path) -> Path | None:
    """The ``share`` directory of the installation ``bindir`` belongs to (holds extensions)."""
    pg_config = bindir / "pg_config"
    if pg_config.exists():
        try:
            out = subprocess.run([str(pg_config), "--sharedir"], capture_output=True, text=True, timeout=30).stdout.strip()
            if out:
                return Path(out)
        except (OSError, subprocess.SubprocessError):
            pass
    major = program_version(str(bindir / "postgres"))[0] if (bindir / "postgres").exists() else None
    candidate = Path(f"/usr/share/postgresql/{major}") if major else None
    return candidate if candidate and candidate.is_dir() else None


def extension_available(bindir: Path, name: str) -> bool:
    share = sharedir(bindir)
    return bool(share and (share / "extension" / f"{name}.control").exists())


# -- finding the programs ---------------------------------------------------------------------

@dataclass(frozen=True)
class Tool:
    path: Path
    major: int
    version: str  # the program's own --version line, e.g. "pg_dump (PostgreSQL) 15.20"


def find_tool(program: str, server_version_num: int, configured: str | None) -> Tool:
    """The ``program`` to use against a server, refusing one older than the server.

    A client program cannot read a newer server's catalogs (pg_dump itself aborts with a
    "server version mismatch"); saying so before anything starts is clearer.
    """
    server_major = server_version_num // 10000
    copies = installed(program, configured)
    usable = {major: path for major, path in copies.items() if major >= server_major}
    if copies and not usable:
        newest = max(copies)
        raise UsageError(
            f"{program} {newest} ({copies[newest]}) is older than the server (PostgreSQL {server_major}): "
            f"{program} cannot dump a newer server; refusing to run it",
            hint=f"install postgresql-client-{server_major} (Debian/Ubuntu) or postgresql{server_major} (RHEL)"
                 + (f", or point database.pg_bin_dir at a PostgreSQL {server_major} bin directory" if configured
                    else ", or set database.pg_bin_dir to its bin directory"))
    path = find(program, server_major=server_major, configured=configured)
    major = program_version(str(path))[0]
    if major < server_major:  # pgbin.find never returns an older one; keep the promise explicit
        raise UsageError(f"{program} {major} ({path}) is older than the server (PostgreSQL {server_major})")
    return Tool(path, major, version_text(path))


def version_text(path: Path) -> str:
    try:
        result = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        raise UsageError(f"cannot run {path} --version: {exc}") from None
    return result.stdout.strip()
