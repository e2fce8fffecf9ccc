"""What every command gets from the global options."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..common import log
from ..errors import UsageError

if TYPE_CHECKING:
    from ..policy.files import LoadResult
    from ..policy.issues import PolicyIssue
    from ..policy.schema import Policy

# The policy files are read (YAML, the DSN parser) when a command needs them, not when `--help` runs.


def default_policies_path() -> str:
    return os.environ.get("ARCHIVER_POLICIES") or "./policies"


@dataclass(frozen=True)
class BrokenPolicy:
    """A policy file that does not load; overviews (status, backups list) report it as a failing row."""

    name: str  # the file's stem: its policy name, unless the file sets another
    source: str
    error: str  # the first problem, file:line:col  key: message
    problems: int

    @property
    def summary(self) -> str:
        more = f" (and {self.problems - 1} more problem(s): archiver policy validate {self.source})" \
            if self.problems > 1 else ""
        return f"{self.error}{more}"


@dataclass
class AppContext:
    policies_path: str
    log_format: str
    verbosity: int

    def policy(self, name: str) -> Policy:
        from ..policy.files import get_policy

        policy = get_policy([self.policies_path], name)
        for secret in policy.secret_values():
            log.register_secret(secret)
        return policy

    def policy_for(self, name: str, *, store_only: bool) -> Policy:
        """The policy for work that touches only the store (``store_only``: its database variables need
        not be set; see :attr:`archiver.tasks.Task.store_only`), or for any other work."""
        if store_only:
            (policy,) = self.policies_without_secrets(name)
            return policy
        return self.policy(name)

    def policies_without_secrets(self, name: str | None, *, section: str = "backup") -> list[Policy]:
        """Policies for work that touches storage only (list, prune, status of the store).

        Every other problem in those files is still an error; storage settings must resolve.
        """
        from ..policy.files import load
        from ..policy.issues import PolicyError

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

    def policies_for_overview(self, *, section: str) -> tuple[list[Policy], list[BrokenPolicy]]:
        """Every policy with ``section`` for status / backups list, and every file that does not load.

        A broken file does not hide the others: the caller reports it as its own failing row. Only a
        policies path that does not exist (or holds no policy file) is an error for the whole command.
        """
        from ..policy.files import load
        from ..policy.issues import PolicyError

        result = load([self.policies_path], strict_env=False)
        whole = [issue for issue in result.issues if not Path(issue.file).is_file()]
        if whole:
            raise PolicyError(whole)
        broken = _broken_files(result.issues)
        chosen: list[Policy] = []
        for policy in result.policies:
            if getattr(policy, section, None) is None:
                continue
            problem = _unresolved_storage(result, policy)
            if problem is not None:
                broken.append(BrokenPolicy(policy.name or Path(policy.source).stem, policy.source, problem, 1))
                continue
            for secret in policy.secret_values():
                log.register_secret(secret)
            chosen.append(policy)
        return chosen, sorted(broken, key=lambda item: (item.name, item.source))

    def all_policies(self) -> dict[str, Policy]:
        from ..policy.files import load_policies

        return load_policies([self.policies_path])

    @property
    def policies_dir(self) -> Path:
        return Path(self.policies_path)


def _broken_files(issues: list[PolicyIssue]) -> list[BrokenPolicy]:
    by_file: dict[str, list[PolicyIssue]] = {}
    for issue in issues:
        by_file.setdefault(issue.file, []).append(issue)
    return [BrokenPolicy(Path(source).stem, source, str(found[0]), len(found)) for source, found in by_file.items()]


def _unresolved_storage(result: LoadResult, policy: Policy) -> str | None:
    """Storage settings that name an environment variable not set here: the store cannot be opened."""
    unresolved = result.unresolved_env.get(policy.source, {})
    storage = {key: names for key, names in unresolved.items() if key.startswith("storage")}
    if not storage:
        return None
    key, names = next(iter(storage.items()))
    return f"{policy.source}: {key} needs environment variable {', '.join(names)}"


pass_app = click.make_pass_decorator(AppContext)
