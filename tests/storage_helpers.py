"""Helpers for the storage tests: recognisable data patterns."""

from __future__ import annotations

import hashlib

MiB = 1024 * 1024


def pattern(size: int, seed: int = 0) -> bytes:
    """Deterministic, incompressible-looking bytes."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])
