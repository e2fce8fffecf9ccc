"""``archive --shard K/N``: N runs split one archive run, disjoint and covering, side by side."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from archiver.coldtier.lock import COLD_TIER
from archiver.coldtier.shard import Shard
from archiver.errors import LockBusy, UsageError
from archiver.pg import locks
from archiver.storage.local import LocalStore
from tests.coldtier.test_catalog_scale import one_row_partitions
from tests.coldtier_helpers import manifests
from tests.helpers import PROJECT, run_cli


def test_a_shard_is_k_of_n_and_every_range_falls_in_exactly_one() -> None:
    assert Shard.parse("0/4") == Shard(0, 4) and Shard.parse("3/4") == Shard(3, 4)
    for bad in ("4/4", "1/0", "-1/3", "a/b", "2", "1/2/3"):
        with pytest.raises(UsageError, match="--shard"):
            Shard.parse(bad)
    stems = [f"2026{month:02d}{day:02d}T000000Z_x" for month in range(1, 13) for day in range(1, 29)]
    shards = [Shard(index, 3) for index in range(3)]
    owners = [[shard for shard in shards if shard.holds(stem)] for stem in stems]
    assert all(len(owner) == 1 for owner in owners), "disjoint and covering"
    assert all(sum(owner[0] == shard for owner in owners) > len(stems) / 6 for shard in shards), "and spread out"
    assert shards[0].holds_key("archive/db/public.t/dt=2026-01-01/20260101T000000Z_x.v3.parquet") == \
        shards[0].holds("20260101T000000Z_x")
    assert not any(shard.holds_key("archive/db/public.t/year=2026/_hyper_1_1_chunk_a_b.parquet") for shard in shards)


def policies(tmp_path: Path, name: str, dsn: str) -> Path:
    directory = tmp_path / f"{name}-policies"
    directory.mkdir()
    (directory / "telemetry.yaml").write_text(
        f"database: {{dsn: '{dsn}'}}\nstorage: {{url: 'file://{tmp_path}/{name}-store'}}\n"
        "archive:\n  schedule: '30 1 * * *'\n  tables:\n    - {table: public.metrics, archive_after: 1d}\n")
    return directory


def test_three_shards_side_by_side_archive_exactly_what_one_run_does(tmp_path: Path, pg) -> None:  # type: ignore[no-untyped-def]
    whole, split = pg.create_database("shards_whole"), pg.create_database("shards_split")
    for dsn in (whole, split):
        one_row_partitions(dsn, "metrics", 45)
    assert run_cli("--policies", str(policies(tmp_path, "whole", whole)), "archive", "telemetry").code == 0

    directory = policies(tmp_path, "split", split)
    runs = [subprocess.Popen([sys.executable, "-m", "archiver", "--policies", str(directory), "archive", "telemetry",
                              "--shard", f"{index}/3"], cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for index in range(3)]
    outputs = [run.communicate(timeout=600) for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], [err[-2000:] for _, err in outputs]

    def archived(store: Path) -> dict[str, int]:
        return {document["identity"]["stem"]: document["rows"] for document in manifests(LocalStore(store)).values()}

    one = archived(tmp_path / "whole-store")
    together = archived(tmp_path / "split-store")
    assert one == together and len(one) == 44, "the same ranges, the same rows"
    exported = [{line.split()[2] for line in out.splitlines() if line.startswith("exported")} for out, _ in outputs]
    assert all(exported) and sum(len(names) for names in exported) == 44
    assert not (exported[0] & exported[1] or exported[0] & exported[2] or exported[1] & exported[2]), "disjoint"


def test_shards_share_the_cold_tier_lock_and_exclude_retention_and_their_twin(database: str) -> None:
    with locks.database_lock(database, COLD_TIER.for_part("shard 0/3"), policy="telemetry", task="archive"):
        with locks.database_lock(database, COLD_TIER.for_part("shard 1/3"), policy="telemetry", task="archive"):
            pass  # another shard runs beside it
        with pytest.raises(LockBusy, match="the cold tier"):
            with locks.database_lock(database, COLD_TIER, policy="telemetry", task="retention"):
                pass
        with pytest.raises(LockBusy):
            with locks.database_lock(database, COLD_TIER.for_part("shard 0/3"), policy="telemetry", task="archive"):
                pass
    with locks.database_lock(database, COLD_TIER, policy="telemetry", task="retention"):
        with pytest.raises(LockBusy):
            with locks.database_lock(database, COLD_TIER.for_part("shard 2/3"), policy="telemetry", task="archive"):
                pass
