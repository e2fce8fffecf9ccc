"""Rules that span several keys of one policy, or several policy files."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from ..common.timeutil import format_duration
from ..storage.url import StorageLocation, bucket_name_problem, parse_storage_url
from .build import Builder
from .issues import KeyPath, dotted, show
from .protect_rules import check_protection
from .schema import ArchiveTable, CompressionConfig, Policy, RetentionConfig

# --------------------------------------------------------------------------------------------
# Rules that span several keys


def _endpoint_problem(endpoint: str) -> str | None:
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"not an http(s) URL (got {show(endpoint)}; allowed e.g. https://minio.internal:9000)"
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        return f"has an invalid port (got {show(endpoint)}; allowed 1..65535)"
    return None


def _check_storage(policy: Policy, b: Builder) -> None:
    endpoint = policy.storage.endpoint_url if policy.storage else None
    if endpoint and dotted(("storage", "endpoint_url")) not in b.unresolved and (problem := _endpoint_problem(endpoint)):
        b.issue(("storage", "endpoint_url"), problem)
    url = policy.storage.url if policy.storage else None
    if url is None or dotted(("storage", "url")) in b.unresolved:
        return
    try:
        location = parse_storage_url(url)
    except ValueError as exc:
        b.issue(("storage", "url"), f"{exc} (got {show(url)}; allowed s3://bucket/prefix or file:///absolute/path)")
        return
    prunes = (bool(policy.backup and policy.backup.retention is not None)
              or bool(policy.archive and policy.archive.cold_retention)
              or bool(policy.pitr and policy.pitr.base_backup and policy.pitr.base_backup.retention is not None))
    if location.scheme == "s3":
        if problem := bucket_name_problem(location.bucket):
            b.issue(("storage", "url"), f"bucket name {problem} (got {location.bucket!r}; allowed an S3 bucket name)")
        if prunes and not location.prefix:
            b.issue(("storage", "url"), "has no prefix while pruning is on: pruning would act on the whole bucket "
                                        f"(got {show(url)}; allowed s3://{location.bucket}/<prefix>)")
    else:
        if not location.prefix.startswith("/"):
            b.issue(("storage", "url"), f"needs an absolute path (got {show(url)}; allowed file:///absolute/path)")
        elif prunes and location.prefix.strip("/") == "":
            b.issue(("storage", "url"), "is the filesystem root while pruning is on (got 'file:///'; allowed file:///some/dir)")
        if policy.storage.sse or policy.storage.kms_key_id or policy.storage.storage_class:
            b.issue(("storage",), "sse, kms_key_id and storage_class apply to s3:// storage only")
    if policy.storage.kms_key_id and policy.storage.sse != "aws:kms":
        b.issue(("storage", "kms_key_id"), f"needs sse: aws:kms (got sse {policy.storage.sse!r})")


def _check_database(policy: Policy, b: Builder) -> None:
    if policy.database is None or "database" not in (b.loaded.data or {}) or not isinstance(b.loaded.data["database"], dict):
        return
    if {"dsn", "dsn_file"} & {key for key in b.loaded.data["database"]} and (
            policy.database.dsn is None and policy.database.dsn_file is None):
        return  # the value itself was invalid and is reported already
    has_dsn, has_file = policy.database.dsn is not None, policy.database.dsn_file is not None
    if has_dsn == has_file:
        b.issue(("database",), "set exactly one of dsn or dsn_file" + (" (got both)" if has_dsn else " (got neither)"))


def _check_retention(retention: RetentionConfig | None, path: KeyPath, b: Builder) -> None:
    if retention is not None and not retention.rules():
        b.issue(path, "has no keep_* rule (allowed keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, "
                      "keep_yearly)")


def _check_compression(compression: CompressionConfig | None, path: KeyPath, b: Builder) -> None:
    if compression is not None and compression.level is not None and compression.codec is not None:
        limits = {"zstd": (1, 19), "gzip": (1, 9), "none": (0, 0)}[compression.codec]
        if not limits[0] <= compression.level <= limits[1]:
            b.issue(path + ("level",),
                    f"out of range for {compression.codec} (got {compression.level}; allowed {limits[0]}..{limits[1]})")


def _check_backup(policy: Policy, b: Builder) -> None:
    if not policy.backup:
        return
    _check_retention(policy.backup.retention, ("backup", "retention"), b)
    _check_compression(policy.backup.compression, ("backup", "compression"), b)


def _check_pitr(policy: Policy, b: Builder) -> None:
    """The WAL method's own keys (slot and spool for stream only), and what base backups keep."""
    if not policy.pitr:
        return
    wal = policy.pitr.wal
    if wal is not None and wal.method is not None:
        if wal.method == "stream" and wal.slot is None and dotted(("pitr", "wal", "slot")) not in _given(b):
            b.issue(("pitr", "wal"), "method stream needs a replication slot: pg_receivewal keeps the server's WAL "
                                     "in it until received (allowed e.g. slot: archiver_app; created if missing)")
        if wal.method == "archive_command":
            for key in ("slot", "spool_dir"):
                if getattr(wal, key) is not None:
                    b.issue(("pitr", "wal", key), "applies to method stream only (got method archive_command; the "
                                                  "server pushes each segment itself with archiver wal-push)")
        if wal.spool_dir is not None and not wal.spool_dir.startswith("/"):
            b.issue(("pitr", "wal", "spool_dir"), f"needs an absolute path (got {show(wal.spool_dir)})")
        _check_compression(wal.compression, ("pitr", "wal", "compression"), b)
    base = policy.pitr.base_backup
    if base is not None:
        _check_retention(base.retention, ("pitr", "base_backup", "retention"), b)
        _check_compression(base.compression, ("pitr", "base_backup", "compression"), b)


