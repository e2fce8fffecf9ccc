"""One shard of an archive run (``archive --shard K/N``): a stable, disjoint split of the ranges.

A range belongs to shard ``K`` of ``N`` when the first eight bytes of the SHA-256 of its
identity's stem, read as an integer, are ``K`` modulo ``N``: every range falls in exactly one
shard, the same one on every run and every machine, so N pods of a Kubernetes Indexed Job
(``JOB_COMPLETION_INDEX``) split one run without talking to each other, and each writes and
cleans up only its own ranges' manifests and objects.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from ..errors import UsageError

_SPEC = re.compile(r"^(\d{1,4})/(\d{1,4})$")
MAX_SHARDS = 1024


@dataclass(frozen=True)
class Shard:
    index: int  # K, from 0 (as JOB_COMPLETION_INDEX counts)
    count: int  # N

    @classmethod
    def parse(cls, text: str, *, flag: str = "--shard") -> Shard:
        match = _SPEC.match(text.strip())
        if not match:
            raise UsageError(f"{flag} {text!r} is not K/N (e.g. 0/4: the first of four shards; K counts from 0, "
                             "as a Kubernetes Indexed Job's JOB_COMPLETION_INDEX does)")
        index, count = int(match[1]), int(match[2])
        if not 1 <= count <= MAX_SHARDS or not 0 <= index < count:
            raise UsageError(f"{flag} {text}: allowed 0 <= K < N <= {MAX_SHARDS}")
        return cls(index, count)

    def holds(self, stem: str) -> bool:
        """Does the range of this identity stem belong to this shard?"""
        return int.from_bytes(hashlib.sha256(stem.encode()).digest()[:8], "big") % self.count == self.index

    def holds_key(self, key: str) -> bool:
        """Does a data object belong to this shard? (``<stem>.v<N>.parquet``; a key of an earlier
        layout, which does not name its range, belongs to no shard: unsharded runs deal with it)."""
        name = key.rsplit("/", 1)[-1]
        if not name.endswith(".parquet") or ".v" not in name:
            return False
        return self.holds(name.rsplit(".v", 1)[0])

    def describe(self) -> str:
        return f"shard {self.index}/{self.count}"
