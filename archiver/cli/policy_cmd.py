"""``archiver policy validate`` and ``archiver policy show``."""

from __future__ import annotations

import json

import click

from ..errors import ExitCode
from .context import AppContext, pass_app


@click.group("policy")
def policy_group() -> None:
    """Check and show policy files."""


@policy_group.command("validate")
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--check-env", is_flag=True,
              help="Treat ${VARS} that are unset here as errors (use where the policies will run).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as a JSON document.")
@pass_app
def validate(app: AppContext, paths: tuple[str, ...], check_env: bool, as_json: bool) -> int:
    """Report every error in the policy files at once (exit 2 on any error)."""
    from ..policy.files import load

    result = load(list(paths) or [app.policies_path], strict_env=check_env)
    if as_json:
        click.echo(json.dumps({
            "valid": not result.issues,
            "policies": [p.name for p in result.policies],
            "errors": [vars(issue) for issue in result.issues],
            "unset_env": result.unresolved_env,
        }, indent=2))
    else:
        for issue in result.issues:
            click.echo(str(issue))
        if not check_env:
            for source, keys in sorted(result.unresolved_env.items()):
                for key, names in sorted(keys.items()):
                    click.echo(f"{source}  {key}: note: {', '.join(names)} not set here; it must be set where this "
                               "policy runs (--check-env makes this an error)", err=True)
        count = len(result.issues)
        summary = (f"{count} error{'s' if count != 1 else ''} in policy files" if count
                   else f"{len(result.policies)} polic{'ies' if len(result.policies) != 1 else 'y'} valid: "
                        + ", ".join(p.name or "?" for p in result.policies))
        click.echo(summary, err=bool(count))
    return ExitCode.USAGE if result.issues else ExitCode.OK


@policy_group.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of YAML.")
@pass_app
def show(app: AppContext, name: str, as_json: bool) -> int:
    """Print the resolved policy NAME with secrets redacted."""
    from ..policy.files import to_display
    from ..policy.load import dump_yaml

    shown = to_display(app.policy(name))
    if as_json:
        click.echo(json.dumps(shown, indent=2, default=str))
    else:
        click.echo(dump_yaml(shown).rstrip())
    return ExitCode.OK
