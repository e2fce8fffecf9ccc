"""Policy files and sets of files: read, build, check, and show.

Nothing here does I/O beyond reading the policy files themselves.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
import typing
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from ..common.timeutil import format_duration
from ..errors import UsageError
from ..pg.dsn import redact_dsn
from .build import INVALID, Builder
from .fields import Secret
from .issues import PolicyError, PolicyIssue, dotted
from .load import MAX_BYTES, YamlError, load_yaml
from .rules import POLICY_RULES, check_set
from .schema import Policy

# --------------------------------------------------------------------------------------------
# Loading files and sets of files


@dataclass
class LoadResult:
    policies: list[Policy]
    issues: list[PolicyIssue]
    unresolved_env: dict[str, dict[str, list[str]]]  # file -> key -> variable names
    warnings: list[PolicyIssue] = dataclasses.field(default_factory=list)


def _parse_one(path: Path, environ: typing.Mapping[str, str],
               strict_env: bool) -> tuple[Policy | None, list[PolicyIssue], Builder | None]:
    source = str(path)
    try:
        text = _read_policy_text(path)
        loaded = load_yaml(text)
    except _Unreadable as exc:
        return None, [PolicyIssue(source, 1, 1, "", str(exc))], None
    except YamlError as exc:
        return None, [PolicyIssue(source, exc.mark.line, exc.mark.column, "", f"{exc.kind}: {exc}")], None
    builder = Builder(source, loaded, environ, strict_env)
    for key_path, mark in loaded.duplicate_keys:
        builder.issues.append(PolicyIssue(source, mark.line, mark.column, dotted(key_path),
                                          "duplicate key (the later value would silently win)"))
    if loaded.data is None:
        builder.issue((), "empty policy file (allowed: a mapping with database and storage sections)")
        return None, builder.issues, builder
    built = builder.build(Policy, loaded.data, ())
    if built is INVALID:
        return None, builder.issues, builder
    object.__setattr__(built, "source", source)
    if not built.name:
        object.__setattr__(built, "name", path.stem)
    for rule in POLICY_RULES:
        rule(built, builder)
    return built, builder.issues, builder


class _Unreadable(Exception):
    """A policy path that cannot be read as a policy file; the message says why."""


def _read_policy_text(path: Path) -> str:
    """The file's text, refusing anything larger than MAX_BYTES before reading it all."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    except OSError as exc:
        raise _Unreadable(f"cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_BYTES:
        raise _Unreadable(f"refused: larger than {MAX_BYTES // 1024} KiB (a policy file is a few KiB)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Unreadable(f"cannot read: not UTF-8 text (byte {exc.start})") from None


def _path_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a policy file (broken or looping link, directory, device ...), or None."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if path.is_symlink():
            return f"broken symbolic link (points to {os.readlink(path)}, which does not exist)"
        return "no such file or directory"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop (the link points, directly or not, to itself)"
        return f"cannot read: {exc.strerror or exc}"
    if stat.S_ISDIR(mode):
        return "is a directory, not a policy file"
    if not stat.S_ISREG(mode):
        return "is not a regular file (a device, pipe or socket)"
    return None


def policy_files(paths: typing.Iterable[str | os.PathLike[str]]) -> tuple[list[Path], list[PolicyIssue]]:
    """Expand directories into their ``*.yaml`` / ``*.yml`` files (sorted, not recursive).

    Nothing is skipped silently: an entry named like a policy that is a broken or looping
    symbolic link, a directory or a device is an error naming it, and so is an unreadable
    directory.
    """
    files: list[Path] = []
    issues: list[PolicyIssue] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            try:
                entries = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml"))
            except OSError as exc:
                issues.append(PolicyIssue(str(path), 1, 1, "", f"cannot list the directory: {exc.strerror or exc}"))
                continue
            if not entries:
                issues.append(PolicyIssue(str(path), 1, 1, "", "directory holds no *.yaml policy files"))
            for entry in entries:
                if problem := _path_problem(entry):
                    issues.append(PolicyIssue(str(entry), 1, 1, "", problem))
                else:
                    files.append(entry)
        elif problem := _path_problem(path):
            issues.append(PolicyIssue(str(path), 1, 1, "", problem))
        else:
            files.append(path)
    return files, issues


def load(paths: typing.Iterable[str | os.PathLike[str]], *, environ: typing.Mapping[str, str] | None = None,
         strict_env: bool = True) -> LoadResult:
    """Parse and validate policy files, returning every policy that is valid and every issue."""
    env = os.environ if environ is None else environ
    files, issues = policy_files(paths)
    parsed: list[tuple[Policy, Builder]] = []
    unresolved: dict[str, dict[str, list[str]]] = {}
    warnings: list[PolicyIssue] = []
    for path in files:
        policy, file_issues, builder = _parse_one(path, env, strict_env)
        issues.extend(file_issues)
        if builder and builder.unresolved:
            unresolved[str(path)] = builder.unresolved
        if policy is not None and builder is not None:
            parsed.append((policy, builder))
            warnings += builder.warnings
    before = {id(b): len(b.issues) for _, b in parsed}
    check_set(parsed)
    for _, builder in parsed:
        issues.extend(builder.issues[before[id(builder)]:])
    bad_files = {issue.file for issue in issues}
    good = [policy for policy, _ in parsed if policy.source not in bad_files]
    issues.sort(key=lambda i: (i.file, i.line, i.column))
    return LoadResult(good, issues, unresolved, warnings)


def load_policies(paths: typing.Iterable[str | os.PathLike[str]], *,
                  environ: typing.Mapping[str, str] | None = None) -> dict[str, Policy]:
    """All policies by name; raises PolicyError listing every problem if any file is invalid."""
    result = load(paths, environ=environ, strict_env=True)
    if result.issues:
        raise PolicyError(result.issues)
    return {policy.name: policy for policy in result.policies if policy.name}


def get_policy(paths: typing.Iterable[str | os.PathLike[str]], name: str, *,
               environ: typing.Mapping[str, str] | None = None) -> Policy:
    """One policy, fully checked, including the environment it needs.

    Other files are checked for conflicts with it (same name, overlapping storage) but need
    not have their own environment here: a CronJob for one database only gets that database's
    secrets. A broken unrelated file is reported by ``policy validate``, not by this policy's run.
    """
    paths = list(paths)
    lenient = load(paths, environ=environ, strict_env=False)
    matches = [policy for policy in lenient.policies if policy.name == name]
    if not matches:
        named_issues = [issue for issue in lenient.issues if Path(issue.file).stem == name]
        if named_issues:
            raise PolicyError(named_issues)
        known = ", ".join(sorted(p.name for p in lenient.policies if p.name)) or "none"
        raise UsageError(f"no valid policy named {name!r} in {', '.join(map(str, paths))} (valid: {known})",
                         hint="run `archiver policy validate` to see every problem" if lenient.issues else None)
    target = matches[0]
    strict = load([target.source], environ=environ, strict_env=True)
    if strict.issues:
        raise PolicyError(strict.issues)
    return strict.policies[0]


# --------------------------------------------------------------------------------------------
# Showing a policy


def to_display(policy: Policy) -> dict[str, Any]:
    """The resolved policy as plain data with secrets redacted and durations in short form."""

    def render(value: Any) -> Any:
        if isinstance(value, Secret):
            return str(value)
        if isinstance(value, timedelta):
            return format_duration(value) if value.total_seconds() % 86400 else f"{value.days}d"
        if dataclasses.is_dataclass(value):
            return {f.name: render(getattr(value, f.name)) for f in dataclasses.fields(value)
                    if not f.metadata.get("internal") and getattr(value, f.name) is not None}
        if isinstance(value, list):
            return [render(item) for item in value]
        return value

    shown = render(policy)
    if policy.database.dsn is not None:
        shown["database"]["dsn"] = redact_dsn(policy.database.dsn.reveal())
    return {"name": policy.name, "source": policy.source, **{k: v for k, v in shown.items() if k != "name"}}
