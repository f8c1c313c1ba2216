"""``aiprod keys ...``: create, list and revoke API keys (and print a key's webhook secret)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Column, Table

from aiprod.cli.common import db_exists, describe_db, load_settings, open_db, out, table_console
from aiprod.cli.errors import cli_errors, err

app = typer.Typer(
    help="Create, list, update and revoke API keys.\n\nExample: aiprod keys create --name acme",
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
        float | None,
        typer.Option("--budget", help="Monthly budget in USD (past it, submits get 402)."),
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
def keys_list(
    name: Annotated[
        str | None, typer.Option("--name", help="Only keys with this name (any case).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the ids, one a line.")] = False,
) -> None:
    """List API keys (never their secret part), with this month's spend.

    Example: aiprod keys list
    """
    from aiprod.db.session import session_scope
    from aiprod.jobs.admin import list_keys

    sessions = open_db(load_settings())
    table = Table(
        "name",
        "scope",
        "active",
        "prefix",
        "budget $/mo",
        "spent $ (month)",
        "rate/min",
        "priority",
        "created",
        "last used",
    )
    table.columns.insert(0, Column("id", no_wrap=True, min_width=36))
    with session_scope(sessions) as s:
        rows = [k for k in list_keys(s) if name is None or k.name.lower() == name.strip().lower()]
    if quiet:
        for k in rows:
            typer.echo(k.id)
        return
    for k in rows:
        table.add_row(
            k.id,
            escape(k.name),
            k.scope,
            "yes" if k.active else "revoked",
            k.prefix + "...",
            "-" if k.monthly_budget_usd is None else f"{k.monthly_budget_usd:g}",
            f"{k.spend_this_month_usd:.2f}" + (" (over)" if k.over_budget else ""),
            "default" if k.rate_limit_per_minute is None else str(k.rate_limit_per_minute),
            str(k.priority),
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
    from aiprod.jobs.admin import key_webhook_secret

    settings = load_settings()
    sessions = open_db(settings)
    with session_scope(sessions) as s:
        row = ApiKeyRepository(s).find(key_id)
        typer.echo(key_webhook_secret(s, row.id, server_secret=settings.resolved_secret_key()))


@app.command("rotate-webhook-secret")
@cli_errors
def keys_rotate_webhook_secret(
    key_id: Annotated[str, typer.Argument(help="Key id (or a unique prefix of it).")],
) -> None:
    """Give a key a new webhook signing secret and print it; the old one stops verifying.

    Example: aiprod keys rotate-webhook-secret 3f2a9c
    """
    from aiprod.db.repositories import ApiKeyRepository
    from aiprod.db.session import session_scope
    from aiprod.jobs.admin import rotate_webhook_secret

    settings = load_settings()
    with session_scope(open_db(settings)) as s:
        row = ApiKeyRepository(s).find(key_id)
        new = rotate_webhook_secret(s, row.id, server_secret=settings.resolved_secret_key())
    err.print(f"new webhook signing secret for '{row.name}'; give it to the client's receiver:")
    typer.echo(new)


@app.command("update")
@cli_errors
def keys_update(
    key_id: Annotated[str, typer.Argument(help="Key id (or a unique prefix of it, >= 6 chars).")],
    name: Annotated[str | None, typer.Option("--name", help="New client name.")] = None,
    rate_limit: Annotated[
        int | None, typer.Option("--rate-limit", help="Requests per minute.")
    ] = None,
    default_rate_limit: Annotated[
        bool, typer.Option("--default-rate-limit", help="Use the server's rate limit.")
    ] = False,
    budget: Annotated[float | None, typer.Option("--budget", help="Monthly budget in USD.")] = None,
    no_budget: Annotated[bool, typer.Option("--no-budget", help="Remove the budget.")] = False,
    priority: Annotated[
        int | None, typer.Option("--priority", help="Queue priority (higher first).")
    ] = None,
    active: Annotated[
        bool | None,
        typer.Option("--activate/--deactivate", help="Reactivate or revoke the key."),
    ] = None,
) -> None:
    """Change a key's name, rate limit, monthly budget, priority or active flag.

    Example: aiprod keys update 3f2a9c --budget 200 --rate-limit 300
    """
    from aiprod.core.errors import InvalidRequest
    from aiprod.db.repositories import ApiKeyRepository
    from aiprod.db.session import session_scope
    from aiprod.jobs.admin import update_key

    changes: dict[str, object] = {}
    if name is not None:
        changes["name"] = name
    if rate_limit is not None and default_rate_limit:
        raise InvalidRequest("give --rate-limit N or --default-rate-limit, not both")
    if rate_limit is not None or default_rate_limit:
        changes["rate_limit_per_minute"] = rate_limit
    if budget is not None and no_budget:
        raise InvalidRequest("give --budget USD or --no-budget, not both")
    if budget is not None or no_budget:
        changes["monthly_budget_usd"] = budget
    if priority is not None:
        changes["priority"] = priority
    if active is not None:
        changes["active"] = active
    if not changes:
        raise InvalidRequest(
            "nothing to change: give --name, --rate-limit, --budget, --priority or "
            "--activate/--deactivate (see --help)"
        )
    with session_scope(open_db(load_settings())) as s:
        k = update_key(s, ApiKeyRepository(s).find(key_id).id, changes)
        budget_text = "none" if k.monthly_budget_usd is None else f"${k.monthly_budget_usd:g}"
        rate = k.rate_limit_per_minute or "server default"
        out.print(
            f"key '{escape(k.name)}' ({k.id}): active={k.active} budget={budget_text}/month "
            f"rate limit={rate}/min priority={k.priority}",
            highlight=False,
        )
