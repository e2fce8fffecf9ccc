"""What every command gets from the global options."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import click

from .. import log
from ..errors import PolicyError, UsageError
from ..policy import Policy, get_policy, load, load_policies

# Tasks that only touch the store: their policy's database variables need not be set.
# restore and verify read backups and write elsewhere (a target, a scratch instance).
STORE_ONLY_TASKS = ("prune", "restore", "verify")


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

    def policy_for_task(self, name: str, task: str) -> Policy:
        if task in STORE_ONLY_TASKS:
            (policy,) = self.policies_without_secrets(name)
            return policy
        return self.policy(name)

    def policies_without_secrets(self, name: str | None, *, section: str = "backup") -> list[Policy]:
        """Policies for work that touches storage only (list, prune, status of the store).

        Every other problem in those files is still an error; storage settings must resolve.
        """
        result = load([self.policies_path], strict_env=False)
        if name is not None:
            chosen = [policy for policy in result.policies if policy.name == name]
            if not chosen:
                self.policy(name)  # raises the precise error (unknown name, or the file's problems)
        else:
            chosen = [policy for policy in result.policies if getattr(policy, section, None) is not None]
            if result.issues:
                raise PolicyError(result.issues)
        for policy in chosen:
            unresolved = result.unresolved_env.get(policy.source, {})
            storage = {key: names for key, names in unresolved.items() if key.startswith("storage")}
            if storage:
                key, names = next(iter(storage.items()))
                raise UsageError(f"policy {policy.name!r}: {key} needs environment variable {', '.join(names)}")
            for secret in policy.secret_values():
                log.register_secret(secret)
        return chosen

    def all_policies(self) -> dict[str, Policy]:
        return load_policies([self.policies_path])

    @property
    def policies_dir(self) -> Path:
        return Path(self.policies_path)


pass_app = click.make_pass_decorator(AppContext)
