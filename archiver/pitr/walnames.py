"""WAL file names, LSNs and the keys WAL files are stored under (pure: no I/O).

PostgreSQL names what it archives:

- a segment ``TTTTTTTTXXXXXXXXYYYYYYYY`` (timeline, then the segment number split in two);
- ``<segment>.partial``: a segment cut short (pg_receivewal's segment in progress, or the last
  segment of the old timeline at a promotion);
- ``TTTTTTTT.history``: a timeline's history (its parents and where it branched off them);
- ``<segment>.XXXXXXXX.backup``: a backup history file (written at the end of a base backup).

A stored WAL file's key carries what restore needs to trust it and what the window needs to place
it, so that one listing holds everything (as pgBackRest puts the checksum in the name)::

    pitr/wal/<timeline>/<name>.<completed YYYYMMDDTHHMMSS.ffffffZ>.<sha256 of the original bytes><codec suffix>[.age]

``.age``: the compressed file is encrypted to the policy's ``encryption.recipients`` (segments and
partial segments; timeline and backup history files hold no data and stay readable without a key).

``completed`` is when the file was last written before it was archived (its mtime): every WAL
record written before that moment is in this file or an older one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

WAL_PREFIX = "pitr/wal/"
DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024
WalKind = Literal["segment", "partial", "history", "backup"]
ENCRYPTED_KINDS = ("segment", "partial")  # the kinds that hold data: encrypted when the policy has recipients

_PATTERNS: tuple[tuple[WalKind, re.Pattern[str]], ...] = (
    ("segment", re.compile(r"([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})")),
    ("partial", re.compile(r"([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})\.partial")),
    ("history", re.compile(r"([0-9A-F]{8})\.history")),
    ("backup", re.compile(r"([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})\.[0-9A-F]{8}\.backup")),
)
_SUFFIX_CODECS = {".zst": "zstd", ".gz": "gzip", "": "none"}
_KEY = re.compile(r"(?P<name>[0-9A-F.a-z]+)\.(?P<stamp>\d{8}T\d{6}\.\d{6}Z)\.(?P<sha>[0-9a-f]{64})"
                  r"(?P<suffix>\.zst|\.gz)?(?P<age>\.age)?")
_LSN = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")


class WalNameError(ValueError):
    """Not a name PostgreSQL gives to a file it archives."""


@dataclass(frozen=True, order=True)
class WalFile:
    """A file PostgreSQL archives, by its name."""

    name: str
    kind: WalKind
    timeline: int
    log: int = 0  # the segment's two halves (0 for a history file)
    seg: int = 0

    def segno(self, segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
        """The segment number (position in the WAL), independent of the timeline."""
        return self.log * segments_per_id(segment_size) + self.seg

    @property
    def segment_name(self) -> str:
        """The segment this file holds (or belongs to): the name without ``.partial`` / ``.<offset>.backup``."""
        return self.name[:24]

    @property
    def replaces_nothing(self) -> bool:
        """A name that may be stored once only: a second copy with other content is an error.

        ``.partial`` files are versions of a segment in progress: each push is kept until a newer one
        (or the complete segment) is stored.
        """
        return self.kind != "partial"


def parse_wal_name(name: str) -> WalFile:
    """The WAL file called ``name``; WalNameError for anything else (refused before it becomes a key)."""
    for kind, pattern in _PATTERNS:
        match = pattern.fullmatch(name)
        if match:
            parts = [int(group, 16) for group in match.groups()]
            if kind == "history":
                return WalFile(name, kind, parts[0])
            return WalFile(name, kind, parts[0], parts[1], parts[2])
    raise WalNameError(f"{name!r} is not a WAL file name (allowed: a segment such as 000000010000000000000003, "
                       "<segment>.partial, 00000002.history or <segment>.XXXXXXXX.backup)")


def segments_per_id(segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    return 0x100000000 // segment_size


def segment_name(timeline: int, segno: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> str:
    per_id = segments_per_id(segment_size)
    return f"{timeline:08X}{segno // per_id:08X}{segno % per_id:08X}"


def history_name(timeline: int) -> str:
    return f"{timeline:08X}.history"


# -- LSNs --------------------------------------------------------------------------------------

def parse_lsn(text: str) -> int:
    """``0/3000148`` -> an integer; ValueError for anything else."""
    match = _LSN.fullmatch(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not an LSN (allowed: two hexadecimal numbers, e.g. 0/3000148)")
    return (int(match.group(1), 16) << 32) | int(match.group(2), 16)


def format_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def segno_of(lsn: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    return lsn // segment_size


def segment_start(segno: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    return segno * segment_size


# -- stored keys -------------------------------------------------------------------------------

@dataclass(frozen=True)
class StoredWal:
    """A WAL file in the store, as its key describes it."""

    key: str
    file: WalFile
    completed: datetime
    sha256: str  # of the original (uncompressed) bytes
    codec: str
    size: int = 0  # stored (compressed) bytes, from the listing
    encrypted: bool = False  # age-encrypted after compression (the key ends in .age)

    @property
    def name(self) -> str:
        return self.file.name


def timeline_prefix(timeline: int) -> str:
    return f"{WAL_PREFIX}{timeline:08X}/"


def versions_prefix(name: str) -> str:
    """Every stored version of the file ``name`` starts with this (and maybe other files' keys: parse them)."""
    return f"{timeline_prefix(parse_wal_name(name).timeline)}{name}."


def wal_key(name: str, completed: datetime, sha256: str, suffix: str) -> str:
    stamp = completed.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"{timeline_prefix(parse_wal_name(name).timeline)}{name}.{stamp}.{sha256}{suffix}"


def parse_wal_key(key: str, size: int = 0) -> StoredWal | None:
    """The stored WAL file a key names; None for a key that is not one (left alone by everything)."""
    if not key.startswith(WAL_PREFIX):
        return None
    directory, _, leaf = key[len(WAL_PREFIX):].partition("/")
    match = _KEY.fullmatch(leaf)
    if not match:
        return None
    try:
        file = parse_wal_name(match.group("name"))
    except WalNameError:
        return None
    if directory != f"{file.timeline:08X}":
        return None
    completed = datetime.strptime(match.group("stamp"), "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=UTC)
    return StoredWal(key, file, completed, match.group("sha"), _SUFFIX_CODECS[match.group("suffix") or ""], size,
                     encrypted=match.group("age") is not None)
