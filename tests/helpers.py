"""Running the real console entry point in a subprocess, as users and cron do."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: str | Path | None = None,
            timeout: float = 600, input: str | None = None) -> CliResult:
    environment = {**os.environ, **(env or {})}
    for key, value in list(environment.items()):
        if value is None:
            del environment[key]
    proc = subprocess.run([sys.executable, "-m", "archiver", *args], capture_output=True, text=True,
                          env=environment, cwd=cwd or PROJECT, timeout=timeout, input=input)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)
