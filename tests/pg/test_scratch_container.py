"""Container scratch instances: the argv we build, and a real container where an engine runs."""

from __future__ import annotations

import subprocess

import pytest

from archiver.pg.connect import execute, probe_server, query
from archiver.pg.scratch import ContainerPostgres


@pytest.fixture
def fake_engine_on_path(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    """An executable named docker so that argv can be built where docker is not installed; it is
    never run (these tests only look at the argv)."""
    binary = tmp_path / "docker"
    binary.write_text("#!/bin/sh\nexit 99\n")
    binary.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}")
    return binary


def test_run_argv_publishes_on_loopback_and_keeps_the_password_out_of_argv(fake_engine_on_path) -> None:  # type: ignore[no-untyped-def]
    scratch = ContainerPostgres("timescale/timescaledb:2.17.2-pg16", engine="docker", run_args=["--memory", "2g"],
                                owner="telemetry")
    argv = scratch.run_argv(54321)
    assert argv[:4] == ["docker", "run", "-d", "--rm"]
    assert argv[argv.index("--name") + 1] == scratch.name and scratch.name.startswith("archiver-scratch-telemetry-")
    assert argv[argv.index("-p"):argv.index("-p") + 2] == ["-p", "127.0.0.1:54321:54321"]
    assert argv[argv.index("POSTGRES_PASSWORD") - 1:argv.index("POSTGRES_PASSWORD") + 1] == ["-e", "POSTGRES_PASSWORD"]
    assert scratch.password not in " ".join(argv)
    image_at = argv.index("timescale/timescaledb:2.17.2-pg16")
    assert argv[image_at - 2:image_at] == ["--memory", "2g"]
    assert argv[image_at + 1:image_at + 5] == ["postgres", "-p", "54321", "-c"]
    assert "listen_addresses=*" in argv
    assert scratch.remove_argv("x") == ["docker", "rm", "-f", "x"]


def test_podman_argv_carries_global_flags_and_removes_without_waiting(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    binary = tmp_path / "podman"
    binary.write_text("#!/bin/sh\nexit 99\n")
    binary.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    scratch = ContainerPostgres("img", engine="podman", engine_args=["--runtime", "runc"])
    assert scratch.run_argv(1)[:4] == ["podman", "--runtime", "runc", "run"]
    assert scratch.remove_argv("c1") == ["podman", "--runtime", "runc", "rm", "-f", "-t", "0", "--ignore", "c1"]
    assert scratch.leftovers_argv()[-2:] == ["--filter", "label=archiver.scratch=archiver"]


def test_host_network_listens_on_loopback_only(fake_engine_on_path) -> None:  # type: ignore[no-untyped-def]
    scratch = ContainerPostgres("img", engine="docker", run_args=["--network=host"])
    argv = scratch.run_argv(5555)
    assert "-p" not in argv[:argv.index("img")]
    assert "listen_addresses=127.0.0.1" in argv


@pytest.mark.container
def test_a_real_container_starts_answers_and_is_removed(container_scratch: dict[str, object]) -> None:
    scratch = ContainerPostgres(str(container_scratch["image"]), engine=str(container_scratch["engine"]),
                                engine_args=list(container_scratch["engine_args"]),  # type: ignore[arg-type]
                                run_args=list(container_scratch["run_args"]), owner="pytest")  # type: ignore[arg-type]
    with scratch:
        dsn = scratch.create_database("drill")
        execute(dsn, "CREATE TABLE t AS SELECT generate_series(1, 500) AS n")
        assert query(dsn, "SELECT count(*), sum(n) FROM t") == [(500, 125250)]
        assert scratch.major and scratch.major >= 13
        wrong = dsn.replace(scratch.password, "not-the-password")
        with pytest.raises(Exception, match="password authentication failed"):
            probe_server(wrong)
    listing = subprocess.run([str(container_scratch["engine"]), *container_scratch["engine_args"], "ps", "-a",  # type: ignore[misc]
                              "--format", "{{.Names}}"], capture_output=True, text=True).stdout
    assert scratch.name not in listing
