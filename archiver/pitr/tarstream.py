"""Watching a tar stream go by: the bytes of one top-level member, without buffering the rest.

``pg_basebackup -D - -Ft`` appends the server's ``backup_manifest`` to the tar it writes to
stdout. The stream goes to the store as it comes; this parser follows the tar headers beside it
and keeps that one member, so the manifest can be stored on its own without reading the object
back. It understands what pg_basebackup writes (ustar headers; GNU long names and pax headers are
skipped over correctly, in case another writer produced the tar).
"""

from __future__ import annotations

BLOCK = 512


class TarMemberCapture:
    def __init__(self, wanted: str, *, limit: int = 1024 * 1024 * 1024) -> None:
        self.wanted = wanted
        self.limit = limit  # a member larger than this is not kept (it is not a manifest)
        self.members = 0
        self.ended = False  # the two zero blocks that end an archive were seen
        self._header = bytearray()
        self._skip = 0  # bytes of the current member (data and padding) still to pass
        self._keep = 0  # of those, bytes still to keep
        self._kept: bytearray | None = None
        self._result: bytes | None = None
        self._long_name: bytearray | None = None
        self._reading_long_name = False
        self._pending_name: str | None = None
        self._zero_blocks = 0

    @property
    def captured(self) -> bytes | None:
        """The wanted member's bytes once it has gone by in full; None until then (or if it never came)."""
        return self._result

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        position = 0
        while position < len(view) and not self.ended:
            if self._skip:
                step = min(self._skip, len(view) - position)
                self._take(view[position:position + step])
                self._skip -= step
                position += step
                if not self._skip:
                    self._member_done()
                continue
            step = min(BLOCK - len(self._header), len(view) - position)
            self._header += view[position:position + step]
            position += step
            if len(self._header) == BLOCK:
                header = bytes(self._header)
                self._header.clear()
                self._on_header(header)

    def _take(self, chunk: memoryview) -> None:
        if self._keep <= 0:
            return
        kept = chunk[:self._keep]
        self._keep -= len(kept)
        if self._reading_long_name and self._long_name is not None:
            self._long_name += kept
        elif self._kept is not None:
            self._kept += kept

    def _member_done(self) -> None:
        if self._reading_long_name:
            self._reading_long_name = False
            self._pending_name = bytes(self._long_name or b"").rstrip(b"\0").decode("utf-8", "replace")
            self._long_name = None
        elif self._kept is not None:
            self._result = bytes(self._kept)
            self._kept = None

    def _on_header(self, header: bytes) -> None:
        if header == bytes(BLOCK):
            self._zero_blocks += 1
            self.ended = self._zero_blocks >= 2
            return
        self._zero_blocks = 0
        size = _size(header)
        typeflag = header[156:157]
        padded = (size + BLOCK - 1) // BLOCK * BLOCK
        name = self._pending_name or _name(header)
        self._pending_name = None
        if typeflag == b"L":  # GNU long name: the next member's name is this member's data
            self._reading_long_name, self._long_name, self._keep = True, bytearray(), size
        elif typeflag in (b"x", b"g"):  # pax headers: passed over
            self._keep = 0
        else:
            self.members += 1
            if name.lstrip("./") == self.wanted and typeflag in (b"0", b"\0") and size <= self.limit:
                self._kept, self._keep = bytearray(), size
        self._skip = padded
        if not padded:
            self._member_done()


def _size(header: bytes) -> int:
    field = header[124:136]
    if field[0] & 0x80:  # base-256 (GNU) for sizes over 8 GiB
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.rstrip(b"\0 ").strip()
    return int(text, 8) if text else 0


def _name(header: bytes) -> str:
    name = header[0:100].split(b"\0", 1)[0]
    if header[257:262] == b"ustar":
        prefix = header[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return name.decode("utf-8", "replace")
