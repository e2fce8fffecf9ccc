"""The pure parts of point-in-time recovery: WAL names and keys, the tar watcher, the window, settings."""

from __future__ import annotations

import io
import tarfile
from datetime import UTC, datetime, timedelta

import pytest

from archiver.pitr.catalog import BaseBackup
from archiver.pitr.settings import Target, configured, quote_setting, restore_command
from archiver.pitr.tarstream import TarMemberCapture
from archiver.pitr.walnames import (
    StoredWal,
    WalNameError,
    format_lsn,
    parse_lsn,
    parse_wal_key,
    parse_wal_name,
    segment_name,
    wal_key,
)
from archiver.pitr.window import WalIndex, chain_for, parse_history, window_of
from archiver.restore.pitr_drill import random_point

T0 = datetime(2026, 11, 23, 14, 0, tzinfo=UTC)
SHA = "ab" * 32


def test_wal_names_lsns_and_keys_round_trip() -> None:
    segment = parse_wal_name("00000002000000010000003F")
    assert (segment.kind, segment.timeline, segment.segno()) == ("segment", 2, 256 + 63)
    assert segment_name(2, 256 + 63) == "00000002000000010000003F"
    assert parse_wal_name("000000010000000000000003.partial").kind == "partial"
    assert parse_wal_name("00000003.history").timeline == 3
    assert parse_wal_name("000000010000000000000002.00000028.backup").segment_name == "000000010000000000000002"
    for bad in ("../x", "00000001.HISTORY", "0000000100000000000000", "000000010000000000000003.partial.x", ""):
        with pytest.raises(WalNameError):
            parse_wal_name(bad)
    assert format_lsn(parse_lsn("1/3000148")) == "1/3000148" and parse_lsn("0/3000148") == 0x3000148
    with pytest.raises(ValueError):
        parse_lsn("3000148")
    key = wal_key("000000010000000000000003", T0, SHA, ".zst")
    assert key == f"pitr/wal/00000001/000000010000000000000003.20261123T140000.000000Z.{SHA}.zst"
    stored = parse_wal_key(key, 10)
    assert stored is not None and (stored.completed, stored.sha256, stored.codec, stored.size) == (T0, SHA, "zstd", 10)
    assert parse_wal_key("pitr/wal/00000002/000000010000000000000003.20261123T140000.000000Z." + SHA) is None
    assert parse_wal_key("pitr/wal/00000001/.archiver-tmp-x") is None


def _tar(members: dict[str, bytes], *, long_name: bool = False) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as archive:
        if long_name:
            info = tarfile.TarInfo("base/" + "x" * 150)
            info.size = 3
            archive.addfile(info, io.BytesIO(b"abc"))
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.mark.parametrize("chunk", [1, 7, 512, 1000, 1 << 20])
def test_the_tar_watcher_keeps_one_member_whatever_the_chunking(chunk: int) -> None:
    manifest = b'{"PostgreSQL-Backup-Manifest-Version": 1}\n' * 40
    data = _tar({"PG_VERSION": b"15\n", "global/pg_control": bytes(8192), "backup_manifest": manifest},
                long_name=True)
    capture = TarMemberCapture("backup_manifest")
    for start in range(0, len(data), chunk):
        capture.feed(data[start:start + chunk])
    assert capture.captured == manifest and capture.ended and capture.members == 4
    absent = TarMemberCapture("backup_manifest")
    absent.feed(_tar({"PG_VERSION": b"15\n"}))
    assert absent.captured is None


def _base(backup_id: str, start: int, stop: int, stop_time: datetime, timeline: int = 1) -> BaseBackup:
    return BaseBackup(backup_id, {"id": backup_id, "timeline": timeline, "start_lsn": format_lsn(start),
                                  "stop_lsn": format_lsn(stop), "stop_time": stop_time.isoformat(),
                                  "started_at": stop_time.isoformat(), "server": {"wal_segment_size": 16 << 20}})


