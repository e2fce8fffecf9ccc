"""Commands whose work lands in later steps: they exist and say so (exit 2)."""

from __future__ import annotations

import click

from ..errors import NotImplementedYet


def pending_command(name: str, help_text: str, *params: click.Parameter) -> click.Command:
    def callback(**_: object) -> int:
        raise NotImplementedYet(name)
    return click.Command(name, callback=callback, help=help_text + " (not implemented yet)", params=list(params))
