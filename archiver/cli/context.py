"""What every command gets from the global options."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import click

from .. import log
from ..policy import Policy, get_policy, load_policies


def default_policies_path() -> str:
    return os.environ.get("ARCHIVER_POLICIES") or "./policies"


@dataclass
class AppContext:
    policies_path: str
    log_format: str
    verbosity: int

    def policy(self, name: str) -> Policy:
        policy = get_policy([self.policies_path], name)
        for secret in policy.secret_values():
            log.register_secret(secret)
        return policy

    def all_policies(self) -> dict[str, Policy]:
        return load_policies([self.policies_path])

    @property
    def policies_dir(self) -> Path:
        return Path(self.policies_path)


pass_app = click.make_pass_decorator(AppContext)
