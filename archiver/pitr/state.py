"""What the store holds for point-in-time recovery, read in one go: base backups, WAL, the window.

Listing, restore, drills, prune and status all start from this picture. A listing that fails
raises: nothing decides on a partial picture.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..storage.base import Store
from .catalog import BaseScan, scan_base_backups
from .walnames import DEFAULT_SEGMENT_SIZE, StoredWal
from .walstore import read_wal_bytes, scan_wal
from .window import WalIndex, Window, parse_history, window_of


@dataclass(frozen=True)
class PitrState:
    bases: BaseScan
    wal: list[StoredWal]
    index: WalIndex
    window: Window


def load_state(store: Store) -> PitrState:
    bases = scan_base_backups(store)
    wal = scan_wal(store)
    histories = {item.file.timeline: parse_history(read_wal_bytes(store, item).decode("utf-8", "replace"))
                 for item in wal if item.file.kind == "history"}
    sizes = {base.segment_size for base in bases.backups}
    segment_size = sizes.pop() if len(sizes) == 1 else DEFAULT_SEGMENT_SIZE
    index = WalIndex.build(wal, histories, segment_size)
    return PitrState(bases, wal, index, window_of(bases.backups, index))