def _wal(timeline: int, segno: int, minutes: int, kind: str = "segment") -> StoredWal:
    name = segment_name(timeline, segno) + (".partial" if kind == "partial" else "")
    stored = parse_wal_key(wal_key(name, T0 + timedelta(minutes=minutes), SHA, ".zst"))
    assert stored is not None
    return stored


SEG = 16 << 20


def test_the_window_runs_from_each_base_backup_to_the_end_of_its_unbroken_wal_and_names_the_gaps() -> None:
    bases = [_base("20261123T140000Z-0001", 2 * SEG + 40, 2 * SEG + 256, T0 + timedelta(minutes=1)),
             _base("20261123T150000Z-0002", 8 * SEG + 40, 8 * SEG + 256, T0 + timedelta(minutes=61))]
    wal = [_wal(1, segno, minutes) for segno, minutes in ((2, 2), (3, 10), (4, 20), (8, 62), (9, 70))]
    wal.append(_wal(1, 10, 75, "partial"))
    window = window_of(bases, WalIndex.build(wal, {}))
    first, second = window.spans
    assert first.restorable and first.end_time == T0 + timedelta(minutes=20) and first.missing == segment_name(1, 5)
    assert second.end_time == T0 + timedelta(minutes=75) and second.end_segment == segment_name(1, 10) + ".partial"
    assert window.ranges() == [(T0 + timedelta(minutes=1), T0 + timedelta(minutes=20)),
                               (T0 + timedelta(minutes=61), T0 + timedelta(minutes=75))]
    (gap,) = window.gaps()
    assert "cannot be recovered (first missing WAL: 000000010000000000000005)" in gap
    assert T0 + timedelta(minutes=1) <= random_point(window) <= T0 + timedelta(minutes=75)


def test_past_a_timeline_switch_the_window_follows_the_new_timeline_from_its_switch_segment() -> None:
    histories = {2: parse_history("1\t0/4000100\tbefore transaction 740 at 2026-11-23 14:20:00+00\n")}
    base = _base("20261123T140000Z-0001", 2 * SEG + 40, 2 * SEG + 256, T0 + timedelta(minutes=1))
    wal = [_wal(1, 2, 2), _wal(1, 3, 10), _wal(1, 4, 30, "partial"), _wal(1, 5, 40), _wal(2, 4, 31), _wal(2, 5, 50)]
    index = WalIndex.build(wal, histories)
    assert [(step.timeline, step.end) for step in chain_for(2, histories)] == [(1, 0x4000100), (2, None)]
    (span,) = window_of([base], index).spans
    assert span.target_timeline == 2 and span.end_time == T0 + timedelta(minutes=50)
    assert index.needed(list(span.chain), 4)[0] == 2 and index.needed(list(span.chain), 3)[0] == 1


def test_a_base_backup_whose_own_wal_is_not_archived_is_not_restorable() -> None:
    base = _base("20261123T140000Z-0001", 2 * SEG + 40, 3 * SEG + 256, T0 + timedelta(minutes=1))
    (span,) = window_of([base], WalIndex.build([_wal(1, 2, 2)], {})).spans
    assert not span.restorable and "not restorable" in span.describe()


def test_recovery_settings_are_quoted_for_postgresql_and_the_shell(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert quote_setting("it's a \\ path") == "'it''s a \\\\ path'"
    command = restore_command("/etc/archiver/my policies", "app", tmp_path / "data dir", prefetch=True)
    assert " wal-fetch app %f %p " in command and "'/etc/archiver/my policies'" in command
    assert Target("time", time=T0).settings() == {"recovery_target_time": "2026-11-23 14:00:00.000000+00"}
    (tmp_path / "postgresql.conf").write_text("port = 5432\nunix_socket_directories = '/a, /b'  # x\n")
    (tmp_path / "postgresql.auto.conf").write_text("port = '5499'\n")
    assert configured(tmp_path, "port") == "5499" and configured(tmp_path, "unix_socket_directories") == "/a, /b"
