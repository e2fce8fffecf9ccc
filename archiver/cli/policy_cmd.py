"""``archiver policy validate`` and ``archiver policy show``."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import ExitCode, UsageError
from . import params
from .context import AppContext, pass_app
from .jsonout import emit


@click.group("policy")
def policy_group() -> None:
    """Check, show and start policy files."""


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
        emit("policy-validate", {
            "valid": not result.issues,
            "policies": [p.name for p in result.policies],
            "errors": [vars(issue) for issue in result.issues],
            "unset_env": result.unresolved_env,
        })
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
@click.argument("name", shell_complete=params.complete_policy)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of YAML.")
@pass_app
def show(app: AppContext, name: str, as_json: bool) -> int:
    """Print the resolved policy NAME with secrets redacted."""
    from ..policy.files import to_display
    from ..policy.load import dump_yaml

    shown = to_display(app.policy(name))
    if as_json:
        emit("policy-show", {"policy": shown})
    else:
        click.echo(dump_yaml(shown).rstrip())
    return ExitCode.OK


@policy_group.command("init")
@click.argument("name")
@click.option("--kind", required=True, type=click.Choice(["identity", "app", "telemetry"]),
              help="Which example to start from: identity (small, daily, drills), app (metadata, daily), "
                   "telemetry (TimescaleDB: weekly backups, a Parquet cold tier).")
@click.option("--output", "-o", type=click.Path(dir_okay=False, allow_dash=True),
              help="Write here ('-': standard output). Default: NAME.yaml in the policies directory (--policies).")
@click.option("--force", is_flag=True, help="Replace a file that exists.")
@pass_app
def init(app: AppContext, name: str, kind: str, output: str | None, force: bool) -> int:
    """Write an example policy of KIND for the database NAME, to edit.

    Its DSN comes from ${NAME_DSN} (upper case); storage.url, schedules and retention are the example's:
    edit them, then `archiver policy validate --check-env`."""
    from ..policy.examples import env_prefix, example_policy

    text = example_policy(name, kind)
    if output == "-":
        click.echo(text, nl=False)
        return ExitCode.OK
    path = Path(output) if output else app.policies_dir / f"{name}.yaml"
    if path.exists() and not force:
        raise UsageError(f"{path} exists; refusing to replace it", hint="--force replaces it, -o - prints the example")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    click.echo(f"wrote {path}: policy {name} from the {kind} example (DSN from ${{{env_prefix(name)}_DSN}}); "
               "edit storage.url and the schedules, then: archiver policy validate --check-env", err=True)
    return ExitCode.OK
