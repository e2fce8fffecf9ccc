"""The ops tests' fixtures: a real Prometheus Pushgateway (Debian's prometheus-pushgateway)."""

from __future__ import annotations

import shutil
import subprocess
import urllib.request
from collections.abc import Iterator

import pytest

from archiver.pg.scratch import free_port
from tests.ops_helpers import wait_for


@pytest.fixture
def pushgateway() -> Iterator[str]:
    binary = shutil.which("prometheus-pushgateway") or shutil.which("pushgateway")
    if not binary:
        pytest.skip("Prometheus Pushgateway not installed (Debian: prometheus-pushgateway)")
    port = free_port()
    # --persistence.file= keeps it in memory: Debian's default file would carry metrics over between runs
    process = subprocess.Popen([binary, f"--web.listen-address=127.0.0.1:{port}", "--persistence.file="],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _reachable(url), what="the Pushgateway")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def _reachable(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=1):
            return True
    except OSError:
        return False