def _given(b: Builder) -> set[str]:
    """Dotted keys present in the file (a key given with an invalid value is reported already)."""
    data = b.loaded.data if isinstance(b.loaded.data, dict) else {}
    pitr = data.get("pitr") if isinstance(data.get("pitr"), dict) else {}
    wal = pitr.get("wal") if isinstance(pitr, dict) and isinstance(pitr.get("wal"), dict) else {}
    return {dotted(("pitr", "wal", key)) for key in (wal or {})}


def _check_archive(policy: Policy, b: Builder) -> None:
    if not policy.archive:
        return
    seen: dict[str, int] = {}
    if policy.archive.tables == []:
        b.issue(("archive", "tables"), "is empty (allowed: at least one {table, archive_after} entry)")
    tables: list[ArchiveTable | None] = list(policy.archive.tables or [])  # a partly built policy may hold None
    for index, table in enumerate(tables):
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
        _check_partition_key(table, path, b)
        name = table.qualified_name
        if name in seen:
            b.issue(path + ("table",), f"is listed twice (got {name!r}, also archive.tables[{seen[name]}])")
        seen[name] = index


def _check_partition_key(table: ArchiveTable, path: KeyPath, b: Builder) -> None:
    """The partition key must not be a column's name: readers with Hive partitioning on would replace the
    column's values with the partition's. The columns the policy names are checked here; the others when
    archive reads the table."""
    key = table.partition_key
    named = [("time_column", table.time_column)] + [("text_columns", column) for column in table.text_columns or []]
    for setting, column in named:
        if key and column == key:
            b.issue(path + ("partition_key",), f"is the name of a column of {table.qualified_name} (got {key!r}, also its "
                                               f"{setting}): readers with Hive partitioning would replace the column's "
                                               "values with the partition's (allowed: a name no column has, e.g. dt)")


def _check_verify(policy: Policy, b: Builder) -> None:
    scratch = policy.verify.scratch if policy.verify else None
    if scratch is not None and scratch.kind == "container" and not scratch.image:
        b.issue(("verify", "scratch"), "kind container needs an image (allowed e.g. image: timescale/timescaledb:2.17.2-pg15)")


def _check_name(policy: Policy, b: Builder) -> None:
    if policy.name and not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,62}", policy.name):
        b.issue(("name",) if "name" in (b.loaded.data or {}) else (),
                f"policy name {policy.name!r} (from the file name) is not usable in storage keys; "
                "allowed lowercase letters, digits, '_', '.', '-' - set name: explicitly")


POLICY_RULES = (_check_name, _check_database, _check_storage, _check_backup, _check_archive, _check_verify,
                _check_pitr, check_protection)


def _overlapping(a: StorageLocation, b: StorageLocation) -> bool:
    if (a.scheme, a.bucket) != (b.scheme, b.bucket):
        return False
    pa, pb = a.prefix.strip("/") + "/", b.prefix.strip("/") + "/"
    return pa.startswith(pb) or pb.startswith(pa)


def check_set(parsed: list[tuple[Policy, Builder]]) -> None:
    """Rules across files: unique names, no two policies pruning the same storage prefix.

    A conflict is reported in both files, so that running either policy alone refuses too.
    """
    by_name: dict[str, tuple[Policy, Builder]] = {}
    locations: list[tuple[Policy, Builder, StorageLocation]] = []
    for policy, builder in parsed:
        assert policy.name is not None
        if policy.name in by_name:
            other, other_builder = by_name[policy.name]
            builder.issue(_name_path(builder), f"duplicate policy name {policy.name!r} (also {other.source}); "
                                               "names must be unique")
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
                for _mine, theirs, b in ((policy, other, builder), (other, policy, other_builder)):
                    b.issue(("storage", "url"), f"overlaps policy {theirs.name!r} ({theirs.storage.url}): each would see, "
                                                "and could prune, the other's backups (allowed: a distinct prefix per policy)")
                break
        locations.append((policy, builder, location))


def _name_path(builder: Builder) -> KeyPath:
    return ("name",) if "name" in (builder.loaded.data or {}) else ()
