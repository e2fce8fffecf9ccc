"""Click callbacks that check flag values before a command does anything.

Each refusal is a :class:`~archiver.errors.UsageError` (exit 2) whose message names the flag
(or the environment variable the value came from) and what is allowed; none echoes a secret.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import click
from click.core import ParameterSource

from ..common.timeutil import parse_timestamp
from ..errors import UsageError
from ..policy.schema import TABLE_NAME, TABLE_NAME_HELP

_BIGINT = 2 ** 63


def flag_of(ctx: click.Context, param: click.Parameter) -> str:
    """``--target``, or ``ARCHIVER_RESTORE_TARGET`` when the value came from that variable."""
    if ctx.get_parameter_source(param.name or "") == ParameterSource.ENVIRONMENT and isinstance(param, click.Option):
        return f"{param.envvar} (for {param.opts[0]})"
    return param.opts[0] if param.opts else str(param.name)


def backup_id(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    from ..backup.manifest import check_backup_id

    return None if value is None else check_backup_id(value, flag=flag_of(ctx, param))


def target_dsn(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    from ..restore.task import check_target_dsn

    if value is not None:
        from_env = ctx.get_parameter_source(param.name or "") == ParameterSource.ENVIRONMENT
        check_target_dsn(value, source=flag_of(ctx, param), typed=not from_env)
    return value


def table_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A table as a policy's archive.tables names it (``public.`` when no schema is given)."""
    if value is not None and not re.fullmatch(TABLE_NAME, value):
        raise UsageError(f"{flag_of(ctx, param)}: {_shown(value)} is not a table name (allowed {TABLE_NAME_HELP}, "
                         "e.g. public.metrics or metrics)")
    return value


def shard(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    """``K/N``: shard K (from 0, as JOB_COMPLETION_INDEX counts) of N."""
    if value is None:
        return None
    from ..coldtier.shard import Shard

    parsed = Shard.parse(value, flag=flag_of(ctx, param))
    return parsed.index, parsed.count


def time_bound(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """An ISO 8601 timestamp, or an integer that fits a bigint (integer time columns)."""
    if value is None:
        return None
    text = value.strip()
    digits = text[1:] if text[:1] in "+-" else text
    if digits.isascii() and digits.isdigit():
        if len(digits) <= 19 and -_BIGINT <= int(text) < _BIGINT:
            return value
        raise UsageError(f"{flag_of(ctx, param)}: {_shown(value)} is out of range for an integer time column "
                         f"(allowed {-_BIGINT}..{_BIGINT - 1})")
    try:
        parse_timestamp(text)
    except ValueError:
        raise UsageError(f"{flag_of(ctx, param)}: {_shown(value)} is neither a timestamp (ISO 8601, e.g. 2026-01-01 or "
                         "2026-01-01T06:00:00Z) nor an integer (for integer time columns)") from None
    return value


def seconds(maximum: float) -> Callable[[click.Context, click.Parameter, float | None], float | None]:
    """A finite number of seconds from 0 to ``maximum`` (click's FloatRange lets nan through)."""

    def check(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
        if value is not None and not (math.isfinite(value) and 0 <= value <= maximum):
            raise UsageError(f"{flag_of(ctx, param)}: {value} is not a number of seconds from 0 to {maximum:g}")
        return value
    return check


def _shown(text: str) -> str:
    return repr(text) if len(text) <= 60 else repr(text[:57] + "...")


def complete_policy(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """Shell completion of NAME: the policy files' names in --policies (or $ARCHIVER_POLICIES, ./policies).

    A file's stem is its policy's name unless the file sets ``name:``; completion does not parse YAML (it
    runs on every key press)."""
    import os
    from pathlib import Path

    root = ctx.find_root().params.get("policies_path") or os.environ.get("ARCHIVER_POLICIES") or "./policies"
    path = Path(root)
    files = [path] if path.is_file() else sorted(path.glob("*.yaml")) + sorted(path.glob("*.yml"))
    return [file.stem for file in files if file.stem.startswith(incomplete)]
