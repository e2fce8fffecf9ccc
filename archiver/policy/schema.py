"""The policy schema: frozen dataclasses whose fields are the allowed keys.

Their type hints are the allowed types, and ``Annotated`` metadata (:mod:`archiver.policy.fields`)
adds parsers and checks. Rules that span several keys or files are in :mod:`archiver.policy.rules`.
Nothing heavy is imported here.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

from ..common import log
from ..common.timeutil import format_duration
from ..errors import UsageError
from .fields import (
    MAX_COUNT,
    Check,
    Count,
    Cron,
    Dsn,
    Duration,
    Identifier,
    Parse,
    SecretFromEnv,
    duration_field,
    int_range,
    parse_expect,
    text_pattern,
)
from .kubernetes import KubernetesConfig
from .protect import EncryptionConfig, ObjectLockConfig

# --------------------------------------------------------------------------------------------
# The schema


@dataclass(frozen=True)
class DatabaseConfig:
    dsn: Dsn | None = None
    dsn_file: str | None = None
    pg_bin_dir: str | None = None
    connect_timeout: Annotated[int, int_range(1, 600)] = 10

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
        from ..pg.dsn import parse_dsn  # psycopg: the schema itself stays light

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
    region: Annotated[str, text_pattern(r"[a-z0-9][a-z0-9-]{0,62}", "an AWS region name such as eu-central-1")] | None = None
    profile: str | None = None
    sse: Literal["AES256", "aws:kms"] | None = None
    kms_key_id: str | None = None
    storage_class: Literal[STORAGE_CLASSES] | None = None  # type: ignore[valid-type]
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    upload_concurrency: Annotated[int, int_range(1, 32)] = 4
    max_attempts: Annotated[int, int_range(1, 20)] = 5
    # the longest one storage operation may wait, all its attempts together (s3:// only)
    timeout: Annotated[Duration, Check(_storage_timeout_range)] = timedelta(minutes=2)
    object_lock: ObjectLockConfig | None = None  # S3 Object Lock retention on every object put


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
    min_keep: Annotated[int, int_range(1, MAX_COUNT)] = 1
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
    threads: Annotated[int, int_range(0, 64)] = 0  # 0: one per CPU core

    def effective_level(self) -> int:
        if self.level is not None:
            return self.level
        return {"zstd": 3, "gzip": 6, "none": 0}[self.codec]


_FORBIDDEN_PG_DUMP_ARGS = ("-f", "--file", "-F", "--format", "-d", "--dbname", "--snapshot", "-W", "--password",
                           "-Z", "--compress", "-j", "--jobs", "-h", "--host", "-p", "--port", "-U", "--username")


def _check_extra_args(args: list[str]) -> str | None:
    for arg in args:
        name = arg.split("=", 1)[0]
        short_flags = [flag for flag in _FORBIDDEN_PG_DUMP_ARGS if flag.startswith("-") and not flag.startswith("--")]
        if name in _FORBIDDEN_PG_DUMP_ARGS or any(name.startswith(flag) and len(flag) == 2 and len(name) > 2
                                                   for flag in short_flags):
            return (f"argument {arg!r} is managed by archiver (got {arg!r}; allowed: options other than "
                    "connection, output, format, compression, jobs and snapshot flags)")
    return None


@dataclass(frozen=True)
class PgDumpConfig:
    exclude_schemas: list[str] = field(default_factory=list)
    exclude_tables: list[str] = field(default_factory=list)
    exclude_table_data: list[str] = field(default_factory=list)
    # pg_dump --lock-wait-timeout takes milliseconds in a 32-bit integer (at most 24.8 days)
    lock_wait_timeout: Annotated[timedelta, duration_field(timedelta(days=24))] | None = None
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
# the Hive partition key of the cold tier's files: one directory per UTC day, <key>=YYYY-MM-DD
PARTITION_KEY = r"[a-z][a-z0-9_]{0,62}"
PARTITION_KEY_HELP = "a lowercase name such as dt (letters, digits, '_'; starting with a letter)"
DEFAULT_PARTITION_KEY = "dt"
PARQUET_PROFILES = ("exact", "portable")


@dataclass(frozen=True)
class ParquetConfig:
    """How values are written: ``exact`` keeps every PostgreSQL type's own Parquet type (UUID, TIME,
    an interval struct, dictionary-encoded enums); ``portable`` writes strings and integers where
    engines balk (Spark rejects UUID, Athena/Glue have no TIME or UUID)."""

    profile: Literal[PARQUET_PROFILES] = "exact"  # type: ignore[valid-type]


@dataclass(frozen=True)
class ArchiveTable:
    table: Annotated[str, text_pattern(TABLE_NAME, TABLE_NAME_HELP)]
    archive_after: Duration
    drop_after: Duration | None = None
    time_column: str | None = None
    require_archive: bool = True
    # integer time columns: what one step of the integer means (counted from the Unix epoch)
    time_unit: Literal[TIME_UNITS] | None = None  # type: ignore[valid-type]
    # columns exported as their PostgreSQL text form (e.g. a numeric(p,s) column that holds NaN)
    text_columns: list[str] = field(default_factory=list)
    # the Hive partition key of the table's files (<key>=YYYY-MM-DD): must not be a column's name
    partition_key: Annotated[str, text_pattern(PARTITION_KEY, PARTITION_KEY_HELP)] = DEFAULT_PARTITION_KEY
    parquet: ParquetConfig | None = None  # None: archive.parquet

    @property
    def qualified_name(self) -> str:
        return self.table if "." in self.table else f"public.{self.table}"

    @property
    def profile(self) -> str:
        return self.parquet.profile if self.parquet is not None else "exact"


@dataclass(frozen=True)
class ArchiveConfig:
    schedule: Cron
    tables: list[ArchiveTable]
    retention_schedule: Cron | None = None
    cold_retention: Duration | None = None
    allow_timescaledb_retention_policy: bool = False
    row_group_rows: Annotated[int, int_range(1000, 50_000_000)] = 1_000_000
    # memory for row groups being assembled, shared by the `parallel` exports of a run
    row_group_mib: Annotated[int, int_range(4, 1024)] = 48
    zstd_level: Annotated[int, int_range(1, 22)] = 3
    parallel: Annotated[int, int_range(1, 8)] = 1
    # Kubernetes only: the archive CronJob becomes an Indexed Job of this many pods, pod K running
    # `archive --shard K/N`; cron and the worker run every range in one process (see `parallel`)
    shards: Annotated[int, int_range(1, 64)] = 1
    late_data_check: bool = True
    parquet: ParquetConfig = field(default_factory=ParquetConfig)  # tables without their own parquet: use this
    encrypt: bool = False  # age-encrypt the Parquet files (needs encryption:); they are then not queryable in place

    def __post_init__(self) -> None:
        """A table without its own ``parquet`` section takes the archive's."""
        if isinstance(self.tables, list):
            object.__setattr__(self, "tables", [
                replace(table, parquet=self.parquet) if isinstance(table, ArchiveTable) and table.parquet is None
                and isinstance(self.parquet, ParquetConfig) else table for table in self.tables])


