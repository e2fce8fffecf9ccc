"""The real test rig: a PostgreSQL server started with initdb/pg_ctl and moto's S3 server on HTTP.

The PostgreSQL fixture is ``archiver.pg.scratch.LocalPostgres``, the same code that
``archiver verify`` uses for its local scratch instance.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from archiver.backup.task import run_backup
from archiver.pg import binaries
from archiver.pg.connect import connect, execute
from archiver.pg.scratch import LocalPostgres, free_port
from archiver.policy.schema import StorageConfig
from archiver.storage.base import Store
from archiver.storage.local import LocalStore
from archiver.storage.s3 import S3Store
from tests.backup_helpers import RICH_SCHEMA, load_policy, policy_path

TIMESCALEDB_REASON = ("TimescaleDB is not installed for the test PostgreSQL "
                      "(no timescaledb.control in its extension directory)")


def timescaledb_installed() -> bool:
    try:
        return binaries.extension_available(binaries.find("initdb").parent, "timescaledb")
    except Exception:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if timescaledb_installed():
        return
    skip = pytest.mark.skip(reason=TIMESCALEDB_REASON)
    for item in items:
        if "timescaledb" in item.keywords:
            item.add_marker(skip)


# -- PostgreSQL -----------------------------------------------------------------------------

@pytest.fixture(scope="session")
def pg() -> Iterator[LocalPostgres]:
    """One real PostgreSQL server for the whole session (TimescaleDB preloaded when installed)."""
    with LocalPostgres() as instance:
        yield instance


@pytest.fixture
def database(pg: LocalPostgres) -> Iterator[str]:
    """A fresh, empty database on the session server; its DSN."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    dsn = pg.create_database(name)
    yield dsn
    pg.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- S3 (moto's server, over HTTP) ----------------------------------------------------------

@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                       ("AWS_DEFAULT_REGION", "us-east-1")):
        os.environ[key] = value
    os.environ.pop("AWS_PROFILE", None)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_client(s3_endpoint: str):  # type: ignore[no-untyped-def]
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")


@pytest.fixture
def bucket(s3_client) -> str:  # type: ignore[no-untyped-def]
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_store(bucket: str, s3_endpoint: str) -> S3Store:
    return S3Store(bucket, "team/db", endpoint_url=s3_endpoint, region="us-east-1")


@pytest.fixture
def file_store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest) -> Store:
    """The same contract tests run against every backend."""
    return request.getfixturevalue("file_store" if request.param == "file" else "s3_store")


# -- containers (podman here; docker elsewhere) ---------------------------------------------

SCRATCH_IMAGE = os.environ.get("ARCHIVER_TEST_SCRATCH_IMAGE", "archiver-scratch:pg15")


def container_settings_or_reason() -> tuple[dict[str, object] | None, str]:
    import shutil
    import subprocess

    engine = shutil.which("podman") or shutil.which("docker")
    if not engine:
        return None, "no container engine (podman or docker) on this machine"
    is_podman = Path(engine).name == "podman"
    engine_args = ["--runtime", "runc", "--cgroup-manager=cgroupfs"] if is_podman and shutil.which("runc") else []
    probe = subprocess.run([engine, *engine_args, "image", "inspect", SCRATCH_IMAGE], capture_output=True, text=True)
    if probe.returncode != 0:
        return None, f"container image {SCRATCH_IMAGE} not present (scripts/build-scratch-image.sh builds it)"
    # podman as root here: the default nofile/nproc limits exceed the hard limits of this sandbox
    run_args = ["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096"] if is_podman else []
    return {"image": SCRATCH_IMAGE, "engine": Path(engine).name, "engine_args": engine_args, "run_args": run_args}, ""


@pytest.fixture(scope="session")
def container_scratch() -> dict[str, object]:
    settings, reason = container_settings_or_reason()
    if settings is None:
        pytest.skip(reason)
    return settings


@pytest.fixture
def rich_database(database: str) -> tuple[str, str]:
    """A database with several schemas and types, two large objects and a role with grants; (dsn, role)."""
    role = f"reader_{uuid.uuid4().hex[:8]}"
    with connect(database) as conn:
        conn.execute(RICH_SCHEMA)
        conn.execute(f"CREATE ROLE {role} NOLOGIN")
        conn.execute(f"GRANT USAGE ON SCHEMA app TO {role}")
        conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA app TO {role}")
    return database, role


@pytest.fixture
def endpoint(request: pytest.FixtureRequest, store: Store) -> str | None:
    return request.getfixturevalue("s3_endpoint") if store.url.startswith("s3://") else None


@pytest.fixture
def source(database: str) -> str:
    """About 30 MiB of dump data that compresses poorly (md5 text), in two tables."""
    execute(database, """
        CREATE TABLE readings (id bigint PRIMARY KEY, device text, payload text);
        INSERT INTO readings SELECT i, 'dev-' || (i % 100), md5(i::text) || md5((i * 7)::text) || md5((i * 13)::text)
        FROM generate_series(1, 250000) AS i;
        CREATE TABLE devices (id int PRIMARY KEY, name text);
        INSERT INTO devices SELECT i, 'device ' || i FROM generate_series(1, 100) AS i;
    """)
    return database


@pytest.fixture
def previous(tmp_path: Path, source: str, s3_store: S3Store, s3_endpoint: str) -> str:
    """A good backup taken before the failing one."""
    return str(run_backup(load_policy(policy_path(tmp_path, source, s3_store, s3_endpoint)), store=s3_store).data["id"])


@pytest.fixture(scope="module")
def target_server() -> Iterator[LocalPostgres]:
    """Another PostgreSQL, without the source's roles: where restores land."""
    with LocalPostgres() as instance:
        yield instance


@pytest.fixture(params=["file", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> StorageConfig:
    """The cold-tier tests run against both stores: a file:// directory and moto's S3 (import it
    into a test module to use it)."""
    if request.param == "file":
        return StorageConfig(url=f"file://{tmp_path}/store")
    bucket, endpoint = request.getfixturevalue("bucket"), request.getfixturevalue("s3_endpoint")
    return StorageConfig(url=f"s3://{bucket}/telemetry", endpoint_url=endpoint, region="us-east-1")
