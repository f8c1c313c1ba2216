"""The ``aiprod`` command line (typer): this module only assembles the app.

Each command group lives in its own module: ``serve`` (serve, worker), ``keys``, ``jobs``,
``billing``, ``models``, ``generate``, and ``db`` here; ``data``, ``train`` and ``eval`` are
imported only when used. Commands that talk to the service (``serve``, ``keys``, ``jobs``,
``billing``, ``db``, ``models``) never import torch; ``worker`` and ``generate`` load the
engine lazily. Every command reports its errors through ``aiprod.cli.errors.cli_errors`` (one
line on stderr; exit statuses listed there).
"""

from __future__ import annotations

import importlib
import importlib.util
import os

import click
import typer
from typer.core import TyperGroup

from aiprod.cli import billing, generate, jobs, keys, models, serve
from aiprod.cli.common import load_settings, out
from aiprod.cli.db import register_db_commands
from aiprod.cli.errors import cli_errors

# Commands owned by other modules: name -> (module, command inside that module's typer `app`,
# or None for the whole app as a group). Imported only when invoked or listed in --help.
LAZY_SUBAPPS: dict[str, tuple[str, str | None]] = {
    "data": ("aiprod.cli.data", None),
    "train": ("aiprod.cli.train", "train"),
    "eval": ("aiprod.cli.train", "eval"),
}


class LazyGroup(TyperGroup):
    """Adds the lazily-imported sub-apps, so `aiprod serve` never imports their dependencies."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = list(super().list_commands(ctx))
        for name, (module, _) in LAZY_SUBAPPS.items():
            if name not in names and importlib.util.find_spec(module) is not None:
                names.append(name)
        return names

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None or cmd_name not in LAZY_SUBAPPS:
            return cmd
        module_name, inner = LAZY_SUBAPPS[cmd_name]
        if importlib.util.find_spec(module_name) is None:
            return None
        module = importlib.import_module(module_name)
        sub = typer.main.get_command(module.app)
        if inner is not None:
            sub = sub.commands[inner]  # type: ignore[attr-defined]
        sub.name = cmd_name
        return sub


app = typer.Typer(
    cls=LazyGroup,
    help="aiprod: self-hosted text/image-to-video engine, service and training pipeline.\n\n"
    "Example: aiprod serve",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
db_app = typer.Typer(
    help="Database migrations.\n\nExample: aiprod db upgrade", no_args_is_help=True
)


@app.callback()
def _root(
    debug: bool = typer.Option(
        False, "--debug", help="Show the traceback of an unexpected error (AIPROD_DEBUG=1)."
    ),
) -> None:
    if debug:
        os.environ["AIPROD_DEBUG"] = "1"  # read by aiprod.cli.errors; inherited by workers


app.add_typer(keys.app, name="keys")
app.add_typer(jobs.app, name="jobs")
app.add_typer(billing.app, name="billing")
app.add_typer(db_app, name="db")
app.add_typer(models.app, name="models")
app.command("worker")(serve.worker)
app.command("serve")(serve.serve)
app.command("generate")(generate.generate)
register_db_commands(db_app)  # db backup | restore | retention (aiprod.cli.db)


@db_app.command("upgrade")
@cli_errors
def db_upgrade() -> None:
    """Apply all database migrations (safe to run again).

    Example: AIPROD_DATABASE_URL=postgresql+psycopg://user@host/aiprod aiprod db upgrade
    """
    from aiprod.db.migrate import upgrade

    rev = upgrade(load_settings().resolved_database_url)
    out.print(f"database at revision {rev}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
