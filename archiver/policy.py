"""Policy files: YAML -> typed, validated :class:`Policy` objects.

Every problem in every file is collected (never the first one only), each with its file, line,
column and dotted key, in the form ``file:line:col  dotted.key: what is wrong (got X; allowed Y)``.
Unknown keys are errors. Nothing here does I/O beyond reading the policy files themselves.

The schema is the dataclasses below: their fields are the allowed keys, their type hints the
allowed types, and ``Annotated`` metadata adds parsers (durations, cron) and checks (ranges,
patterns). Rules that span several keys or files are checked after the dataclasses are built.
"""

from __future__ import annotations

import dataclasses
import difflib
import errno
import os
import re
import stat
import types
import typing
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Union
from urllib.parse import urlsplit

from .common import log
from .common.cron import CronError, cron_trigger
from .common.timeutil import DURATION_MAX, DurationError, format_duration, format_duration_limit, parse_duration
from .errors import PolicyError, UsageError
from .expect import ExpectationError, parse_expectation
from .pg.dsn import REDACTED, parse_dsn, redact_dsn
from .storage.url import StorageLocation, bucket_name_problem, parse_storage_url
from .yamlmarks import MAX_BYTES, LoadedYaml, YamlError, load_yaml

KeyPath = tuple[str | int, ...]
MAX_COUNT = 1_000_000  # keep_* and min_keep: far beyond any real retention, far below anything that overflows

# --------------------------------------------------------------------------------------------
# Issues


@dataclass(frozen=True)
class PolicyIssue:
    file: str
    line: int
    column: int
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        return f"{where}  {self.key}: {self.message}" if self.key else f"{where}  {self.message}"


def dotted(path: KeyPath) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value) if len(value) <= 60 else repr(value[:57] + "...")
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


# --------------------------------------------------------------------------------------------
# Secrets


class Secret:
    """A value that must never be printed: ``str()``/``repr()`` show it redacted."""

    __slots__ = ("_value", "_redacted")

    def __init__(self, value: str, redacted: str = REDACTED) -> None:
        self._value = value
        self._redacted = redacted

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({self._redacted!r})"

    def __str__(self) -> str:
        return self._redacted

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


# --------------------------------------------------------------------------------------------
# Field metadata used in Annotated[...] hints


@dataclass(frozen=True)
class Parse:
    """Turn the raw value into the field's value; raise ValueError with the reason."""

    function: Callable[[Any], Any]
    allowed: str


@dataclass(frozen=True)
class Check:
    """Return an error message, or None when the (converted) value is fine."""

    function: Callable[[Any], str | None]


@dataclass(frozen=True)
class RawCheck:
    """Like Check, but sees the text as written, before ``${VAR}`` interpolation."""

    function: Callable[[str], str | None]


def _range(low: int | None = None, high: int | None = None) -> Check:
    def check(value: Any) -> str | None:
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"{low}..{high}" if high is not None else f">= {low}"
            return f"out of range (got {value}; allowed {bounds})"
        return None
    return Check(check)


def _pattern(regex: str, allowed: str) -> Check:
    compiled = re.compile(regex)

    def check(value: Any) -> str | None:
        return None if compiled.fullmatch(value) else f"invalid value (got {_show(value)}; allowed {allowed})"
    return Check(check)


