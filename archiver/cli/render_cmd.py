"""``archiver render kubernetes``: the Kubernetes manifests, generated from the policies."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import ExitCode
from .context import AppContext, pass_app


@click.group("render")
def render_group() -> None:
    """Generate deployment files from the policies."""


@render_group.command("kubernetes")
@click.option("--image", default="registry.example.com/platform/archiver:0.1.0", show_default=True,
              help="The archiver image the pods run (your registry and tag).")
@click.option("--output", "-o", "output", default="deploy/kubernetes", show_default=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="The directory that holds base/, cronjobs/ and worker/ (files there are replaced).")
@click.option("--check", is_flag=True, help="Write nothing; exit 1 when a file there differs from what would be written.")
@pass_app
def kubernetes(app: AppContext, image: str, output: Path, check: bool) -> int:
    """One CronJob per policy task on the policy's schedule, the worker Deployment and Service, and the
    ConfigMap holding the policy files (Kubernetes 1.29 or newer). Pod sizes: each policy's kubernetes:
    section, else the defaults (README, Kubernetes)."""
    from ..ops.render import render_kubernetes, write_files
    from ..policy.files import load
    from ..policy.issues import PolicyError

    result = load([app.policies_path], environ={}, strict_env=False)  # variables stay references
    if result.issues:
        raise PolicyError(result.issues)
    files = render_kubernetes(result.policies, image=image)
    if check:
        stale = [relative for relative, text in files.items()
                 if not (output / relative).is_file() or (output / relative).read_text(encoding="utf-8") != text]
        for relative in stale:
            click.echo(f"differs: {output / relative}", err=True)
        if not stale:
            click.echo(f"{len(files)} files in {output} are as rendered", err=True)
        return ExitCode.TASK_FAILED if stale else ExitCode.OK
    for path in write_files(output, files):
        click.echo(f"wrote {path}", err=True)
    for policy in result.policies:
        if policy.pitr is not None and policy.pitr.wal.method == "stream":
            click.echo(f"note: {policy.name} streams its WAL (pitr.wal.method: stream): only the worker alternative "
                       "(worker/) runs its receiver; the cronjobs/ alternative takes its base backups only", err=True)
    return ExitCode.OK