@dataclass(frozen=True)
class ScratchConfig:
    kind: Literal["local", "container"] = "local"
    image: str | None = None
    engine: Literal["docker", "podman"] | None = None
    engine_args: list[str] = field(default_factory=list)  # global flags, e.g. [--runtime, runc]
    run_args: list[str] = field(default_factory=list)
    pg_bin_dir: str | None = None
    work_dir: str | None = None
    startup_timeout: Annotated[timedelta, duration_field(timedelta(days=1))] = timedelta(minutes=2)


@dataclass(frozen=True)
class SqlCheck:
    sql: str
    expect: Annotated[str, Parse(parse_expect, "e.g. '> 0', '== 42', 'between 1 and 10', 'is not null'")]
    name: str | None = None


@dataclass(frozen=True)
class VerifyConfig:
    schedule: Cron
    scratch: ScratchConfig = field(default_factory=ScratchConfig)
    checks: list[SqlCheck] = field(default_factory=list)
    amcheck: bool = True
    archives: bool = False


SLOT_NAME = r"[a-z0-9_]{1,63}"
SLOT_NAME_HELP = "a replication slot name: lowercase letters, digits and '_', at most 63 characters"


def _rpo_range(value: timedelta) -> str | None:
    if not timedelta(minutes=1) <= value <= timedelta(days=7):
        return f"out of range (got {format_duration(value)}; allowed 1min..7d)"
    return None


@dataclass(frozen=True)
class WalConfig:
    """How WAL reaches the store: ``stream`` (pg_receivewal with a slot, run by the worker or ``archiver
    wal-receive``) or ``archive_command`` (the server calls ``archiver wal-push NAME %p``)."""

    method: Literal["stream", "archive_command"]
    slot: Annotated[str, text_pattern(SLOT_NAME, SLOT_NAME_HELP)] | None = None  # stream only; created if missing
    # stream only: pg_receivewal's spool (default $ARCHIVER_WAL_SPOOL, else $TMPDIR/archiver-wal-spool), per policy
    spool_dir: str | None = None
    compression: CompressionConfig = field(default_factory=CompressionConfig)


@dataclass(frozen=True)
class BaseBackupConfig:
    schedule: Cron
    retention: RetentionConfig | None = None
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    checkpoint: Literal["fast", "spread"] = "fast"


@dataclass(frozen=True)
class PitrConfig:
    """Point-in-time recovery: base backups (pg_basebackup) and a continuous WAL archive in the store."""

    wal: WalConfig
    base_backup: BaseBackupConfig
    # status and metrics flag the policy when the newest archived WAL is older than this
    rpo: Annotated[Duration, Check(_rpo_range)] = timedelta(minutes=5)


NOTIFY_EVENTS = ("failure", "stale", "drill_failed", "held_back")


@dataclass(frozen=True)
class NotifyConfig:
    webhook_url: SecretFromEnv | None = None
    on: list[Literal[NOTIFY_EVENTS]] = field(default_factory=lambda: list(NOTIFY_EVENTS))  # type: ignore[valid-type]
    timeout: Annotated[timedelta, duration_field(timedelta(hours=1))] = timedelta(seconds=10)


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
    pitr: PitrConfig | None = None
    notify: NotifyConfig | None = None
    metrics: MetricsConfig | None = None
    kubernetes: KubernetesConfig | None = None  # pod sizes for `archiver render kubernetes` only
    encryption: EncryptionConfig | None = None  # age recipients (and, where reading, identities)
    source: str = field(default="", metadata={"internal": True})

    def __post_init__(self) -> None:
        if not self.name and self.source:
            object.__setattr__(self, "name", Path(self.source).stem)

    def secret_values(self) -> list[str]:
        """Every secret this policy resolves to (DSN passwords, webhook URL), for log scrubbing."""
        values: list[str] = []
        if self.database.dsn is not None:
            from ..pg.dsn import parse_dsn  # psycopg: the schema itself stays light

            try:
                params = parse_dsn(self.database.dsn.reveal())
                values += [params[key] for key in ("password", "sslpassword") if params.get(key)]
            except UsageError:
                pass
        if self.notify and self.notify.webhook_url and self.notify.webhook_url.reveal():
            values.append(self.notify.webhook_url.reveal())
        return values