def _parse_cron(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a cron expression as a string")
    try:
        cron_trigger(value)
    except CronError as exc:
        raise ValueError(f"bad cron expression: {exc}") from None
    return " ".join(value.split())


def _duration(maximum: timedelta = DURATION_MAX) -> Parse:
    """A duration key: ``90d``, ``12h``, ``2y``, from 1s up to ``maximum``."""

    def parse(value: Any) -> timedelta:
        if not isinstance(value, str):
            raise ValueError("expected a duration as a string")
        try:
            return parse_duration(value, maximum=maximum)
        except DurationError as exc:
            raise ValueError(str(exc)) from None
    return Parse(parse, f"a number and a unit: s, min, h, d, w, mo, y (e.g. 90d, 12h, 2y), from 1s up to "
                        f"{format_duration_limit(maximum)}")


def _parse_expect(value: Any) -> str:
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ValueError("expected an expectation as a string")
    try:
        parse_expectation(str(value))
    except ExpectationError as exc:
        raise ValueError(str(exc)) from None
    return str(value)


def _as_secret(value: Any) -> Secret:
    return Secret(str(value))


Cron = Annotated[str, Parse(_parse_cron, "5-field cron, e.g. '0 2 * * *' (02:00 daily) or '0 3 * * 0' (Sundays 03:00)")]
Duration = Annotated[timedelta, _duration()]
Count = Annotated[int, _range(0, MAX_COUNT)]
Identifier = Annotated[str, _pattern(r"[a-z0-9][a-z0-9_.-]{0,62}", "lowercase letters, digits, '_', '.', '-'; starting with a letter or digit")]


def _no_literal_password(raw: str) -> str | None:
    """A DSN written in the file may reference ``${VARS}`` but may not spell out a password."""
    placeholder = "ARCHIVERENVPLACEHOLDER"
    text = _ENV_REF.sub(placeholder, raw)
    if placeholder in text and not text.replace(placeholder, "").strip():
        return None
    try:
        params = parse_dsn(text)
    except UsageError:
        return None  # reported by the DSN syntax check after interpolation
    password = params.get("password", "")
    if password and password.replace(placeholder, "") != "":
        return ("contains a literal password (got password=********; allowed: no password in the file - "
                "use ${ENV_VAR} for the whole DSN, PGPASSWORD, a ~/.pgpass / PGPASSFILE, or dsn_file)")
    return None


def _dsn_syntax(value: Secret) -> str | None:
    try:
        parse_dsn(value.reveal())
    except UsageError as exc:
        return str(exc)
    return None


Dsn = Annotated[Secret, RawCheck(_no_literal_password), Parse(_as_secret, "a libpq DSN"), Check(_dsn_syntax)]


def _env_only(raw: str) -> str | None:
    if not _ENV_REF.fullmatch(raw.strip()):
        return "must come from the environment (got a literal URL; allowed: ${ENV_VAR}) - webhook URLs carry tokens"
    return None


def _webhook_url(value: Secret) -> str | None:
    parts = urlsplit(value.reveal())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "is not an http(s) URL once read from the environment (the value is not shown: webhook URLs carry tokens)"
    return None


SecretFromEnv = Annotated[Secret, RawCheck(_env_only), Parse(_as_secret, "${ENV_VAR}"), Check(_webhook_url)]

# --------------------------------------------------------------------------------------------
# The schema


@dataclass(frozen=True)
class DatabaseConfig:
    dsn: Dsn | None = None
    dsn_file: str | None = None
    pg_bin_dir: str | None = None
    connect_timeout: Annotated[int, _range(1, 600)] = 10

    def resolved_dsn(self) -> str:
        """The DSN, read from ``dsn_file`` when set; a group/world readable file is refused."""
        if self.dsn is not None:
            return self.dsn.reveal()
        if not self.dsn_file:
            raise UsageError("database: neither dsn nor dsn_file is set")
        path = Path(self.dsn_file)
        try:
            mode = path.stat().st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise UsageError(f"database.dsn_file {path} is readable by group or others (mode {oct(mode & 0o777)}); "
                                 f"run: chmod 600 {path}")
            text = path.read_text().strip()
        except OSError as exc:
            raise UsageError(f"database.dsn_file {path}: {exc.strerror}") from None
        params = parse_dsn(text, source=f"database.dsn_file {path}")
        for key in ("password", "sslpassword"):
            log.register_secret(params.get(key))  # secret_values() cannot know it: the file is read only now
        return text


STORAGE_CLASSES = ("STANDARD", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING", "GLACIER_IR", "REDUCED_REDUNDANCY")


def _storage_timeout_range(value: timedelta) -> str | None:
    if not timedelta(seconds=1) <= value <= timedelta(hours=1):
        return f"out of range (got {format_duration(value)}; allowed 1s..1h)"
    return None


@dataclass(frozen=True)
class StorageConfig:
    url: str
    endpoint_url: str | None = None
    region: Annotated[str, _pattern(r"[a-z0-9][a-z0-9-]{0,62}", "an AWS region name such as eu-central-1")] | None = None
    profile: str | None = None
    sse: Literal["AES256", "aws:kms"] | None = None
    kms_key_id: str | None = None
    storage_class: Literal[STORAGE_CLASSES] | None = None  # type: ignore[valid-type]
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    upload_concurrency: Annotated[int, _range(1, 32)] = 4
    max_attempts: Annotated[int, _range(1, 20)] = 5
    # the longest one storage operation may wait, all its attempts together (s3:// only)
    timeout: Annotated[Duration, Check(_storage_timeout_range)] = timedelta(minutes=2)


ORPHAN_GRACE_MIN = timedelta(hours=1)


def _orphan_grace_check(value: timedelta) -> str | None:
    if value >= ORPHAN_GRACE_MIN:
        return None
    return (f"out of range (got {format_duration(value)}; allowed >= {format_duration(ORPHAN_GRACE_MIN)}: prune "
            "removes objects without a manifest once older than this, and a backup still running has no manifest yet)")


@dataclass(frozen=True)
class RetentionConfig:
    keep_last: Count | None = None
    keep_hourly: Count | None = None
    keep_daily: Count | None = None
    keep_weekly: Count | None = None
    keep_monthly: Count | None = None
    keep_yearly: Count | None = None
    min_keep: Annotated[int, _range(1, MAX_COUNT)] = 1
    orphan_grace: Annotated[Duration, Check(_orphan_grace_check)] = timedelta(days=1)

    def rules(self) -> dict[str, int]:
        return {name: value for name, value in (
            ("keep_last", self.keep_last), ("keep_hourly", self.keep_hourly), ("keep_daily", self.keep_daily),
            ("keep_weekly", self.keep_weekly), ("keep_monthly", self.keep_monthly), ("keep_yearly", self.keep_yearly),
        ) if value is not None}


@dataclass(frozen=True)
class CompressionConfig:
    codec: Literal["zstd", "gzip", "none"] = "zstd"
    level: int | None = None
    threads: Annotated[int, _range(0, 64)] = 0  # 0: one per CPU core

    def effective_level(self) -> int:
        if self.level is not None:
            return self.level
        return {"zstd": 3, "gzip": 6, "none": 0}[self.codec]


_FORBIDDEN_PG_DUMP_ARGS = ("-f", "--file", "-F", "--format", "-d", "--dbname", "--snapshot", "-W", "--password",
                           "-Z", "--compress", "-j", "--jobs", "-h", "--host", "-p", "--port", "-U", "--username")


def _check_extra_args(args: list[str]) -> str | None:
    for arg in args:
        name = arg.split("=", 1)[0]
        if name in _FORBIDDEN_PG_DUMP_ARGS or any(name.startswith(flag) and len(flag) == 2 and len(name) > 2
                                                   for flag in _FORBIDDEN_PG_DUMP_ARGS if flag.startswith("-") and not flag.startswith("--")):
            return (f"argument {arg!r} is managed by archiver (got {arg!r}; allowed: options other than "
                    "connection, output, format, compression, jobs and snapshot flags)")
    return None


@dataclass(frozen=True)
class PgDumpConfig:
    exclude_schemas: list[str] = field(default_factory=list)
    exclude_tables: list[str] = field(default_factory=list)
    exclude_table_data: list[str] = field(default_factory=list)
    # pg_dump --lock-wait-timeout takes milliseconds in a 32-bit integer (at most 24.8 days)
    lock_wait_timeout: Annotated[timedelta, _duration(timedelta(days=24))] | None = None
    extra_args: Annotated[list[str], Check(_check_extra_args)] = field(default_factory=list)


@dataclass(frozen=True)
class BackupConfig:
    schedule: Cron
    retention: RetentionConfig | None = None
    prune_schedule: Cron | None = None
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    pg_dump: PgDumpConfig = field(default_factory=PgDumpConfig)
    globals: bool = True
    include_role_passwords: bool = False
    table_checksums: bool = True  # per-table content checksums in the manifest (row counts are always taken)


TABLE_NAME = r"[A-Za-z_][\w$]*(\.[A-Za-z_][\w$]*)?"
TABLE_NAME_HELP = "schema.table (unquoted identifiers)"
TIME_UNITS = ("ns", "us", "ms", "s", "min", "h", "d")


@dataclass(frozen=True)
class ArchiveTable:
    table: Annotated[str, _pattern(TABLE_NAME, TABLE_NAME_HELP)]
    archive_after: Duration
    drop_after: Duration | None = None
    time_column: str | None = None
    require_archive: bool = True
    # integer time columns: what one step of the integer means (counted from the Unix epoch)
    time_unit: Literal[TIME_UNITS] | None = None  # type: ignore[valid-type]
    # columns exported as their PostgreSQL text form (e.g. a numeric(p,s) column that holds NaN)
    text_columns: list[str] = field(default_factory=list)

    @property
    def qualified_name(self) -> str:
        return self.table if "." in self.table else f"public.{self.table}"


@dataclass(frozen=True)
class ArchiveConfig:
    schedule: Cron
    tables: list[ArchiveTable]
    retention_schedule: Cron | None = None
    cold_retention: Duration | None = None
    allow_timescaledb_retention_policy: bool = False
    row_group_rows: Annotated[int, _range(1000, 50_000_000)] = 1_000_000
    # memory for row groups being assembled, shared by the `parallel` exports of a run
    row_group_mib: Annotated[int, _range(4, 1024)] = 48
    zstd_level: Annotated[int, _range(1, 22)] = 3
    parallel: Annotated[int, _range(1, 8)] = 1
    late_data_check: bool = True


@dataclass(frozen=True)
class ScratchConfig:
    kind: Literal["local", "container"] = "local"
    image: str | None = None
    engine: Literal["docker", "podman"] | None = None
    engine_args: list[str] = field(default_factory=list)  # global flags, e.g. [--runtime, runc]
    run_args: list[str] = field(default_factory=list)
    pg_bin_dir: str | None = None
    work_dir: str | None = None
    startup_timeout: Annotated[timedelta, _duration(timedelta(days=1))] = timedelta(minutes=2)


@dataclass(frozen=True)
class SqlCheck:
    sql: str
    expect: Annotated[str, Parse(_parse_expect, "e.g. '> 0', '== 42', 'between 1 and 10', 'is not null'")]
    name: str | None = None


@dataclass(frozen=True)
class VerifyConfig:
    schedule: Cron
    scratch: ScratchConfig = field(default_factory=ScratchConfig)
    checks: list[SqlCheck] = field(default_factory=list)
    amcheck: bool = True
    archives: bool = False


NOTIFY_EVENTS = ("failure", "stale", "drill_failed", "held_back")


@dataclass(frozen=True)
class NotifyConfig:
    webhook_url: SecretFromEnv | None = None
    on: list[Literal[NOTIFY_EVENTS]] = field(default_factory=lambda: list(NOTIFY_EVENTS))  # type: ignore[valid-type]
    timeout: Annotated[timedelta, _duration(timedelta(hours=1))] = timedelta(seconds=10)


@dataclass(frozen=True)
class MetricsConfig:
    pushgateway: str | None = None  # `archiver run` pushes its metrics here (ARCHIVER_PUSHGATEWAY wins)


@dataclass(frozen=True)
class Policy:
    database: DatabaseConfig
    storage: StorageConfig
    name: Identifier | None = None
    backup: BackupConfig | None = None
    archive: ArchiveConfig | None = None
    verify: VerifyConfig | None = None
    notify: NotifyConfig | None = None
    metrics: MetricsConfig | None = None
    source: str = field(default="", metadata={"internal": True})

    def __post_init__(self) -> None:
        if not self.name and self.source:
            object.__setattr__(self, "name", Path(self.source).stem)

    def secret_values(self) -> list[str]:
        """Every secret this policy resolves to (DSN passwords, webhook URL), for log scrubbing."""
        values: list[str] = []
        if self.database.dsn is not None:
            try:
                params = parse_dsn(self.database.dsn.reveal())
                values += [params[key] for key in ("password", "sslpassword") if params.get(key)]
            except UsageError:
                pass
        if self.notify and self.notify.webhook_url and self.notify.webhook_url.reveal():
            values.append(self.notify.webhook_url.reveal())
        return values


TASK_ORDER = ("backup", "prune", "archive", "retention", "verify")


def task_schedules(policy: Policy) -> dict[str, str]:
    """Cron expression per task. Prune follows the backup schedule unless it has its own (it
    then waits for the backup: tasks of one policy run one after another); retention likewise
    follows the archive schedule."""
    schedules: dict[str, str] = {}
    if policy.backup:
        schedules["backup"] = policy.backup.schedule
        if policy.backup.retention is not None:
            schedules["prune"] = policy.backup.prune_schedule or policy.backup.schedule
    if policy.archive:
        schedules["archive"] = policy.archive.schedule
        schedules["retention"] = policy.archive.retention_schedule or policy.archive.schedule
    if policy.verify:
        schedules["verify"] = policy.verify.schedule
    return {task: schedules[task] for task in TASK_ORDER if task in schedules}


# --------------------------------------------------------------------------------------------
# Environment interpolation

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


def interpolate(text: str, environ: typing.Mapping[str, str]) -> tuple[str, list[str]]:
    """Replace ``${VAR}`` and ``${VAR:-default}``; ``$$`` is a literal ``$``.

    Returns the text and the names of variables that are unset and have no default. An empty
    variable counts as unset for ``:-``, as in the shell.
    """
    missing: list[str] = []

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = environ.get(name)
        if value:
            return value
        if default is not None:
            return default
        missing.append(name)
        return match.group(0)

    parts = text.split("$$")
    return "$".join(_ENV_REF.sub(replace, part) for part in parts), missing


# --------------------------------------------------------------------------------------------
# Building dataclasses from YAML data, collecting issues

_INVALID = object()


class _Builder:
    def __init__(self, source: str, loaded: LoadedYaml, environ: typing.Mapping[str, str], strict_env: bool) -> None:
        self.source = source
        self.loaded = loaded
        self.environ = environ
        self.strict_env = strict_env
        self.issues: list[PolicyIssue] = []
        self.unresolved: dict[str, list[str]] = {}

    def issue(self, path: KeyPath, message: str, *, key: bool = False) -> None:
        mark = self.loaded.mark(path, key=key)
        self.issues.append(PolicyIssue(self.source, mark.line, mark.column, dotted(path), message))

    def build(self, cls: type, value: Any, path: KeyPath) -> Any:
        if not isinstance(value, dict):
            self.issue(path, f"expected a mapping (got {_show(value)})")
            return _INVALID
        fields = [f for f in dataclasses.fields(cls) if not f.metadata.get("internal")]
        names = [f.name for f in fields]
        hints = typing.get_type_hints(cls, include_extras=True)
        for key in value:
            if key not in names:
                close = difflib.get_close_matches(str(key), names, n=1)
                suggestion = f"; did you mean {close[0]!r}?" if close else ""
                self.issue(path + (key,), f"unknown key (got {key!r}; allowed {', '.join(names)}){suggestion}", key=True)
        kwargs: dict[str, Any] = {}
        ok = True
        for f in fields:
            if f.name in value:
                converted = self.convert(hints[f.name], value[f.name], path + (f.name,))
                ok = ok and converted is not _INVALID
                kwargs[f.name] = converted
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                self.issue(path, f"missing required key {f.name!r}" if path else f"{f.name}: missing required section")
                ok = False
        if ok:
            return cls(**kwargs)
        return self.partial(cls, fields, kwargs)

    @staticmethod
    def partial(cls: type, fields: list[dataclasses.Field[Any]], values: dict[str, Any]) -> Any:
        """An instance with invalid or missing fields set to None, so that rules spanning
        several keys can still check the parts that are valid (every error at once)."""
        instance = object.__new__(cls)
        for f in fields:
            value = values.get(f.name, _INVALID)
            if value is _INVALID:
                if f.name in values or (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING):
                    value = None
                elif f.default is not dataclasses.MISSING:
                    value = f.default
                else:
                    value = f.default_factory()  # type: ignore[misc]
            object.__setattr__(instance, f.name, value)
        for f in dataclasses.fields(cls):
            if f.metadata.get("internal"):
                object.__setattr__(instance, f.name, f.default)
        return instance

    def convert(self, hint: Any, value: Any, path: KeyPath) -> Any:
        metadata: tuple[Any, ...] = ()
        if typing.get_origin(hint) is Annotated:
            hint, *extra = typing.get_args(hint)
            metadata = tuple(extra)
        origin = typing.get_origin(hint)
        if origin in (Union, types.UnionType):
            options = [arg for arg in typing.get_args(hint) if arg is not type(None)]
            if value is None:
                return None
            if isinstance(value, str) and _ENV_REF.search(value) and not interpolate(value, self.environ)[0].strip():
                return None  # `${VAR:-}` left empty means "not set" for an optional key
            return self.convert(Annotated[options[0], *metadata] if metadata else options[0], value, path)
        if isinstance(value, str):
            for meta in metadata:
                if isinstance(meta, RawCheck) and (problem := meta.function(value)):
                    self.issue(path, problem)
                    return _INVALID
            value, missing = interpolate(value, self.environ)
            if missing:
                self.unresolved[dotted(path)] = missing
                if hint is Secret and not self.strict_env:
                    return Secret(value)
                if self.strict_env or hint is not str:
                    names = ", ".join(missing)
                    self.issue(path, f"environment variable {names} is not set (allowed: set it, or give a default "
                                     f"with ${{{missing[0]}:-default}})")
                    return _INVALID
                return value
        parser = next((meta for meta in metadata if isinstance(meta, Parse)), None)
        if parser is not None:
            try:
                value = parser.function(value)
            except ValueError as exc:
                self.issue(path, f"{exc} (got {_show(value)}; allowed {parser.allowed})")
                return _INVALID
        else:
            value = self.convert_plain(hint, origin, value, path)
            if value is _INVALID:
                return _INVALID
        for meta in metadata:
            if isinstance(meta, Check) and (problem := meta.function(value)):
                self.issue(path, problem)
                return _INVALID
        return value

    def convert_plain(self, hint: Any, origin: Any, value: Any, path: KeyPath) -> Any:
        if origin is Literal:
            allowed = typing.get_args(hint)
            if value not in allowed:
                self.issue(path, f"invalid value (got {_show(value)}; allowed {', '.join(map(str, allowed))})")
                return _INVALID
            return value
        if origin is list:
            if not isinstance(value, list):
                self.issue(path, f"expected a list (got {_show(value)})")
                return _INVALID
            (item_hint,) = typing.get_args(hint)
            items = [self.convert(item_hint, item, path + (index,)) for index, item in enumerate(value)]
            return [None if item is _INVALID else item for item in items]
        if dataclasses.is_dataclass(hint):
            return self.build(hint, value, path)  # type: ignore[arg-type]
        expected = {bool: "true or false", int: "a whole number", str: "a string", float: "a number"}
        if hint is bool and isinstance(value, bool):
            return value
        if hint is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if hint is str and isinstance(value, str):
            return value
        if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        self.issue(path, f"wrong type (got {_show(value)}; allowed {expected.get(hint, str(hint))})")
        return _INVALID


# --------------------------------------------------------------------------------------------
# Rules that span several keys


def _endpoint_problem(endpoint: str) -> str | None:
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"not an http(s) URL (got {_show(endpoint)}; allowed e.g. https://minio.internal:9000)"
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        return f"has an invalid port (got {_show(endpoint)}; allowed 1..65535)"
    return None


def _check_storage(policy: Policy, b: _Builder) -> None:
    endpoint = policy.storage.endpoint_url if policy.storage else None
    if endpoint and dotted(("storage", "endpoint_url")) not in b.unresolved and (problem := _endpoint_problem(endpoint)):
        b.issue(("storage", "endpoint_url"), problem)
    url = policy.storage.url if policy.storage else None
    if url is None or dotted(("storage", "url")) in b.unresolved:
        return
    try:
        location = parse_storage_url(url)
    except ValueError as exc:
        b.issue(("storage", "url"), f"{exc} (got {_show(url)}; allowed s3://bucket/prefix or file:///absolute/path)")
        return
    prunes = bool(policy.backup and policy.backup.retention is not None) or bool(policy.archive and policy.archive.cold_retention)
    if location.scheme == "s3":
        if problem := bucket_name_problem(location.bucket):
            b.issue(("storage", "url"), f"bucket name {problem} (got {location.bucket!r}; allowed an S3 bucket name)")
        if prunes and not location.prefix:
            b.issue(("storage", "url"), "has no prefix while pruning is on: pruning would act on the whole bucket "
                                        f"(got {_show(url)}; allowed s3://{location.bucket}/<prefix>)")
    else:
        if not location.prefix.startswith("/"):
            b.issue(("storage", "url"), f"needs an absolute path (got {_show(url)}; allowed file:///absolute/path)")
        elif prunes and location.prefix.strip("/") == "":
            b.issue(("storage", "url"), "is the filesystem root while pruning is on (got 'file:///'; allowed file:///some/dir)")
        if policy.storage.sse or policy.storage.kms_key_id or policy.storage.storage_class:
            b.issue(("storage",), "sse, kms_key_id and storage_class apply to s3:// storage only")
    if policy.storage.kms_key_id and policy.storage.sse != "aws:kms":
        b.issue(("storage", "kms_key_id"), f"needs sse: aws:kms (got sse {policy.storage.sse!r})")


def _check_database(policy: Policy, b: _Builder) -> None:
    if policy.database is None or "database" not in (b.loaded.data or {}) or not isinstance(b.loaded.data["database"], dict):
        return
    if {"dsn", "dsn_file"} & {key for key in b.loaded.data["database"]} and (
            policy.database.dsn is None and policy.database.dsn_file is None):
        return  # the value itself was invalid and is reported already
    has_dsn, has_file = policy.database.dsn is not None, policy.database.dsn_file is not None
    if has_dsn == has_file:
        b.issue(("database",), "set exactly one of dsn or dsn_file" + (" (got both)" if has_dsn else " (got neither)"))


def _check_backup(policy: Policy, b: _Builder) -> None:
    if not policy.backup:
        return
    retention = policy.backup.retention
    if retention is not None and not retention.rules():
        b.issue(("backup", "retention"), "has no keep_* rule (allowed keep_last, keep_hourly, keep_daily, keep_weekly, "
                                         "keep_monthly, keep_yearly)")
    compression = policy.backup.compression
    if compression is not None and compression.level is not None and compression.codec is not None:
        limits = {"zstd": (1, 19), "gzip": (1, 9), "none": (0, 0)}[compression.codec]
        if not limits[0] <= compression.level <= limits[1]:
            b.issue(("backup", "compression", "level"),
                    f"out of range for {compression.codec} (got {compression.level}; allowed {limits[0]}..{limits[1]})")


def _check_archive(policy: Policy, b: _Builder) -> None:
    if not policy.archive:
        return
    seen: dict[str, int] = {}
    if policy.archive.tables == []:
        b.issue(("archive", "tables"), "is empty (allowed: at least one {table, archive_after} entry)")
    for index, table in enumerate(policy.archive.tables or []):
        path: KeyPath = ("archive", "tables", index)
        if table is None or table.table is None:
            continue
        if table.drop_after is not None and table.archive_after is not None and table.drop_after < table.archive_after:
            b.issue(path + ("drop_after",), f"is shorter than archive_after: rows would be dropped before they are "
                                            f"archived (got {format_duration(table.drop_after)} < "
                                            f"{format_duration(table.archive_after)}; allowed >= archive_after)")
        cold = policy.archive.cold_retention
        if cold is not None and table.drop_after is not None and cold < table.drop_after:
            b.issue(("archive", "cold_retention"), f"is shorter than archive.tables[{index}].drop_after: cold files would "
                                                   f"expire while their rows are still in the database (got "
                                                   f"{format_duration(cold)} < {format_duration(table.drop_after)}; "
                                                   "allowed >= every drop_after)")
        name = table.qualified_name
        if name in seen:
            b.issue(path + ("table",), f"is listed twice (got {name!r}, also archive.tables[{seen[name]}])")
        seen[name] = index


def _check_verify(policy: Policy, b: _Builder) -> None:
    scratch = policy.verify.scratch if policy.verify else None
    if scratch is not None and scratch.kind == "container" and not scratch.image:
        b.issue(("verify", "scratch"), "kind container needs an image (allowed e.g. image: timescale/timescaledb:2.17.2-pg15)")


def _check_name(policy: Policy, b: _Builder) -> None:
    if policy.name and not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,62}", policy.name):
        b.issue(("name",) if "name" in (b.loaded.data or {}) else (),
                f"policy name {policy.name!r} (from the file name) is not usable in storage keys; "
                "allowed lowercase letters, digits, '_', '.', '-' - set name: explicitly")


_POLICY_RULES = (_check_name, _check_database, _check_storage, _check_backup, _check_archive, _check_verify)

# --------------------------------------------------------------------------------------------
# Loading files and sets of files


@dataclass
class LoadResult:
    policies: list[Policy]
    issues: list[PolicyIssue]
    unresolved_env: dict[str, dict[str, list[str]]]  # file -> key -> variable names


def _parse_one(path: Path, environ: typing.Mapping[str, str], strict_env: bool) -> tuple[Policy | None, list[PolicyIssue], _Builder | None]:
    source = str(path)
    try:
        text = _read_policy_text(path)
        loaded = load_yaml(text)
    except _Unreadable as exc:
        return None, [PolicyIssue(source, 1, 1, "", str(exc))], None
    except YamlError as exc:
        return None, [PolicyIssue(source, exc.mark.line, exc.mark.column, "", f"{exc.kind}: {exc}")], None
    builder = _Builder(source, loaded, environ, strict_env)
    for key_path, mark in loaded.duplicate_keys:
        builder.issues.append(PolicyIssue(source, mark.line, mark.column, dotted(key_path), "duplicate key (the later value would silently win)"))
    if loaded.data is None:
        builder.issue((), "empty policy file (allowed: a mapping with database and storage sections)")
        return None, builder.issues, builder
    built = builder.build(Policy, loaded.data, ())
    if built is _INVALID:
        return None, builder.issues, builder
    object.__setattr__(built, "source", source)
    if not built.name:
        object.__setattr__(built, "name", path.stem)
    for rule in _POLICY_RULES:
        rule(built, builder)
    return built, builder.issues, builder


class _Unreadable(Exception):
    """A policy path that cannot be read as a policy file; the message says why."""


def _read_policy_text(path: Path) -> str:
    """The file's text, refusing anything larger than MAX_BYTES before reading it all."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    except OSError as exc:
        raise _Unreadable(f"cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_BYTES:
        raise _Unreadable(f"refused: larger than {MAX_BYTES // 1024} KiB (a policy file is a few KiB)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Unreadable(f"cannot read: not UTF-8 text (byte {exc.start})") from None


def _path_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a policy file (broken or looping link, directory, device ...), or None."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if path.is_symlink():
            return f"broken symbolic link (points to {os.readlink(path)}, which does not exist)"
        return "no such file or directory"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop (the link points, directly or not, to itself)"
        return f"cannot read: {exc.strerror or exc}"
    if stat.S_ISDIR(mode):
        return "is a directory, not a policy file"
    if not stat.S_ISREG(mode):
        return "is not a regular file (a device, pipe or socket)"
    return None


def policy_files(paths: typing.Iterable[str | os.PathLike[str]]) -> tuple[list[Path], list[PolicyIssue]]:
    """Expand directories into their ``*.yaml`` / ``*.yml`` files (sorted, not recursive).

    Nothing is skipped silently: an entry named like a policy that is a broken or looping
    symbolic link, a directory or a device is an error naming it, and so is an unreadable
    directory.
    """
    files: list[Path] = []
    issues: list[PolicyIssue] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            try:
                entries = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml"))
            except OSError as exc:
                issues.append(PolicyIssue(str(path), 1, 1, "", f"cannot list the directory: {exc.strerror or exc}"))
                continue
            if not entries:
                issues.append(PolicyIssue(str(path), 1, 1, "", "directory holds no *.yaml policy files"))
            for entry in entries:
                if problem := _path_problem(entry):
                    issues.append(PolicyIssue(str(entry), 1, 1, "", problem))
                else:
                    files.append(entry)
        elif problem := _path_problem(path):
            issues.append(PolicyIssue(str(path), 1, 1, "", problem))
        else:
            files.append(path)
    return files, issues


def _overlapping(a: StorageLocation, b: StorageLocation) -> bool:
    if (a.scheme, a.bucket) != (b.scheme, b.bucket):
        return False
    pa, pb = a.prefix.strip("/") + "/", b.prefix.strip("/") + "/"
    return pa.startswith(pb) or pb.startswith(pa)


def _check_set(parsed: list[tuple[Policy, _Builder]]) -> None:
    """Rules across files: unique names, no two policies pruning the same storage prefix.

    A conflict is reported in both files, so that running either policy alone refuses too.
    """
    by_name: dict[str, tuple[Policy, _Builder]] = {}
    locations: list[tuple[Policy, _Builder, StorageLocation]] = []
    for policy, builder in parsed:
        assert policy.name is not None
        if policy.name in by_name:
            other, other_builder = by_name[policy.name]
            builder.issue(_name_path(builder), f"duplicate policy name {policy.name!r} (also {other.source}); names must be unique")
            other_builder.issue(_name_path(other_builder), f"duplicate policy name {policy.name!r} (also {policy.source}); "
                                                           "names must be unique")
        else:
            by_name[policy.name] = (policy, builder)
        try:
            location = parse_storage_url(policy.storage.url)
        except (ValueError, AttributeError, TypeError):
            continue
        for other, other_builder, other_location in locations:
            if _overlapping(location, other_location):
                for mine, theirs, b in ((policy, other, builder), (other, policy, other_builder)):
                    b.issue(("storage", "url"), f"overlaps policy {theirs.name!r} ({theirs.storage.url}): each would see, "
                                                "and could prune, the other's backups (allowed: a distinct prefix per policy)")
                break
        locations.append((policy, builder, location))


def _name_path(builder: _Builder) -> KeyPath:
    return ("name",) if "name" in (builder.loaded.data or {}) else ()


def load(paths: typing.Iterable[str | os.PathLike[str]], *, environ: typing.Mapping[str, str] | None = None,
         strict_env: bool = True) -> LoadResult:
    """Parse and validate policy files, returning every policy that is valid and every issue."""
    env = os.environ if environ is None else environ
    files, issues = policy_files(paths)
    parsed: list[tuple[Policy, _Builder]] = []
    unresolved: dict[str, dict[str, list[str]]] = {}
    for path in files:
        policy, file_issues, builder = _parse_one(path, env, strict_env)
        issues.extend(file_issues)
        if builder and builder.unresolved:
            unresolved[str(path)] = builder.unresolved
        if policy is not None and builder is not None:
            parsed.append((policy, builder))
    before = {id(b): len(b.issues) for _, b in parsed}
    _check_set(parsed)
    for _, builder in parsed:
        issues.extend(builder.issues[before[id(builder)]:])
    bad_files = {issue.file for issue in issues}
    good = [policy for policy, _ in parsed if policy.source not in bad_files]
    issues.sort(key=lambda i: (i.file, i.line, i.column))
    return LoadResult(good, issues, unresolved)


def load_policies(paths: typing.Iterable[str | os.PathLike[str]], *, environ: typing.Mapping[str, str] | None = None) -> dict[str, Policy]:
    """All policies by name; raises PolicyError listing every problem if any file is invalid."""
    result = load(paths, environ=environ, strict_env=True)
    if result.issues:
        raise PolicyError(result.issues)
    return {policy.name: policy for policy in result.policies if policy.name}


def get_policy(paths: typing.Iterable[str | os.PathLike[str]], name: str, *,
               environ: typing.Mapping[str, str] | None = None) -> Policy:
    """One policy, fully checked, including the environment it needs.

    Other files are checked for conflicts with it (same name, overlapping storage) but need
    not have their own environment here: a CronJob for one database only gets that database's
    secrets. A broken unrelated file is reported by ``policy validate``, not by this policy's run.
    """
    paths = list(paths)
    lenient = load(paths, environ=environ, strict_env=False)
    matches = [policy for policy in lenient.policies if policy.name == name]
    if not matches:
        named_issues = [issue for issue in lenient.issues if Path(issue.file).stem == name]
        if named_issues:
            raise PolicyError(named_issues)
        known = ", ".join(sorted(p.name for p in lenient.policies if p.name)) or "none"
        raise UsageError(f"no valid policy named {name!r} in {', '.join(map(str, paths))} (valid: {known})",
                         hint="run `archiver policy validate` to see every problem" if lenient.issues else None)
    target = matches[0]
    strict = load([target.source], environ=environ, strict_env=True)
    if strict.issues:
        raise PolicyError(strict.issues)
    return strict.policies[0]


# --------------------------------------------------------------------------------------------
# Showing a policy


def to_display(policy: Policy) -> dict[str, Any]:
    """The resolved policy as plain data with secrets redacted and durations in short form."""

    def render(value: Any) -> Any:
        if isinstance(value, Secret):
            return str(value)
        if isinstance(value, timedelta):
            return format_duration(value) if value.total_seconds() % 86400 else f"{value.days}d"
        if dataclasses.is_dataclass(value):
            return {f.name: render(getattr(value, f.name)) for f in dataclasses.fields(value)
                    if not f.metadata.get("internal") and getattr(value, f.name) is not None}
        if isinstance(value, list):
            return [render(item) for item in value]
        return value

    shown = render(policy)
    if policy.database.dsn is not None:
        shown["database"]["dsn"] = redact_dsn(policy.database.dsn.reveal())
    return {"name": policy.name, "source": policy.source, **{k: v for k, v in shown.items() if k != "name"}}
