"""SQL identifiers and literals, always quoted (no driver needed)."""

from __future__ import annotations


def quote_ident(name: str) -> str:
    """A PostgreSQL identifier, always quoted (exact case, any character)."""
    return '"' + name.replace('"', '""') + '"'


def qualified(schema: str, name: str) -> str:
    return f"{quote_ident(schema)}.{quote_ident(name)}"


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
