"""``aiprod keys ...``: create, list and revoke API keys (and print a key's webhook secret)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Column, Table

from aiprod.cli.common import db_exists, describe_db, load_settings, open_db, out, table_console
from aiprod.cli.errors import cli_errors, err

app = typer.Typer(
    help="Create, list and revoke API keys.\n\nExample: aiprod keys create --name acme",
    no_args_is_help=True,
)


@app.command("create")
@cli_errors
def keys_create(
    name: Annotated[str, typer.Option("--name", help="Client name shown in stats.")],
    admin: Annotated[
        bool, typer.Option("--admin", help="Admin scope (stats, clear-cache).")
    ] = False,
    budget: Annotated[
        float | None, typer.Option("--budget", help="Monthly budget in USD (flagged in stats).")
    ] = None,
    rate_limit: Annotated[
        int | None, typer.Option("--rate-limit", help="Requests per minute (default: server's).")
    ] = None,
    priority: Annotated[int, typer.Option("--priority", help="Queue priority (higher first).")] = 0,
) -> None:
    """Create an API key and print it once (alone on the last line).

    Example: aiprod keys create --name acme --budget 50
    """
    from aiprod.db.session import session_scope
    from aiprod.jobs.webhooks import webhook_secret
    from aiprod.service.keys import create_key

    settings = load_settings()
    url = settings.resolved_database_url
    existed = db_exists(url)
    sessions = open_db(settings)
    secret = settings.resolved_secret_key()
    with session_scope(sessions) as s:
        row, key = create_key(
            s,
            secret=secret,
            name=name,
            admin=admin,
            monthly_budget_usd=budget,
            rate_limit_per_minute=rate_limit,
            priority=priority,
        )
    where = describe_db(url)
    if not existed:
        # The trap: run from another folder, the default ./aiprod-data is a new one, and the
        # running server (with its own database and secret) rejects the key.
        err.print(
            f"warning: there was no aiprod database at {where}; created a new one. A server "
            "started from another folder or with another AIPROD_DATA_DIR / "
            "AIPROD_DATABASE_URL will reject this key: run this command in the folder where "
            "`aiprod serve` runs, or set those variables as the server has them.",
            style="yellow",
            markup=False,
            soft_wrap=True,  # a path cut across lines could not be copied
        )
    err.print(f"database: {where}", markup=False, soft_wrap=True)
    err.print(f"created {row.scope} key '{row.name}' (id {row.id}); it is shown only now.")
    err.print(f"webhook signing secret: {webhook_secret(row.id, secret)}")
    typer.echo(key)  # alone on stdout's last line, for scripts: KEY=$(aiprod keys create ...)


@app.command("list")
@cli_errors
def keys_list() -> None:
    """List API keys (never their secret part).

    Example: aiprod keys list
    """
    from aiprod.db.repositories import ApiKeyRepository
    from aiprod.db.session import session_scope

    sessions = open_db(load_settings())
    table = Table("name", "scope", "active", "prefix", "budget $/mo", "created", "last used")
    table.columns.insert(0, Column("id", no_wrap=True, min_width=36))
    with session_scope(sessions) as s:
        for k in ApiKeyRepository(s).list():
            table.add_row(
                k.id,
                k.name,
                k.scope,
                "yes" if k.active else "revoked",
                k.prefix + "...",
                "-" if k.monthly_budget_usd is None else f"{k.monthly_budget_usd:g}",
                k.created_at.strftime("%Y-%m-%d %H:%M"),
                k.last_used_at.strftime("%Y-%m-%d %H:%M") if k.last_used_at else "never",
            )
    table_console().print(table)


@app.command("revoke")
@cli_errors
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="Key id (or a unique prefix of it, >= 6 chars).")],
) -> None:
    """Revoke a key: its requests get 401 from now on.

    Example: aiprod keys revoke 3f2a9c
    """
    from aiprod.db.repositories import ApiKeyRepository
    from aiprod.db.session import session_scope

    sessions = open_db(load_settings())
    with session_scope(sessions) as s:
        repo = ApiKeyRepository(s)
        row = repo.find(key_id)
        repo.revoke(row)
        out.print(f"revoked key '{row.name}' ({row.id})")


@app.command("webhook-secret")
@cli_errors
def keys_webhook_secret(
    key_id: Annotated[str, typer.Argument(help="Key id (or a unique prefix of it).")],
) -> None:
    """Print the Standard Webhooks signing secret for a key's webhook deliveries.

    Example: aiprod keys webhook-secret 3f2a9c
    """
    from aiprod.db.repositories import ApiKeyRepository
    from aiprod.db.session import session_scope
    from aiprod.jobs.webhooks import webhook_secret

    settings = load_settings()
    sessions = open_db(settings)
    with session_scope(sessions) as s:
        row = ApiKeyRepository(s).find(key_id)
        typer.echo(webhook_secret(row.id, settings.resolved_secret_key()))
