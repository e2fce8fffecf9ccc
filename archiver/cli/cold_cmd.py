"""``archiver cold NAME schema|files``: what the cold tier holds, for query engines (reads the store only)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from ..common.timeutil import format_bytes
from . import params
from .context import AppContext
from .jsonout import emit

if TYPE_CHECKING:
    from ..storage.base import Store

# archiver.coldtier.engines.FORMATS, which imports pyarrow: the lake and its engines load when a command
# runs, not for ``archiver --help`` (tests/test_layers.py keeps the two equal).
FORMATS = ("duckdb", "athena", "spark", "json")


@click.group("cold")
@click.argument("name")
@click.pass_context
def cold_group(ctx: click.Context, name: str) -> None:
    """The cold tier of policy NAME as query engines see it (reads the store only; no database needed)."""
    ctx.obj = (ctx.find_object(AppContext), name)


def _store_of(ctx: click.Context) -> Store:
    from ..storage.backends import open_store

    app, name = ctx.obj
    return open_store(app.policy_for(name, store_only=True).storage)


@cold_group.command("schema")
@click.option("--format", "form", type=click.Choice(FORMATS), default="duckdb", show_default=True,
              help="duckdb: views over exactly the current files; athena: CREATE EXTERNAL TABLE; spark: "
                   "spark.read with the schema; json: the same facts as a document.")
@click.option("--table", metavar="T", callback=params.table_name, help="Only this table (schema.table).")
@click.pass_context
def schema_command(ctx: click.Context, form: str, table: str | None) -> int:
    """Print ready-to-run definitions of every archived table."""
    from ..coldtier.engines import render
    from ..coldtier.lake import lake_tables

    store = _store_of(ctx)
    tables, problems = lake_tables(store, table=table, with_schema=True)
    click.echo(render(tables, form))
    for problem in problems:
        click.echo(f"unreadable archive manifest (its files are not listed): {problem}", err=True)
    return 5 if problems else 0


@cold_group.command("files")
@click.option("--table", metavar="T", callback=params.table_name, help="Only this table (schema.table).")
@click.option("--from", "start", metavar="TS", callback=params.time_bound, help="Only files that may hold rows at or after TS.")
@click.option("--to", "end", metavar="TS", callback=params.time_bound, help="Only files that may hold rows before TS.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document (schema archiver.cold-files/1).")
@click.pass_context
def files_command(ctx: click.Context, table: str | None, start: str | None, end: str | None, as_json: bool) -> int:
    """List the current objects of the cold tier (what a reader should read; never superseded versions)."""
    from ..coldtier.lake import lake_tables

    store = _store_of(ctx)
    tables, problems = lake_tables(store, table=table, start=start, end=end)
    files = [item for entry in tables for item in entry.files]
    if as_json:
        emit("cold-files", {"policy": ctx.obj[1], "files": [item.to_json() for item in files], "errors": problems})
    else:
        for item in files:
            click.echo(f"{item.table}  {item.day or '(range)':10}  v{item.version}  {item.rows:>10,} rows  "
                       f"{format_bytes(item.size):>10}  {item.url}")
        click.echo(f"{len(files)} file(s), {sum(item.rows for item in files):,} rows in {len(tables)} table(s)")
    for problem in problems if not as_json else ():
        click.echo(f"unreadable archive manifest (its files are not listed): {problem}", err=True)
    return 5 if problems else 0

